"""RoPE scaling: YaRN (Peng et al. 2023), as Qwen2/Qwen2.5/Qwen3 extend 32K-trained models to 128K.

One meaning, three spellings: ``model.rope_scaling`` (:class:`qwenpt.RopeScalingConfig`),
Hugging Face's ``rope_scaling`` / ``rope_parameters`` in config.json, and megatron-core's
``YarnRotaryEmbedding`` (``position_embedding_type="yarn"`` plus ``yarn_*`` attributes on the
TransformerConfig). The frequencies are identical in both libraries; they differ only in how the
attention factor (the "mscale" multiplying cos and sin) is derived, so it is computed here once,
transformers' way, and handed to megatron-core as an ``mscale`` that reproduces it exactly.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional

from qwenpt.config import RopeScalingConfig
from qwenpt.errors import ConfigError

_HF_KEYS = ("factor", "original_max_position_embeddings", "beta_fast", "beta_slow", "mscale", "mscale_all_dim",
            "attention_factor", "truncate")


def typed(rs: Any) -> RopeScalingConfig:
    """A rope_scaling section as the typed config, whatever form it arrived in (dataclass, DictConfig,
    the plain dict of a checkpoint's run_config.yaml, or None)."""
    if isinstance(rs, RopeScalingConfig):
        return rs
    items = dict(rs.items()) if rs is not None else {}
    known = {f.name for f in dataclasses.fields(RopeScalingConfig)}
    unknown = sorted(set(items) - known)
    if unknown:
        raise ConfigError(f"model.rope_scaling: unknown key(s) {', '.join(unknown)}; it has {', '.join(sorted(known))}")
    return RopeScalingConfig(**items)


def rope_scaling(m: Any) -> Optional[RopeScalingConfig]:
    """Model config ``m``'s RoPE scaling, or None for plain RoPE (type null)."""
    rs = typed(getattr(m, "rope_scaling", None))
    return rs if rs.type is not None else None


def _mscale(factor: float, mscale: float = 1.0) -> float:
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def attention_factor(rs: RopeScalingConfig) -> float:
    """What cos and sin are multiplied by: transformers' ``_compute_yarn_parameters`` rule (an explicit
    attention_factor; else mscale / mscale_all_dim when both are non-zero; else 0.1 ln(factor) + 1)."""
    if rs.attention_factor is not None:
        return float(rs.attention_factor)
    if rs.mscale and rs.mscale_all_dim:
        return _mscale(rs.factor, rs.mscale) / _mscale(rs.factor, rs.mscale_all_dim)
    return _mscale(rs.factor)


def validate(m: Any) -> None:
    """model.rope_scaling in the user's terms (called from :func:`qwenpt.models.checks.validate_model`)."""
    rs = typed(m.rope_scaling)
    if rs.type is None:
        if rs.factor is not None or rs.original_max_position_embeddings is not None:
            raise ConfigError("model.rope_scaling has a factor or original_max_position_embeddings but no type; "
                                     "set model.rope_scaling.type=yarn (or remove them for plain RoPE)")
        return
    if m.family == "qwen":
        raise ConfigError("model.rope_scaling: Qwen (v1) extends context with its own dynamic NTK and logn scaling, "
                          "not YaRN; use a Qwen2/Qwen2.5/Qwen3 family model or set model.rope_scaling=null")
    if rs.type != "yarn":
        raise ConfigError(f"model.rope_scaling.type {rs.type!r} is not supported; use yarn (what Qwen2, Qwen2.5 "
                          "and Qwen3 ship), or null for plain RoPE")
    if rs.factor is None or rs.original_max_position_embeddings is None:
        raise ConfigError("model.rope_scaling: YaRN needs factor (the extension ratio) and "
                                 "original_max_position_embeddings (the length the model was trained at)")
    if not rs.factor > 1:
        raise ConfigError(f"model.rope_scaling.factor must be above 1 (the context extension ratio), got {rs.factor}; "
                          "factor 1 is plain RoPE: set model.rope_scaling=null")
    if not rs.original_max_position_embeddings > 0:
        raise ConfigError("model.rope_scaling.original_max_position_embeddings must be the positive length the model "
                          f"was trained at, got {rs.original_max_position_embeddings}")
    if not rs.beta_fast > rs.beta_slow > 0:
        raise ConfigError(f"model.rope_scaling: need beta_fast > beta_slow > 0, got {rs.beta_fast} and {rs.beta_slow}")
    if not attention_factor(rs) > 0:
        raise ConfigError(f"model.rope_scaling: the attention factor must be positive, got {attention_factor(rs)}")


def megatron_fields(m: Any) -> dict[str, Any]:
    """The ``yarn_*`` TransformerConfig attributes megatron-core's GPTModel and attention read.

    megatron-core multiplies cos/sin by mscale(factor, yarn_mscale) / mscale(factor, yarn_mscale_all_dim);
    with yarn_mscale_all_dim = 0 the denominator is 1, so yarn_mscale = (A - 1) / (0.1 ln factor) gives
    transformers' attention factor A whatever rule produced it.
    """
    rs = rope_scaling(m)
    assert rs is not None
    return dict(
        yarn_rotary_scaling_factor=float(rs.factor),
        yarn_original_max_position_embeddings=int(rs.original_max_position_embeddings),
        yarn_beta_fast=float(rs.beta_fast),
        yarn_beta_slow=float(rs.beta_slow),
        yarn_mscale=(attention_factor(rs) - 1.0) / (0.1 * math.log(rs.factor)),
        yarn_mscale_all_dim=0.0,
        yarn_correction_range_round_to_int=bool(rs.truncate),
    )


def to_hf(m: Any) -> Optional[dict]:
    """config.json's ``rope_scaling`` (the Hub form Qwen's own configs use; transformers 4 and 5 read it)."""
    rs = rope_scaling(m)
    if rs is None:
        return None
    defaults = RopeScalingConfig()
    out: dict[str, Any] = {"type": rs.type}
    for key in _HF_KEYS:  # the keys that differ from the defaults, as Qwen's configs list only those
        value = getattr(rs, key)
        if key in ("factor", "original_max_position_embeddings") or value != getattr(defaults, key):
            out[key] = value
    return out


def from_hf(cfg: dict, source: str) -> RopeScalingConfig:
    """``rope_scaling`` (Hub) or ``rope_parameters`` (transformers 5) of a config.json (type null: plain RoPE)."""
    params = cfg.get("rope_scaling") or cfg.get("rope_parameters") or {}
    kind = params.get("rope_type") or params.get("type") or "default"
    if kind == "default":
        return RopeScalingConfig()
    if kind != "yarn":
        raise ConfigError(f"{source}: rope scaling type {kind!r} is not supported (only yarn, which Qwen2/Qwen2.5/Qwen3 "
                          "use); remove rope_scaling from config.json for plain RoPE")
    fields = {k: params[k] for k in _HF_KEYS if params.get(k) is not None}
    fields.setdefault("original_max_position_embeddings", cfg.get("max_position_embeddings"))
    if "factor" not in fields:  # transformers: max_position_embeddings / original_max_position_embeddings
        fields["factor"] = cfg["max_position_embeddings"] / fields["original_max_position_embeddings"]
    for key in ("beta_fast", "beta_slow"):  # transformers treats 0 as unset too
        if not fields.get(key, 1):
            fields.pop(key)
    return RopeScalingConfig(type="yarn", **fields)
