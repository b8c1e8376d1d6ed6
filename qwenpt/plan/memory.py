"""Per-GPU memory of a parallel layout, from the model config alone (no GPU, no process group).

Parameters per rank are exact (a test builds megatron-core's model on the meta device for the
same ranks and compares). Memory follows megatron-core's mixed-precision training with the
settings qwenpt uses:

- weights in the training dtype (bf16: 2 bytes), gradients accumulated in fp32 (``main_grad``,
  ``grad_reduce_in_fp32``: 4 bytes), Adam state as fp32 master weights + two moments (12 bytes;
  8 in fp32 training, which needs no master copy), divided over the data-parallel replicas by
  the distributed optimizer (expert parameters over the expert-data-parallel replicas);
- activations per layer and micro-batch, counted tensor by tensor for Qwen's block (RMSNorm,
  GQA with flash attention: no s x s scores are kept, SwiGLU, no dropout) — the method of
  Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer Models"),
  times the micro-batches a pipeline stage holds in flight under 1F1B (interleaved: megatron's
  warm-up count). Full recomputation keeps only each layer's input.

Long sequences (32K-128K): every term is linear in the tokens a GPU holds, seq x micro-batch / CP
(context parallel splits the sequence; sequence parallel splits the norm-side tensors by TP too):
flash / fused attention (TE, FlashAttention, SDPA) keeps no s x s scores, only its output and a
per-head fp32 log-sum-exp (4 bytes x heads / TP per token, < 0.1% of a layer, not counted); CP is
Transformer Engine's ring (p2p) form, which keeps only this rank's K/V for backward (the all-gather
form, ``cp_comm_type=all_gather``, would also keep the gathered K/V). Selective recomputation
recomputes the core attention, which with flash attention has nothing else to drop, so it is
counted as none. The last stage's logits and their fp32 softmax (6 bytes x vocab / TP per token)
dominate at long lengths: 13.9 GiB for Qwen2-7B at 32K per sequence on TP 2 without CP.

The hybrid generation (Qwen3-Next, Qwen3.5, Qwen3.6): parameters per rank follow each layer's kind (the
stage's own global layer indices, as megatron-core's layer offset assigns them, decide which are Gated DeltaNet),
and the MTP layer lives on the last pipeline stage together with its own copy of the input embedding when that
stage is not the first (megatron-core builds an embedding wherever an MTP block is). A GDN layer keeps, per token
and split by TP (megatron-core 0.16's GatedDeltaNet with flash-linear-attention's chunked kernel): the conv input
and its pre-activation output (2 x (2 qk + v)), the L2-norm inputs q and k (2 qk), the kernel's q and k at the
value heads' width (2 nv dk, after the repeat to value heads), v, the decay g (fp32) and beta, the kernel's
per-chunk WY matrix (64 entries per token and value head), the softplus input and output (fp32), and for the gated
output norm the kernel output, the norm output, the gate and its SiLU (both fp32) and the out_proj input. Gated
attention keeps the sigmoid gate and the gated product besides Qwen3's tensors (2 q more). The last stage also
keeps the MTP layer's activations (a full-attention layer plus its norm and eh_proj inputs) and its own logits and
softmax, once, as the main head's. Interleaved stages use the mean layer of the rank (exact when each chunk holds
whole groups of full_attention_interval layers).

Not counted: the CUDA context, NCCL buffers and allocator fragmentation — the planner keeps a
headroom for them (``--headroom``, 10% by default).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from qwenpt.models.size import attention_widths, gate_width, gdn_in_proj_width, gdn_widths, head_dim, is_linear_layer

GiB = 1024**3


@dataclass(frozen=True)
class StageParams:
    """Parameters held by one GPU of a pipeline stage (every TP/EP rank of a stage holds as many)."""

    dense: int  # reduced over data parallel (x context parallel) replicas
    expert: int  # routed experts: reduced over expert-data-parallel replicas

    @property
    def total(self) -> int:
        return self.dense + self.expert


def _attention_dense_params(m: Any, tp: int) -> int:
    """One full-attention mixer's parameters on one tensor-parallel rank (QK-norm included)."""
    q, kv = attention_widths(m)
    qkv_out = q + gate_width(m) + 2 * kv  # the output gate is fused into the query projection
    attention = m.hidden_size * qkv_out // tp + (qkv_out // tp if m.qkv_bias else 0)
    attention += q * m.hidden_size // tp
    if m.qk_layernorm:
        attention += 2 * head_dim(m)  # QK-norm over one head's width, replicated
    return attention


def _gdn_dense_params(m: Any, tp: int) -> int:
    """One Gated DeltaNet mixer on one tensor-parallel rank: in_proj, conv, A_log and dt_bias split by heads,
    the output norm (one value head wide) replicated."""
    qk, v = gdn_widths(m)
    h, nv = m.hidden_size, m.linear_num_value_heads
    split = h * gdn_in_proj_width(m) + (2 * qk + v) * m.linear_conv_kernel_dim + 2 * nv + v * h
    return split // tp + m.linear_value_head_dim


def _layer_dense_params(m: Any, tp: int, linear: bool = False) -> int:
    """One layer's non-expert parameters on one tensor-parallel rank (``linear``: a Gated DeltaNet layer)."""
    mixer = _gdn_dense_params(m, tp) if linear else _attention_dense_params(m, tp)
    norms = 2 * m.hidden_size  # input and pre-MLP RMSNorm, replicated
    if m.num_experts is None:
        return mixer + norms + 3 * m.hidden_size * m.ffn_hidden_size // tp
    moe = m.num_experts * m.hidden_size  # router, replicated
    if m.moe_shared_expert_ffn_hidden_size:
        moe += 3 * m.hidden_size * m.moe_shared_expert_ffn_hidden_size // tp + m.hidden_size  # + its gate
    return mixer + norms + moe


def _layer_expert_params(m: Any, ep: int, etp: int) -> int:
    if m.num_experts is None:
        return 0
    return (m.num_experts // ep) * 3 * m.hidden_size * m.moe_ffn_hidden_size // etp


def _mtp_layers(m: Any) -> int:
    return getattr(m, "mtp_num_layers", 0) or 0


def _mtp_dense_params(m: Any, tp: int) -> int:
    """One MTP layer's non-expert parameters on one TP rank: enorm, hnorm and the final norm (replicated),
    eh_proj (2h -> h, column-parallel) and a full-attention decoder layer."""
    h = m.hidden_size
    return 3 * h + 2 * h * h // tp + _layer_dense_params(m, tp, linear=False)


def stage_layers(m: Any, p: Any, pp_rank: int) -> list[int]:
    """Global indices (from 0) of the decoder layers on pipeline rank ``pp_rank``, all its virtual chunks:
    megatron-core's layer offset for equal stages (chunk c of rank r starts at c * L / vpp + r * L / (pp vpp))."""
    pp, vpp = p.pipeline_model_parallel_size, p.virtual_pipeline_model_parallel_size or 1
    per_chunk = m.num_layers // (pp * vpp)
    return [c * (m.num_layers // vpp) + pp_rank * per_chunk + i for c in range(vpp) for i in range(per_chunk)]


def stage_params(m: Any, p: Any, pp_rank: int) -> StageParams:
    """Parameters on one GPU of pipeline stage ``pp_rank`` (all its virtual chunks together)."""
    tp, pp = p.tensor_model_parallel_size, p.pipeline_model_parallel_size
    etp = p.expert_tensor_parallel_size or tp
    layers = stage_layers(m, p, pp_rank)
    linear = sum(is_linear_layer(m, i) for i in layers)
    dense = (len(layers) - linear) * _layer_dense_params(m, tp)
    if linear:
        dense += linear * _layer_dense_params(m, tp, linear=True)
    expert = len(layers) * _layer_expert_params(m, p.expert_model_parallel_size, etp)
    embedding = m.vocab_size * m.hidden_size // tp
    if pp_rank == 0:
        dense += embedding
    if pp_rank == pp - 1:
        dense += m.hidden_size  # final norm
        # the output layer; a tied one is the input embedding on one stage, a synced copy on two
        if not m.tie_embeddings or pp > 1:
            dense += embedding
        mtp = _mtp_layers(m)
        if mtp:  # the MTP layers, on the last stage, and their input embedding where that is not the first stage
            dense += mtp * _mtp_dense_params(m, tp) + (embedding if pp > 1 else 0)
            expert += mtp * _layer_expert_params(m, p.expert_model_parallel_size, etp)
    return StageParams(dense=dense, expert=expert)


def in_flight_chunks(p: Any, pp_rank: int, num_microbatches: int) -> tuple[int, int]:
    """(model chunks' activations held at the peak, layers per chunk divisor): how many
    micro-batch x chunk activations stage ``pp_rank`` keeps during 1F1B (megatron's warm-up + 1)."""
    pp, vpp = p.pipeline_model_parallel_size, p.virtual_pipeline_model_parallel_size
    if vpp is None:
        return min(pp - pp_rank, num_microbatches), 1
    warmup = (pp - pp_rank - 1) * 2 + (vpp - 1) * pp
    return min(warmup + 1, num_microbatches * vpp), vpp


def layer_activation_bytes(
    m: Any, p: Any, seq_length: int, micro_batch: int, dtype_bytes: int = 2, full_recompute: bool = False,
    linear: bool = False,
) -> float:
    """Activations one transformer layer keeps for backward, for one micro-batch, on one GPU
    (``full_recompute``: only its input; the rest is recomputed in the backward pass; ``linear``: a Gated
    DeltaNet layer instead of attention)."""
    tp, cp = p.tensor_model_parallel_size, p.context_parallel_size
    etp = p.expert_tensor_parallel_size or tp
    h = m.hidden_size
    tokens = seq_length * micro_batch / cp
    if full_recompute:
        return dtype_bytes * tokens * h / (tp if p.sequence_parallel else 1)
    sp = tp if p.sequence_parallel else 1
    e = dtype_bytes  # bytes per element
    # replicated across TP unless SP: the two norm inputs and the two column-parallel inputs
    norm_side = 4 * e * tokens * h / sp
    if linear:
        mixer = gdn_activation_bytes_per_token(m, e) * tokens / tp
    else:
        q, kv = attention_widths(m)
        # split by TP: q, k, v after RoPE, attention output (flash attention: no scores kept); with
        # QK-norm also its inputs, q and k before the norm; with the output gate its sigmoid and the gated product
        mixer = e * tokens * (2 * q + 2 * kv) / tp
        if m.qk_layernorm:
            mixer += e * tokens * (q + kv) / tp
        if gate_width(m):
            mixer += 2 * e * tokens * q / tp
    if m.num_experts is None:
        mlp = 3 * e * tokens * m.ffn_hidden_size / tp  # fc1 output (gate + up), SwiGLU output
    else:
        k, f = m.moe_router_topk, m.moe_ffn_hidden_size
        routed = k * tokens / sp * (e * h * etp + 3 * e * f)  # per token copy: fc1 input, fc1 out, act out
        router = 2 * 4 * tokens / sp * m.num_experts  # fp32 logits and probabilities
        shared = 3 * e * tokens * (m.moe_shared_expert_ffn_hidden_size or 0) / tp
        mlp = routed + router + shared
    return norm_side + mixer + mlp


def gdn_activation_bytes_per_token(m: Any, e: int = 2) -> float:
    """What one Gated DeltaNet mixer keeps for backward per token, over all its heads (divide by TP); see the
    module docstring for the tensors."""
    qk, v = gdn_widths(m)
    nv, dk = m.linear_num_value_heads, m.linear_key_head_dim
    conv = 2 * e * (2 * qk + v)  # conv input, pre-activation output
    l2norm = 2 * e * qk  # its inputs q, k
    kernel = 2 * e * nv * dk + e * v + (4 + e) * nv + e * 64 * nv  # q, k (value heads), v, g fp32, beta, WY matrix
    decay = 2 * 4 * nv  # softplus input and output, fp32
    gated_norm = 3 * e * v + 2 * 4 * v  # kernel output, norm output, out_proj input; gate and its SiLU in fp32
    return conv + l2norm + kernel + decay + gated_norm


def mtp_activation_bytes(m: Any, p: Any, seq_length: int, micro_batch: int, dtype_bytes: int = 2) -> float:
    """The last stage's MTP layers, per micro-batch: a full-attention layer each, the inputs of enorm, hnorm,
    eh_proj (both halves) and the final norm, and their own logits and softmax."""
    layers = _mtp_layers(m)
    if not layers:
        return 0.0
    sp = p.tensor_model_parallel_size if p.sequence_parallel else 1
    tokens = seq_length * micro_batch / p.context_parallel_size
    norms_and_proj = 5 * dtype_bytes * tokens * m.hidden_size / sp
    layer = layer_activation_bytes(m, p, seq_length, micro_batch, dtype_bytes)
    return layers * (layer + norms_and_proj + head_activation_bytes(m, p, seq_length, micro_batch))


def head_activation_bytes(m: Any, p: Any, seq_length: int, micro_batch: int) -> float:
    """The last stage's extra: logits in bf16 and the fp32 softmax the vocab-parallel loss keeps."""
    tokens = seq_length * micro_batch / p.context_parallel_size
    return 6 * tokens * m.vocab_size / p.tensor_model_parallel_size


@dataclass(frozen=True)
class StageMemory:
    pp_rank: int
    params: StageParams
    weights: float
    grads: float
    optimizer: float
    activations: float

    @property
    def total(self) -> float:
        return self.weights + self.grads + self.optimizer + self.activations


def stage_memory(
    m: Any, p: Any, pp_rank: int, *, seq_length: int, micro_batch: int, num_microbatches: int,
    dp: int, expert_dp: int, bf16: bool = True,
) -> StageMemory:
    params = stage_params(m, p, pp_rank)
    weight_bytes = 2 if bf16 else 4
    adam_bytes = 12 if bf16 else 8
    if p.use_distributed_optimizer:
        optimizer = adam_bytes * (params.dense / dp + params.expert / expert_dp)
    else:
        optimizer = adam_bytes * params.total
    chunks, per_chunk = in_flight_chunks(p, pp_rank, num_microbatches)
    layers_per_chunk = m.num_layers // p.pipeline_model_parallel_size // per_chunk
    e = 2 if bf16 else 4
    full = p.recompute_granularity == "full"
    layers = stage_layers(m, p, pp_rank)
    linear = sum(is_linear_layer(m, i) for i in layers)
    kinds = [(len(layers) - linear, False), (linear, True)]
    mean_layer = sum(n * layer_activation_bytes(m, p, seq_length, micro_batch, e, full, linear=kind)
                     for n, kind in kinds if n) / len(layers)
    activations = chunks * layers_per_chunk * mean_layer
    if full:  # plus one layer's whole activations while it is recomputed
        activations += max(layer_activation_bytes(m, p, seq_length, micro_batch, e, linear=kind)
                           for n, kind in kinds if n)
    if pp_rank == p.pipeline_model_parallel_size - 1:
        activations += head_activation_bytes(m, p, seq_length, micro_batch)
        activations += mtp_activation_bytes(m, p, seq_length, micro_batch, e)
    return StageMemory(
        pp_rank=pp_rank, params=params, weights=weight_bytes * params.total, grads=4 * params.total,
        optimizer=optimizer, activations=activations,
    )


def expert_data_parallel_size(p: Any, world_size: int) -> int:
    etp = p.expert_tensor_parallel_size or p.tensor_model_parallel_size
    return world_size // (etp * p.expert_model_parallel_size * p.pipeline_model_parallel_size)
