"""Qwen (v1, ``QWenLMHeadModel``) checkpoint names ⇄ the Qwen2 layout of :mod:`qwenpt.convert.layouts.qwen2`.

Qwen v1 is the Qwen2 decoder with multi-head attention and other names: ``transformer.wte``,
``h.{i}.ln_1`` / ``ln_2``, a fused ``attn.c_attn`` ([q; k; v] rows, with bias), ``attn.c_proj``, and an
MLP computing ``c_proj(w1(x) * silu(w2(x)))`` — so ``w2`` is Qwen2's gate and ``w1`` its up projection.
The layout is therefore Qwen2's with these names: import reads each Qwen2 tensor from its v1 counterpart,
export renames Qwen2's tensors, and verify (transformers has no v1 class: its code is remote) compares
with the equivalent ``Qwen2ForCausalLM`` built from the converted tensors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from qwenpt.convert.layouts import qwen2
from qwenpt.convert.layouts.base import (SHAPE_NAMES, Fields, Getter, Layout, Name, Tensors, read_names, rope_theta,
                                         write_names)
from qwenpt.models.size import head_dim
from qwenpt.config import ModelConfig

# config.json keys v1 names as Qwen2 does, and its own norm epsilon
NAMES = (*SHAPE_NAMES, Name("layer_norm_epsilon", "norm_eps", 1e-6))


def _simple(i: int) -> list[tuple[str, str]]:
    """(v1 name, Qwen2 name) copied unchanged in layer i."""
    v1, q2 = f"transformer.h.{i}", f"model.layers.{i}"
    return [
        (f"{v1}.ln_1.weight", f"{q2}.input_layernorm.weight"),
        (f"{v1}.attn.c_proj.weight", f"{q2}.self_attn.o_proj.weight"),
        (f"{v1}.ln_2.weight", f"{q2}.post_attention_layernorm.weight"),
        (f"{v1}.mlp.w2.weight", f"{q2}.mlp.gate_proj.weight"),
        (f"{v1}.mlp.w1.weight", f"{q2}.mlp.up_proj.weight"),
        (f"{v1}.mlp.c_proj.weight", f"{q2}.mlp.down_proj.weight"),
    ]


def _outer(m: ModelConfig) -> list[tuple[str, str]]:
    pairs = [("transformer.wte.weight", "model.embed_tokens.weight"), ("transformer.ln_f.weight", "model.norm.weight")]
    if not m.tie_embeddings:
        pairs.append(("lm_head.weight", "lm_head.weight"))
    return pairs


def layer_keys(m: ModelConfig, i: int) -> list[str]:
    return [a for a, _ in _simple(i)] + [f"transformer.h.{i}.attn.c_attn.{k}" for k in ("weight", "bias")]


def outer_keys(m: ModelConfig) -> list[str]:
    return [a for a, _ in _outer(m)]


def layer_to_qwen2(v1: dict[str, torch.Tensor], m: ModelConfig, i: int) -> dict[str, torch.Tensor]:
    out = {q2: v1[a] for a, q2 in _simple(i)}
    for kind in ("weight", "bias"):
        q, k, v = v1[f"transformer.h.{i}.attn.c_attn.{kind}"].chunk(3)
        for p, t in zip("qkv", (q, k, v)):
            out[f"model.layers.{i}.self_attn.{p}_proj.{kind}"] = t
    return out


def layer_from_qwen2(q2: dict[str, torch.Tensor], m: ModelConfig, i: int) -> dict[str, torch.Tensor]:
    out = {a: q2[b] for a, b in _simple(i)}
    for kind in ("weight", "bias"):
        out[f"transformer.h.{i}.attn.c_attn.{kind}"] = torch.cat(
            [q2[f"model.layers.{i}.self_attn.{p}_proj.{kind}"] for p in "qkv"]
        )
    return out


def outer_to_qwen2(v1: dict[str, torch.Tensor], m: ModelConfig) -> dict[str, torch.Tensor]:
    return {b: v1[a] for a, b in _outer(m)}


def outer_from_qwen2(q2: dict[str, torch.Tensor], m: ModelConfig) -> dict[str, torch.Tensor]:
    return {a: q2[b] for a, b in _outer(m)}


def qwen2_tensor(name: str, get_v1: Any, m: ModelConfig) -> torch.Tensor:
    """The Qwen2-layout tensor ``name`` read from a v1 checkpoint with ``get_v1``."""
    for a, b in _outer(m):
        if b == name:
            return get_v1(a)
    i = int(name.split(".")[2])  # model.layers.{i}....
    for a, b in _simple(i):
        if b == name:
            return get_v1(a)
    for kind in ("weight", "bias"):
        for j, p in enumerate("qkv"):
            if name == f"model.layers.{i}.self_attn.{p}_proj.{kind}":
                return get_v1(f"transformer.h.{i}.attn.c_attn.{kind}").chunk(3)[j]
    raise KeyError(f"{name} has no Qwen v1 counterpart")


def model_fields(cfg: Fields, mtype: str, source: str) -> dict:
    """The qwenpt ModelConfig fields of a v1 config.json (multi-head attention, QKV bias)."""
    return dict(
        read_names(cfg, NAMES), family="qwen",
        ffn_hidden_size=cfg["intermediate_size"] // 2,  # v1 lists twice the SwiGLU width
        num_query_groups=cfg["num_attention_heads"],
        max_position_embeddings=cfg.get("max_position_embeddings") or cfg.get("seq_length", 8192),
        rope_theta=rope_theta(cfg, 10000.0), qkv_bias=True,
    )


def hf_config(m: ModelConfig) -> dict:
    """config.json of the v1 model (QWenLMHeadModel needs its remote code: copy its .py files along)."""
    return {
        "architectures": ["QWenLMHeadModel"], "model_type": "qwen", **write_names(m, NAMES),
        "intermediate_size": 2 * m.ffn_hidden_size, "kv_channels": head_dim(m), "seq_length": m.max_position_embeddings,
        "max_position_embeddings": m.max_position_embeddings, "rotary_emb_base": m.rope_theta, "rotary_pct": 1.0,
        "no_bias": True, "auto_map": {
            "AutoConfig": "configuration_qwen.QWenConfig", "AutoModelForCausalLM": "modeling_qwen.QWenLMHeadModel"},
    }


def read_group(get: Getter, m: ModelConfig, group: Any) -> Tensors:
    """One group's tensors in Qwen2's names, each v1 tensor read once with ``get``."""
    if group == "outer":
        return outer_to_qwen2({k: get(k) for k in outer_keys(m)}, m)
    return layer_to_qwen2({k: get(k) for k in layer_keys(m, group)}, m, group)


def to_hf(meg: Tensors, m: ModelConfig, group: Any, root: str = "model.") -> Tensors:
    """One group in v1's names (``root``: v1 checkpoints have one place, ``transformer.``)."""
    q2 = qwen2.to_hf(meg, m, group)
    return outer_from_qwen2(q2, m) if group == "outer" else layer_from_qwen2(q2, m, group)


def megatron_params(m: ModelConfig, get: Getter, root: str = "model.") -> Getter:
    """Qwen2's parameters, each Qwen2 tensor read from its v1 counterpart."""
    return qwen2.megatron_params(m, lambda key: qwen2_tensor(key, get, m))


def reference_model(transformers: Any, hf_dir: Path, m: ModelConfig, get: Getter) -> torch.nn.Module:
    """The equivalent ``Qwen2ForCausalLM`` (fp32) holding the checkpoint's tensors."""
    fields = {k: v for k, v in qwen2.hf_config(m).items() if k not in ("architectures", "model_type")}
    model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**fields)).eval()
    state = {}
    for group in qwen2.groups(m):
        state.update(read_group(get, m, group))
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=not m.tie_embeddings)
    if m.tie_embeddings:
        model.tie_weights()
    return model


LAYOUT = Layout(
    name="qwen", hf_layouts=("qwen",), model_types=("qwen",), architectures=("QWenLMHeadModel",),
    known_as="qwen: QWenLMHeadModel", model_fields=model_fields, hf_config=hf_config, groups=qwen2.groups,
    to_hf=to_hf, megatron_params=megatron_params, reference_model=reference_model,
)
