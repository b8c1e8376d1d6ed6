"""Exact parameter counts of a Qwen model config, without building it.

Used for MFU, the layout planner and the scaling-law tooling (embedding vs non-embedding
parameters); a test checks it against megatron-core's real model built on the meta device.

The hybrid generation (Qwen3-Next, Qwen3.5, Qwen3.6; ``full_attention_interval`` set) counts per layer
kind, as megatron-core builds them (tests/{unit,integration}/test_hybrid_sizes.py checks every public config against
transformers' model on the meta device, plus the MTP layer transformers drops):

- a Gated DeltaNet layer: ``in_proj`` h x (2 qk + 2 v + 2 nv) (q, k, v, the output gate z, and per value
  head beta and alpha), the depthwise ``conv1d`` (2 qk + v) x kernel (no bias), ``A_log`` and ``dt_bias``
  (nv each), the gated output RMSNorm over one value head (dv) and ``out_proj`` v x h, where
  qk = linear_num_key_heads x linear_key_head_dim, v = linear_num_value_heads x linear_value_head_dim;
- a full-attention layer with ``attention_output_gate``: the query projection twice as wide (query and
  its sigmoid gate), otherwise Qwen3's attention (GQA, QK-norm over one head's width);
- zero-centred RMSNorms (stored w, applied as 1 + w) have as many weights as plain ones;
- each MTP layer (``mtp_num_layers``; megatron-core's MultiTokenPredictionLayer, HF ``mtp.*``): two input
  RMSNorms (enorm, hnorm: h each), ``eh_proj`` 2h x h, one full-attention layer with the model's MLP or MoE,
  and a final RMSNorm; it shares the embedding and output layer, so it adds no vocabulary matrix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ParamCounts:
    total: int  # every parameter, each tied matrix counted once (MTP layers included)
    embedding: int  # input embedding + untied output layer
    non_embedding: int  # total - embedding
    active: int  # parameters used per token (MoE: top-k routed experts only; MTP layers included)
    mtp: int = 0  # the MTP layers' own parameters (in total; their embedding and output layer are the model's)
    mtp_active: int = 0  # of them, used per token

    @property
    def active_non_embedding(self) -> int:
        return self.active - self.embedding

    @property
    def without_mtp(self) -> int:
        """The parameters inference keeps (and transformers loads): the MTP layers left out."""
        return self.total - self.mtp


def head_dim(m: Any) -> int:
    """Width of one attention head: ``kv_channels`` where set (Qwen3: 128 whatever the hidden size),
    else hidden_size / num_attention_heads (Qwen, Qwen1.5, Qwen2, Qwen2.5)."""
    return m.kv_channels or m.hidden_size // m.num_attention_heads


def attention_widths(m: Any) -> tuple[int, int]:
    """(q, kv): output widths of the query projection and of the key (= value) projection (the query
    alone: an output gate adds as much again to the fused projection, see :func:`gate_width`)."""
    d = head_dim(m)
    return m.num_attention_heads * d, m.num_query_groups * d


def gate_width(m: Any) -> int:
    """Width of the attention output gate's projection (fused into the query projection): q, or 0."""
    return attention_widths(m)[0] if getattr(m, "attention_output_gate", False) else 0


def attention_params(m: Any) -> int:
    """QKV (and output gate) and output projections, their bias, and QK-norm weights (one per head width,
    shared by heads)."""
    q, kv = attention_widths(m)
    fused = q + gate_width(m) + 2 * kv
    bias = fused if m.qkv_bias else 0
    qk_norm = 2 * head_dim(m) if m.qk_layernorm else 0
    return m.hidden_size * fused + bias + q * m.hidden_size + qk_norm


def is_hybrid(m: Any) -> bool:
    """The hybrid generation: Gated DeltaNet layers with a full-attention layer every interval-th."""
    return getattr(m, "full_attention_interval", None) is not None


def is_linear_layer(m: Any, layer: int) -> bool:
    """Whether layer ``layer`` (counted from 0) is Gated DeltaNet: every layer but each interval-th."""
    return is_hybrid(m) and (layer + 1) % m.full_attention_interval != 0


def num_gdn_layers(m: Any) -> int:
    """Gated DeltaNet layers among the decoder's (the MTP layers, always full attention, not counted)."""
    return sum(is_linear_layer(m, i) for i in range(m.num_layers))


def gdn_widths(m: Any) -> tuple[int, int]:
    """(qk, v): the Gated DeltaNet's query (= key) width and value (= output gate) width."""
    return m.linear_num_key_heads * m.linear_key_head_dim, m.linear_num_value_heads * m.linear_value_head_dim


def gdn_in_proj_width(m: Any) -> int:
    """Output width of the GDN input projection: q, k, v, z (output gate), beta and alpha."""
    qk, v = gdn_widths(m)
    return 2 * qk + 2 * v + 2 * m.linear_num_value_heads


def gdn_params(m: Any) -> int:
    """One Gated DeltaNet mixer (the layer's norms and MLP not included)."""
    qk, v = gdn_widths(m)
    h, nv = m.hidden_size, m.linear_num_value_heads
    conv = (2 * qk + v) * m.linear_conv_kernel_dim
    return h * gdn_in_proj_width(m) + conv + 2 * nv + m.linear_value_head_dim + v * h


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


def mtp_layer_params(m: Any, active: bool = False) -> int:
    """One MTP layer: enorm + hnorm, eh_proj (2h -> h), a full-attention decoder layer, final norm."""
    h = m.hidden_size
    decoder_layer = attention_params(m) + 2 * h + mlp_params(m, active)
    return 2 * h + 2 * h * h + decoder_layer + h


def param_counts(m: Any) -> ParamCounts:
    norms = 2 * m.hidden_size
    gdn = num_gdn_layers(m)
    attention = m.num_layers - gdn
    mixers = attention * attention_params(m) + (gdn * gdn_params(m) if gdn else 0)
    embedding = m.vocab_size * m.hidden_size * (1 if m.tie_embeddings else 2)
    final_norm = m.hidden_size
    mtp_layers = getattr(m, "mtp_num_layers", 0) or 0
    mtp = mtp_layers * mtp_layer_params(m)
    mtp_active = mtp_layers * mtp_layer_params(m, active=True)
    body = embedding + mixers + m.num_layers * norms + final_norm
    total = body + m.num_layers * mlp_params(m) + mtp
    active = body + m.num_layers * mlp_params(m, active=True) + mtp_active
    return ParamCounts(total=total, embedding=embedding, non_embedding=total - embedding, active=active,
                       mtp=mtp, mtp_active=mtp_active)


def format_count(n: float) -> str:
    """``n`` to three significant figures in a unit that fits (512, 1.79M, 494M, 7.62B): a fixed unit
    prints a small model as 0.000B or a large one as 7615.617M."""
    n = float(f"{n:.3g}")  # round first, so 999,999 reads 1M, not 1e+03K
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.3g}"
