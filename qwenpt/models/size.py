"""Exact parameter counts of a Qwen model config, without building it.

Used for MFU, the layout planner and the scaling-law tooling (embedding vs non-embedding
parameters); a test checks it against megatron-core's real model built on the meta device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ParamCounts:
    total: int  # every parameter, each tied matrix counted once
    embedding: int  # input embedding + untied output layer
    non_embedding: int  # total - embedding
    active: int  # parameters used per token (MoE: top-k routed experts only)

    @property
    def active_non_embedding(self) -> int:
        return self.active - self.embedding


def head_dim(m: Any) -> int:
    """Width of one attention head: ``kv_channels`` where set (Qwen3: 128 whatever the hidden size),
    else hidden_size / num_attention_heads (Qwen, Qwen1.5, Qwen2, Qwen2.5)."""
    return m.kv_channels or m.hidden_size // m.num_attention_heads


def attention_widths(m: Any) -> tuple[int, int]:
    """(q, kv): output widths of the query projection and of the key (= value) projection."""
    d = head_dim(m)
    return m.num_attention_heads * d, m.num_query_groups * d


def attention_params(m: Any) -> int:
    """QKV and output projections, QKV bias, and QK-norm weights (one per head width, shared by heads)."""
    q, kv = attention_widths(m)
    bias = (q + 2 * kv) if m.qkv_bias else 0
    qk_norm = 2 * head_dim(m) if m.qk_layernorm else 0
    return m.hidden_size * (q + 2 * kv) + bias + q * m.hidden_size + qk_norm


def expert_params(m: Any) -> int:
    """One routed expert's SwiGLU."""
    return 3 * m.hidden_size * m.moe_ffn_hidden_size


def mlp_params(m: Any, active: bool = False) -> int:
    if m.num_experts is None:
        return 3 * m.hidden_size * m.ffn_hidden_size
    experts = m.moe_router_topk if active else m.num_experts
    shared = 0
    if m.moe_shared_expert_ffn_hidden_size:
        shared = 3 * m.hidden_size * m.moe_shared_expert_ffn_hidden_size + m.hidden_size  # + sigmoid gate
    router = m.num_experts * m.hidden_size
    return router + experts * expert_params(m) + shared


def param_counts(m: Any) -> ParamCounts:
    norms = 2 * m.hidden_size
    layer = attention_params(m) + norms
    embedding = m.vocab_size * m.hidden_size * (1 if m.tie_embeddings else 2)
    final_norm = m.hidden_size
    total = embedding + m.num_layers * (layer + mlp_params(m)) + final_norm
    active = embedding + m.num_layers * (layer + mlp_params(m, active=True)) + final_norm
    return ParamCounts(total=total, embedding=embedding, non_embedding=total - embedding, active=active)


def format_count(n: float) -> str:
    """``n`` to three significant figures in a unit that fits (512, 1.79M, 494M, 7.62B): a fixed unit
    prints a small model as 0.000B or a large one as 7615.617M."""
    n = float(f"{n:.3g}")  # round first, so 999,999 reads 1M, not 1e+03K
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.3g}"
