"""Qwen (v1, ``QWenLMHeadModel``) checkpoint names ⇄ the Qwen2 layout of :mod:`qwenpt.convert.qwen2`.

Qwen v1 is the Qwen2 decoder with multi-head attention and other names: ``transformer.wte``,
``h.{i}.ln_1`` / ``ln_2``, a fused ``attn.c_attn`` ([q; k; v] rows, with bias), ``attn.c_proj``, and an
MLP computing ``c_proj(w1(x) * silu(w2(x)))`` — so ``w2`` is Qwen2's gate and ``w1`` its up projection.
"""

from __future__ import annotations

from typing import Any

import torch

from qwenpt.models.size import head_dim

IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)  # buffers some v1 checkpoints carry; recomputed


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


def _outer(m: Any) -> list[tuple[str, str]]:
    pairs = [("transformer.wte.weight", "model.embed_tokens.weight"), ("transformer.ln_f.weight", "model.norm.weight")]
    if not m.tie_embeddings:
        pairs.append(("lm_head.weight", "lm_head.weight"))
    return pairs


def layer_keys(m: Any, i: int) -> list[str]:
    return [a for a, _ in _simple(i)] + [f"transformer.h.{i}.attn.c_attn.{k}" for k in ("weight", "bias")]


def outer_keys(m: Any) -> list[str]:
    return [a for a, _ in _outer(m)]


def layer_to_qwen2(v1: dict[str, torch.Tensor], m: Any, i: int) -> dict[str, torch.Tensor]:
    out = {q2: v1[a] for a, q2 in _simple(i)}
    for kind in ("weight", "bias"):
        q, k, v = v1[f"transformer.h.{i}.attn.c_attn.{kind}"].chunk(3)
        for p, t in zip("qkv", (q, k, v)):
            out[f"model.layers.{i}.self_attn.{p}_proj.{kind}"] = t
    return out


def layer_from_qwen2(q2: dict[str, torch.Tensor], m: Any, i: int) -> dict[str, torch.Tensor]:
    out = {a: q2[b] for a, b in _simple(i)}
    for kind in ("weight", "bias"):
        out[f"transformer.h.{i}.attn.c_attn.{kind}"] = torch.cat(
            [q2[f"model.layers.{i}.self_attn.{p}_proj.{kind}"] for p in "qkv"]
        )
    return out


def outer_to_qwen2(v1: dict[str, torch.Tensor], m: Any) -> dict[str, torch.Tensor]:
    return {b: v1[a] for a, b in _outer(m)}


def outer_from_qwen2(q2: dict[str, torch.Tensor], m: Any) -> dict[str, torch.Tensor]:
    return {a: q2[b] for a, b in _outer(m)}


def qwen2_tensor(name: str, get_v1: Any, m: Any) -> torch.Tensor:
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


def hf_config(m: Any) -> dict:
    """config.json of the v1 model (QWenLMHeadModel needs its remote code: copy its .py files along)."""
    return {
        "architectures": ["QWenLMHeadModel"], "model_type": "qwen", "hidden_size": m.hidden_size,
        "intermediate_size": 2 * m.ffn_hidden_size, "num_hidden_layers": m.num_layers,
        "num_attention_heads": m.num_attention_heads, "kv_channels": head_dim(m),
        "vocab_size": m.vocab_size, "seq_length": m.max_position_embeddings,
        "max_position_embeddings": m.max_position_embeddings, "rotary_emb_base": m.rope_theta,
        "rotary_pct": 1.0, "layer_norm_epsilon": m.norm_eps, "no_bias": True,
        "tie_word_embeddings": m.tie_embeddings, "auto_map": {
            "AutoConfig": "configuration_qwen.QWenConfig", "AutoModelForCausalLM": "modeling_qwen.QWenLMHeadModel"},
    }
