"""Qwen architectures on megatron-core."""

from qwenpt.models.builder import build_model, transformer_config, use_transformer_engine
from qwenpt.models.registry import FAMILIES, Family
from qwenpt.models.size import ParamCounts, param_counts

__all__ = [
    "FAMILIES",
    "Family",
    "ParamCounts",
    "build_model",
    "param_counts",
    "transformer_config",
    "use_transformer_engine",
]
