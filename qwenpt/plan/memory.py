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

Not counted: the CUDA context, NCCL buffers and allocator fragmentation — the planner keeps a
headroom for them (``--headroom``, 10% by default).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from qwenpt.models.size import attention_widths, head_dim

GiB = 1024**3


@dataclass(frozen=True)
class StageParams:
    """Parameters held by one GPU of a pipeline stage (every TP/EP rank of a stage holds as many)."""

    dense: int  # reduced over data parallel (x context parallel) replicas
    expert: int  # routed experts: reduced over expert-data-parallel replicas

    @property
    def total(self) -> int:
        return self.dense + self.expert


def _layer_dense_params(m: Any, tp: int) -> int:
    """One layer's non-expert parameters on one tensor-parallel rank."""
    q, kv = attention_widths(m)
    qkv_out = q + 2 * kv
    attention = m.hidden_size * qkv_out // tp + (qkv_out // tp if m.qkv_bias else 0)
    attention += q * m.hidden_size // tp
    norms = 2 * m.hidden_size  # input and pre-MLP RMSNorm, replicated
    if m.qk_layernorm:
        norms += 2 * head_dim(m)  # QK-norm over one head's width, replicated
    if m.num_experts is None:
        return attention + norms + 3 * m.hidden_size * m.ffn_hidden_size // tp
    moe = m.num_experts * m.hidden_size  # router, replicated
    if m.moe_shared_expert_ffn_hidden_size:
        moe += 3 * m.hidden_size * m.moe_shared_expert_ffn_hidden_size // tp + m.hidden_size  # + its gate
    return attention + norms + moe


def _layer_expert_params(m: Any, ep: int, etp: int) -> int:
    if m.num_experts is None:
        return 0
    return (m.num_experts // ep) * 3 * m.hidden_size * m.moe_ffn_hidden_size // etp


def stage_params(m: Any, p: Any, pp_rank: int) -> StageParams:
    """Parameters on one GPU of pipeline stage ``pp_rank`` (all its virtual chunks together)."""
    tp, pp = p.tensor_model_parallel_size, p.pipeline_model_parallel_size
    etp = p.expert_tensor_parallel_size or tp
    layers = m.num_layers // pp
    dense = layers * _layer_dense_params(m, tp)
    expert = layers * _layer_expert_params(m, p.expert_model_parallel_size, etp)
    embedding = m.vocab_size * m.hidden_size // tp
    if pp_rank == 0:
        dense += embedding
    if pp_rank == pp - 1:
        dense += m.hidden_size  # final norm
        # the output layer; a tied one is the input embedding on one stage, a synced copy on two
        if not m.tie_embeddings or pp > 1:
            dense += embedding
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
    m: Any, p: Any, seq_length: int, micro_batch: int, dtype_bytes: int = 2, full_recompute: bool = False
) -> float:
    """Activations one transformer layer keeps for backward, for one micro-batch, on one GPU
    (``full_recompute``: only its input; the rest is recomputed in the backward pass)."""
    tp, cp = p.tensor_model_parallel_size, p.context_parallel_size
    etp = p.expert_tensor_parallel_size or tp
    h = m.hidden_size
    tokens = seq_length * micro_batch / cp
    if full_recompute:
        return dtype_bytes * tokens * h / (tp if p.sequence_parallel else 1)
    sp = tp if p.sequence_parallel else 1
    q, kv = attention_widths(m)
    e = dtype_bytes  # bytes per element
    # replicated across TP unless SP: the two norm inputs and the two column-parallel inputs
    norm_side = 4 * e * tokens * h / sp
    # split by TP: q, k, v after RoPE, attention output (flash attention: no scores kept); with
    # QK-norm also its inputs, q and k before the norm
    attention = e * tokens * (2 * q + 2 * kv) / tp
    if m.qk_layernorm:
        attention += e * tokens * (q + kv) / tp
    if m.num_experts is None:
        mlp = 3 * e * tokens * m.ffn_hidden_size / tp  # fc1 output (gate + up), SwiGLU output
    else:
        k, f = m.moe_router_topk, m.moe_ffn_hidden_size
        routed = k * tokens / sp * (e * h * etp + 3 * e * f)  # per token copy: fc1 input, fc1 out, act out
        router = 2 * 4 * tokens / sp * m.num_experts  # fp32 logits and probabilities
        shared = 3 * e * tokens * (m.moe_shared_expert_ffn_hidden_size or 0) / tp
        mlp = routed + router + shared
    return norm_side + attention + mlp


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
    activations = chunks * layers_per_chunk * layer_activation_bytes(m, p, seq_length, micro_batch, e, full)
    if full:  # plus one layer's whole activations while it is recomputed
        activations += layer_activation_bytes(m, p, seq_length, micro_batch, e)
    if pp_rank == p.pipeline_model_parallel_size - 1:
        activations += head_activation_bytes(m, p, seq_length, micro_batch)
    return StageMemory(
        pp_rank=pp_rank, params=params, weights=weight_bytes * params.total, grads=4 * params.total,
        optimizer=optimizer, activations=activations,
    )


def expert_data_parallel_size(p: Any, world_size: int) -> int:
    etp = p.expert_tensor_parallel_size or p.tensor_model_parallel_size
    return world_size // (etp * p.expert_model_parallel_size * p.pipeline_model_parallel_size)
