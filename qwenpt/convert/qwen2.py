"""Hugging Face Qwen2 / Qwen2-MoE / Qwen3 / Qwen3-MoE layout ⇄ megatron-core GPTModel names, for whole
(unsharded) tensors.

Covers Qwen1.5, Qwen2 and Qwen2.5 dense (``Qwen2ForCausalLM``), Qwen1.5-MoE / Qwen2-MoE
(``Qwen2MoeForCausalLM``), Qwen3 (``Qwen3ForCausalLM``: no QKV bias, ``q_norm``/``k_norm`` per head,
head width from ``head_dim``) and Qwen3-MoE (``Qwen3MoeForCausalLM``: the same attention, routed experts
only). megatron-core fuses Q, K and V into one ``linear_qkv`` laid out per query group — [q heads of the
group, k, v] — and gate/up into one ``linear_fc1`` [gate; up].
"""

from __future__ import annotations

from typing import Any

import torch

from qwenpt.models import rope
from qwenpt.models.registry import FAMILIES, MODEL_TYPES, hf_architecture
from qwenpt.models.size import head_dim


def hf_config(m: Any) -> dict:
    """config.json fields of the Hugging Face model equivalent to model config ``m`` (Qwen v1: the
    equivalent Qwen2 model)."""
    arch = hf_architecture(m) if FAMILIES[m.family].hf_layout == "qwen2" else "Qwen2ForCausalLM"
    cfg = {
        "hidden_size": m.hidden_size,
        "intermediate_size": m.ffn_hidden_size,
        "num_hidden_layers": m.num_layers,
        "num_attention_heads": m.num_attention_heads,
        "num_key_value_heads": m.num_query_groups,
        "vocab_size": m.vocab_size,
        "max_position_embeddings": m.max_position_embeddings,
        "rope_theta": float(m.rope_theta),
        "rms_norm_eps": m.norm_eps,
        "tie_word_embeddings": m.tie_embeddings,
        "hidden_act": "silu",
        "attention_dropout": 0.0,
        "use_sliding_window": False,
    }
    cfg.update(model_type=MODEL_TYPES[arch], architectures=[arch])
    if rope.rope_scaling(m) is not None:
        cfg["rope_scaling"] = rope.to_hf(m)
    if arch.startswith("Qwen3"):
        cfg.update(head_dim=head_dim(m), attention_bias=m.qkv_bias)
    if m.num_experts is not None:
        cfg.update(
            num_experts=m.num_experts,
            num_experts_per_tok=m.moe_router_topk,
            moe_intermediate_size=m.moe_ffn_hidden_size,
            norm_topk_prob=m.moe_norm_topk_prob,
            router_aux_loss_coef=m.moe_aux_loss_coeff,
            decoder_sparse_step=1,
            mlp_only_layers=[],
        )
        if not arch.startswith("Qwen3"):  # Qwen3-MoE has no shared expert
            cfg["shared_expert_intermediate_size"] = m.moe_shared_expert_ffn_hidden_size or 0
    return cfg


def _head_split(m: Any) -> tuple[int, int, int]:
    """(query groups, query heads per group, head width) of megatron's fused QKV layout."""
    return m.num_query_groups, m.num_attention_heads // m.num_query_groups, head_dim(m)


def _qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, m: Any) -> torch.Tensor:
    groups, per_group, d = _head_split(m)
    rest = q.shape[1:]
    fused = torch.cat(
        [q.reshape(groups, per_group * d, *rest), k.reshape(groups, d, *rest), v.reshape(groups, d, *rest)], dim=1
    )
    return fused.reshape(-1, *rest)


def _split_qkv(qkv: torch.Tensor, m: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    groups, per_group, d = _head_split(m)
    rest = qkv.shape[1:]
    q, k, v = qkv.reshape(groups, (per_group + 2) * d, *rest).split([per_group * d, d, d], dim=1)
    return q.reshape(-1, *rest), k.reshape(-1, *rest), v.reshape(-1, *rest)


def _swiglu_pairs(m: Any, i: int) -> list[tuple[str, str]]:
    """(megatron prefix, HF prefix) of every SwiGLU block in layer i."""
    meg, hf = f"decoder.layers.{i}.mlp", f"model.layers.{i}.mlp"
    if m.num_experts is None:
        return [(meg, hf)]
    pairs = [(f"{meg}.experts.local_experts.{e}", f"{hf}.experts.{e}") for e in range(m.num_experts)]
    if m.moe_shared_expert_ffn_hidden_size:
        pairs.append((f"{meg}.shared_experts", f"{hf}.shared_expert"))
    return pairs


def _outer_renames(m: Any) -> list[tuple[str, str]]:
    """(megatron name, HF name) of the tensors outside the layers."""
    pairs = [("embedding.word_embeddings.weight", "model.embed_tokens.weight"),
             ("decoder.final_layernorm.weight", "model.norm.weight")]
    if not m.tie_embeddings:
        pairs.append(("output_layer.weight", "lm_head.weight"))
    return pairs


def _layer_renames(m: Any, i: int) -> list[tuple[str, str]]:
    """(megatron name, HF name) of layer i's tensors copied unchanged."""
    meg, hf = f"decoder.layers.{i}", f"model.layers.{i}"
    pairs = [
        (f"{meg}.input_layernorm.weight", f"{hf}.input_layernorm.weight"),
        (f"{meg}.self_attention.linear_proj.weight", f"{hf}.self_attn.o_proj.weight"),
        (f"{meg}.pre_mlp_layernorm.weight", f"{hf}.post_attention_layernorm.weight"),
    ]
    if m.qk_layernorm:
        pairs += [(f"{meg}.self_attention.{p}_layernorm.weight", f"{hf}.self_attn.{p}_norm.weight") for p in "qk"]
    pairs += [(f"{a}.linear_fc2.weight", f"{b}.down_proj.weight") for a, b in _swiglu_pairs(m, i)]
    if m.num_experts is not None:
        pairs.append((f"{meg}.mlp.router.weight", f"{hf}.mlp.gate.weight"))
        if m.moe_shared_expert_ffn_hidden_size:
            pairs.append((f"{meg}.mlp.shared_experts.gate_weight", f"{hf}.mlp.shared_expert_gate.weight"))
    return pairs


def layer_hf_keys(m: Any, i: int) -> list[str]:
    """Every HF tensor name of layer i (Hub per-expert form)."""
    h = f"model.layers.{i}.self_attn"
    keys = [hf for _, hf in _layer_renames(m, i)]
    keys += [f"{h}.{p}_proj.{kind}" for kind in (("weight", "bias") if m.qkv_bias else ("weight",)) for p in "qkv"]
    keys += [f"{src}.{p}_proj.weight" for _, src in _swiglu_pairs(m, i) for p in ("gate", "up")]
    return keys


def outer_hf_keys(m: Any) -> list[str]:
    return [hf for _, hf in _outer_renames(m)]


def layer_to_megatron(hf: dict[str, torch.Tensor], m: Any, i: int) -> dict[str, torch.Tensor]:
    """Layer i's megatron tensors from its HF tensors."""
    out = {meg: hf[name] for meg, name in _layer_renames(m, i)}
    a, h = f"decoder.layers.{i}.self_attention", f"model.layers.{i}.self_attn"
    out[f"{a}.linear_qkv.weight"] = _qkv(*(hf[f"{h}.{p}_proj.weight"] for p in "qkv"), m)
    if m.qkv_bias:
        out[f"{a}.linear_qkv.bias"] = _qkv(*(hf[f"{h}.{p}_proj.bias"] for p in "qkv"), m)
    for meg, src in _swiglu_pairs(m, i):
        out[f"{meg}.linear_fc1.weight"] = torch.cat([hf[f"{src}.gate_proj.weight"], hf[f"{src}.up_proj.weight"]])
    return out


def layer_to_hf(meg: dict[str, torch.Tensor], m: Any, i: int) -> dict[str, torch.Tensor]:
    """The inverse of :func:`layer_to_megatron`."""
    out = {name: meg[src] for src, name in _layer_renames(m, i)}
    a, h = f"decoder.layers.{i}.self_attention", f"model.layers.{i}.self_attn"
    for kind in ("weight", "bias") if m.qkv_bias else ("weight",):
        for p, t in zip("qkv", _split_qkv(meg[f"{a}.linear_qkv.{kind}"], m)):
            out[f"{h}.{p}_proj.{kind}"] = t
    for src, dst in _swiglu_pairs(m, i):
        out[f"{dst}.gate_proj.weight"], out[f"{dst}.up_proj.weight"] = meg[f"{src}.linear_fc1.weight"].chunk(2)
    return out


def megatron_param(name: str, get: Any, m: Any) -> torch.Tensor:
    """One megatron-core parameter (TP=1 name) from the HF tensors it is made of, read with ``get``."""
    outer = dict(_outer_renames(m))
    if name in outer:
        return get(outer[name])
    i = int(name.split(".")[2])  # decoder.layers.{i}....
    renamed = dict(_layer_renames(m, i))
    if name in renamed:
        return get(renamed[name])
    a, h = f"decoder.layers.{i}.self_attention", f"model.layers.{i}.self_attn"
    for kind in ("weight", "bias"):
        if name == f"{a}.linear_qkv.{kind}":
            return _qkv(*(get(f"{h}.{p}_proj.{kind}") for p in "qkv"), m)
    for meg, src in _swiglu_pairs(m, i):
        if name == f"{meg}.linear_fc1.weight":
            return torch.cat([get(f"{src}.gate_proj.weight"), get(f"{src}.up_proj.weight")])
    raise KeyError(f"{name} is not a parameter of a Qwen2-layout model")


def outer_to_megatron(hf: dict[str, torch.Tensor], m: Any) -> dict[str, torch.Tensor]:
    return {meg: hf[name] for meg, name in _outer_renames(m)}


def outer_to_hf(meg: dict[str, torch.Tensor], m: Any) -> dict[str, torch.Tensor]:
    return {name: meg[src] for src, name in _outer_renames(m)}


def unfuse_experts(hf: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per-expert keys (the Hub checkpoint form) from transformers 5's in-memory fused experts
    (``experts.gate_up_proj`` [E, 2I, H], gate first; ``experts.down_proj`` [E, H, I])."""
    out = {}
    for key, t in hf.items():
        if key.endswith(".experts.gate_up_proj"):
            base = key.removesuffix(".gate_up_proj")
            for e, w in enumerate(t):
                out[f"{base}.{e}.gate_proj.weight"], out[f"{base}.{e}.up_proj.weight"] = w.chunk(2)
        elif key.endswith(".experts.down_proj"):
            base = key.removesuffix(".down_proj")
            for e, w in enumerate(t):
                out[f"{base}.{e}.down_proj.weight"] = w
        else:
            out[key] = t
    return out


def hf_to_megatron(hf: dict[str, torch.Tensor], m: Any) -> dict[str, torch.Tensor]:
    """Full megatron-core state dict (TP=PP=EP=1 names) from a Hugging Face state dict
    (Hub per-expert keys, or transformers 5's fused experts)."""
    hf = unfuse_experts(hf)
    out = outer_to_megatron(hf, m)
    for i in range(m.num_layers):
        out.update(layer_to_megatron(hf, m, i))
    return out


def megatron_to_hf(meg: dict[str, torch.Tensor], m: Any) -> dict[str, torch.Tensor]:
    """The inverse of :func:`hf_to_megatron` (Hub per-expert keys)."""
    out = outer_to_hf(meg, m)
    for i in range(m.num_layers):
        out.update(layer_to_hf(meg, m, i))
    return out


def load_into(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a full state dict into an unsharded megatron model; every parameter must be covered."""
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("_extra_state")]
    if missing or result.unexpected_keys:
        raise KeyError(f"state dict does not match the model: missing {missing}, unexpected {result.unexpected_keys}")
