"""The interface every Hugging Face layout module implements, and the config.json names they share.

A *layout* is how one generation's checkpoints are named and shaped on Hugging Face (config.json keys,
tensor names, which tensors are fused). Each module in this package describes one as a :class:`Layout`:
import, export and verify (:mod:`qwenpt.convert.hf`) only call it, so adding a layout touches its
module and the registry (:mod:`qwenpt.convert.layouts`), not the converter. The tensors of a layout are
handled a *group* at a time: ``"outer"`` (embedding, final norm, output layer), a decoder layer's index,
or ``("mtp", j)`` (an MTP layer), so memory holds one group, never the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional

import torch

from qwenpt.errors import ConfigError
from qwenpt.config import ModelConfig

Tensors = dict[str, torch.Tensor]
Getter = Callable[[str], torch.Tensor]  # a tensor by name (a checkpoint's, or a model's)


class Fields(dict):
    """config.json's fields; a missing one is a ConfigError naming the file and the key."""

    def __init__(self, fields: dict, source: str = "config.json") -> None:
        super().__init__(fields)
        self.source = source

    def __missing__(self, key: str) -> Any:
        raise ConfigError(f"{self.source}: no {key!r}, which a {self.get('model_type', 'Qwen')} config needs; "
                          "is it a complete Hugging Face config.json?")


REQUIRED = object()  # a Name's default: config.json must have the key


class Name(NamedTuple):
    """One config.json key and the model field it holds: a row read on import and written on export."""

    hf: str
    field: str
    default: Any = REQUIRED
    cast: Optional[Callable[[Any], Any]] = None


def read_names(cfg: Fields, names: tuple[Name, ...]) -> dict:
    """The model fields of ``names`` from config.json (a missing key without a default: ConfigError)."""
    out = {}
    for n in names:
        value = cfg[n.hf] if n.default is REQUIRED else cfg.get(n.hf, n.default)
        out[n.field] = n.cast(value) if n.cast else value
    return out


def write_names(m: ModelConfig, names: tuple[Name, ...]) -> dict:
    """The config.json keys of ``names`` from model config ``m``."""
    return {n.hf: getattr(m, n.field) for n in names}


# every Qwen config.json (v1 names its norm epsilon and positions otherwise, so it takes only these)
SHAPE_NAMES = (
    Name("num_hidden_layers", "num_layers"), Name("hidden_size", "hidden_size"),
    Name("num_attention_heads", "num_attention_heads"), Name("vocab_size", "vocab_size"),
    Name("tie_word_embeddings", "tie_embeddings", False, bool),
)
# Qwen2 and later (dense, MoE and the hybrids)
DECODER_NAMES = (*SHAPE_NAMES, Name("max_position_embeddings", "max_position_embeddings", 32768),
                 Name("rms_norm_eps", "norm_eps", 1e-6))
# their MoE models (num_experts, the shared expert and norm_topk_prob differ by generation: each module's own)
MOE_NAMES = (Name("moe_intermediate_size", "moe_ffn_hidden_size"), Name("num_experts_per_tok", "moe_router_topk"),
             Name("router_aux_loss_coef", "moe_aux_loss_coeff", 0.001, float))


def rope_theta(cfg: Fields, default: float) -> float:
    """Hub configs say rope_theta (v1: rotary_emb_base); transformers 5 writes rope_parameters."""
    params = cfg.get("rope_parameters") or {}
    for value in (params.get("rope_theta"), cfg.get("rope_theta"), cfg.get("rotary_emb_base")):
        if value is not None:
            return float(value)
    return default


def refuse_dense_layers(cfg: Fields, source: str, which: str) -> None:
    """qwenpt builds MoE in every layer; ``which``: the models of which that holds, for the message."""
    if cfg.get("decoder_sparse_step", 1) != 1 or cfg.get("mlp_only_layers"):
        raise ConfigError(f"{source}: an MoE with dense layers (decoder_sparse_step != 1 or mlp_only_layers) "
                          f"is not supported; every {which} has MoE in every layer")


def model_root(keys: set[str]) -> str:
    """Where a checkpoint keeps its language model: ``model.`` (every text-only layout)."""
    return "model."


def unchanged(m: ModelConfig, keys: set[str]) -> Any:
    """The model config as config.json gave it (nothing to infer from the tensor names)."""
    return m


def from_pretrained(transformers: Any, hf_dir: Path, m: ModelConfig, get: Getter) -> torch.nn.Module:
    """transformers' own model of ``hf_dir`` in fp32 (every layout transformers ships)."""
    return transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()


@dataclass(frozen=True)
class Layout:
    """One Hugging Face layout: what import, export and verify need of it, and nothing else.

    ``m`` is a qwenpt model config; ``group`` is ``"outer"``, a layer index or ``("mtp", j)``; ``root`` is
    where the checkpoint keeps its language model (``hf_root``)."""

    name: str
    hf_layouts: tuple[str, ...]  # the FAMILIES[...].hf_layout values it exports (qwenpt/models/registry.py)
    model_types: tuple[str, ...]  # the config.json model_type values it imports
    known_as: str  # those model types and their classes, for the message refusing another
    model_fields: Callable[[Fields, str, str], dict]  # (config.json, model_type, source) -> ModelConfig fields
    hf_config: Callable[[Any], dict]  # m -> config.json (torch_dtype added by the caller)
    groups: Callable[[Any], list]  # m -> its groups, in writing order
    to_hf: Callable[[Tensors, Any, Any, str], Tensors]  # (megatron tensors, m, group, root) -> the group's HF tensors
    megatron_params: Callable[[Any, Getter, str], Getter]  # (m, checkpoint get, root) -> megatron parameter by name
    architectures: tuple[str, ...] = ()  # config.json classes it imports whatever model_type says
    hf_root: Callable[[set[str]], str] = model_root  # checkpoint tensor names -> root
    complete: Callable[[Any, set[str]], Any] = unchanged  # (m, tensor names) -> m with what config.json left out
    reference_model: Callable[[Any, Path, Any, Getter], torch.nn.Module] = from_pretrained  # verify's reference
