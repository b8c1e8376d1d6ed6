"""Hugging Face Qwen2 / Qwen2-MoE / Qwen3 / Qwen3-MoE layout ⇄ megatron-core GPTModel names, for whole
(unsharded) tensors.

Covers Qwen1.5, Qwen2 and Qwen2.5 dense (``Qwen2ForCausalLM``), Qwen1.5-MoE / Qwen2-MoE
(``Qwen2MoeForCausalLM``), Qwen3 (``Qwen3ForCausalLM``: no QKV bias, ``q_norm``/``k_norm`` per head,
head width from ``head_dim``) and Qwen3-MoE (``Qwen3MoeForCausalLM``: the same attention, routed experts
only). megatron-core fuses Q, K and V into one ``linear_qkv`` laid out per query group — [q heads of the
group, k, v] — and gate/up into one ``linear_fc1`` [gate; up]; the rules saying so are
:mod:`qwenpt.convert.layouts.rules`, shared with the hybrids.
"""

from __future__ import annotations

from typing import Any

import torch

from qwenpt.convert.layouts.base import (DECODER_NAMES, MOE_NAMES, Fields, Layout, read_names, refuse_dense_layers, rope_theta,
                                         write_names)
from qwenpt.convert.layouts.rules import Rule, RuleTable, attention_rules, layer_rules, outer_rules
from qwenpt.errors import ConfigError
from qwenpt.models import rope
from qwenpt.models.registry import FAMILIES, MODEL_TYPES, hf_architecture
from qwenpt.models.size import head_dim
from qwenpt.config import ModelConfig


def model_fields(cfg: Fields, mtype: str, source: str) -> dict:
    """The qwenpt ModelConfig fields of a qwen2 / qwen2_moe / qwen3 / qwen3_moe config.json."""
    qwen3 = mtype.startswith("qwen3")
    fields = dict(
        read_names(cfg, DECODER_NAMES), family="qwen3" if qwen3 else "qwen2", ffn_hidden_size=cfg["intermediate_size"],
        num_query_groups=cfg.get("num_key_value_heads") or cfg["num_attention_heads"], rope_theta=rope_theta(cfg, 1e6),
        qkv_bias=True, rope_scaling=rope.from_hf(cfg, source),
    )
    if qwen3:
        if cfg.get("attention_bias", False):
            raise ConfigError(f"{source}: Qwen3 with attention_bias=true (a bias on q/k/v and o_proj) is not supported; "
                              "every public Qwen3 has attention_bias false")
        fields.update(qkv_bias=False, qk_layernorm=True, kv_channels=cfg.get("head_dim") or None)
    if mtype.endswith("_moe"):
        refuse_dense_layers(cfg, source, "public Qwen MoE")
        # transformers 5 writes Qwen3-MoE's num_experts as num_local_experts
        experts = next((k for k in ("num_experts", "num_local_experts") if k in cfg), "num_experts")
        fields.update(
            read_names(cfg, MOE_NAMES), num_experts=cfg[experts],
            moe_shared_expert_ffn_hidden_size=cfg.get("shared_expert_intermediate_size") or None,
            moe_norm_topk_prob=bool(cfg.get("norm_topk_prob", False)),
            # Qwen3-MoE balances expert load over the global batch (Qwen3 technical report, section 2)
            moe_load_balancing="global_aux_loss" if qwen3 else "aux_loss",
        )
    return fields


def hf_config(m: ModelConfig) -> dict:
    """config.json fields of the Hugging Face model equivalent to model config ``m`` (Qwen v1: the
    equivalent Qwen2 model)."""
    arch = hf_architecture(m) if FAMILIES[m.family].hf_layout == "qwen2" else "Qwen2ForCausalLM"
    cfg = {
        "architectures": [arch], "model_type": MODEL_TYPES[arch], **write_names(m, DECODER_NAMES),
        "intermediate_size": m.ffn_hidden_size, "num_key_value_heads": m.num_query_groups,
        "rope_theta": float(m.rope_theta), "hidden_act": "silu", "attention_dropout": 0.0, "use_sliding_window": False,
    }
    if rope.rope_scaling(m) is not None:
        cfg["rope_scaling"] = rope.to_hf(m)
    if arch.startswith("Qwen3"):
        cfg.update(head_dim=head_dim(m), attention_bias=m.qkv_bias)
    if m.num_experts is not None:
        cfg.update(write_names(m, MOE_NAMES), num_experts=m.num_experts, norm_topk_prob=m.moe_norm_topk_prob,
                   decoder_sparse_step=1, mlp_only_layers=[])
        if not arch.startswith("Qwen3"):  # Qwen3-MoE has no shared expert
            cfg["shared_expert_intermediate_size"] = m.moe_shared_expert_ffn_hidden_size or 0
    return cfg


def rules(m: ModelConfig, group: Any, root: str = "model.") -> list[Rule]:
    """Every rule of one group: ``"outer"`` or a layer's index."""
    if group == "outer":
        return outer_rules(m, root)
    meg, hf = f"decoder.layers.{group}", f"{root}layers.{group}"
    return layer_rules(m, meg, hf, attention_rules(m, f"{meg}.self_attention", f"{hf}.self_attn"))


def groups(m: ModelConfig) -> list:
    return ["outer", *range(m.num_layers)]


TABLE = RuleTable(rules)
to_hf = TABLE.to_hf
megatron_params = TABLE.megatron_params


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


def hf_to_megatron(hf: dict[str, torch.Tensor], m: ModelConfig) -> dict[str, torch.Tensor]:
    """Full megatron-core state dict (TP=PP=EP=1 names) from a Hugging Face state dict
    (Hub per-expert keys, or transformers 5's fused experts)."""
    hf = unfuse_experts(hf)
    out: dict[str, torch.Tensor] = {}
    for group in groups(m):
        out.update(TABLE.to_megatron(hf, m, group))
    return out


def megatron_to_hf(meg: dict[str, torch.Tensor], m: ModelConfig) -> dict[str, torch.Tensor]:
    """The inverse of :func:`hf_to_megatron` (Hub per-expert keys)."""
    out: dict[str, torch.Tensor] = {}
    for group in groups(m):
        out.update(to_hf(meg, m, group))
    return out


def load_into(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a full state dict into an unsharded megatron model; every parameter must be covered."""
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("_extra_state")]
    if missing or result.unexpected_keys:
        raise KeyError(f"state dict does not match the model: missing {missing}, unexpected {result.unexpected_keys}")


LAYOUT = Layout(
    name="qwen2", hf_layouts=("qwen2",), model_types=("qwen2", "qwen2_moe", "qwen3", "qwen3_moe"),
    known_as="qwen2: Qwen2ForCausalLM; qwen2_moe: Qwen2MoeForCausalLM; qwen3: Qwen3ForCausalLM; "
             "qwen3_moe: Qwen3MoeForCausalLM",
    model_fields=model_fields, hf_config=hf_config, groups=groups, to_hf=to_hf, megatron_params=megatron_params,
)
