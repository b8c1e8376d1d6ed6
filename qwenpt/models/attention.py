"""Core attention on ``torch.nn.functional.scaled_dot_product_attention``.

megatron-core's local ``DotProductAttention`` materialises the [b, heads, s, s] score matrix.
Without Transformer Engine, this module takes its place in the local layer spec: same
constructor, same [s, b, heads, dim] tensors in and [s, b, hidden] out, causal, GQA without
repeating K/V, and whatever fused kernel torch picks (flash / memory-efficient / CPU flash).

Context parallelism (what TE's attention does on GPUs) is here too, in its all-gather form
(as in Llama 3's training): megatron-core gives each of the CP ranks two of 2 x CP sequence
chunks (i and 2 x CP - 1 - i, so causal work is balanced); K and V are gathered from the CP
group, and each local query chunk attends causally to every key up to its own position.

Packed sequences (document masking, :mod:`qwenpt.packing`): megatron-core hands over the "THD"
layout — [tokens, heads, dim] of the whole micro-batch and ``cu_seqlens`` in ``packed_seq_params`` —
and no [s, s] mask is ever built (measured against a block-diagonal mask in bench/document_mask.py).
On a GPU (bf16/fp16, no dropout, one CP rank) the whole micro-batch is one call of torch's
variable-length flash attention (``torch.nn.attention.varlen``, torch >= 2.11), ``cu_seqlens`` on the
device: one kernel per layer whatever the number of documents, as TE's THD attention. Elsewhere (the
CPU, where it is the fastest path; fp32; CP) each document is one causal fused-attention call on its
own slice, cut at the boundaries the loader computed as host ints (no read-back per layer). Under
context parallelism each rank holds two of the 2 x CP chunks of every (padded) document
(``cu_seqlens_q_padded``; :func:`qwenpt.packing.pack`): K and V are gathered once per layer, and each
document's local chunks attend as above, within that document only.
"""

from __future__ import annotations

import contextlib
import inspect
import math
from typing import Any, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from megatron.core import parallel_state, tensor_parallel
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig
from torch.nn.attention.bias import causal_lower_right

from qwenpt.models import dca
from qwenpt.config import ModelConfig

try:  # torch >= 2.11
    from torch.nn.attention.varlen import varlen_attn
except ImportError:  # pragma: no cover - older torch: one call per document
    varlen_attn = None
_VARLEN_ARGS = set(inspect.signature(varlen_attn).parameters) if varlen_attn is not None else set()


def varlen_available(device: torch.device, dtype: torch.dtype) -> bool:
    """torch's variable-length flash attention runs here: a CUDA device, bf16 or fp16, torch >= 2.11."""
    return varlen_attn is not None and device.type == "cuda" and dtype in (torch.bfloat16, torch.float16)


class _GatherContextParallel(torch.autograd.Function):
    """All-gather [b, h, s_local, d] from the CP group into [cp, b, h, s_local, d]; the backward
    sums every rank's gradient and keeps this rank's part (gloo has no reduce-scatter)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: Any) -> torch.Tensor:
        ctx.group = group
        parts = [torch.empty_like(x) for _ in range(group.size())]
        dist.all_gather(parts, x.contiguous(), group=group)
        return torch.stack(parts)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        grad = grad.contiguous()
        dist.all_reduce(grad, group=ctx.group)
        return grad[ctx.group.rank()], None


def _in_order(parts: torch.Tensor) -> torch.Tensor:
    """Every rank's two chunks [cp, b, h, 2L, d] -> the whole sequence [b, h, 2 x CP x L, d], in order."""
    cp = parts.shape[0]
    halves = parts.unflatten(3, (2, -1))  # [cp, b, h, 2, L, d]
    chunks = [halves[c, :, :, 0] if c < cp else halves[2 * cp - 1 - c, :, :, 1] for c in range(2 * cp)]
    return torch.cat(chunks, dim=2)


class SDPAttention(MegatronModule):
    # how packed documents run: "auto" (varlen where :func:`varlen_available`, else per document),
    # "varlen" or "per_document" (bench/step_budget.py sets "varlen" to count the GPU path on a CPU)
    packed_kernel = "auto"

    def __init__(
        self,
        config: TransformerConfig,
        layer_number: int,
        attn_mask_type: AttnMaskType,
        attention_type: str,
        attention_dropout: Optional[float] = None,
        softmax_scale: Optional[float] = None,
        cp_comm_type: Optional[str] = None,
        pg_collection: Any = None,
    ) -> None:
        super().__init__(config=config)
        self.cp_group = parallel_state.get_context_parallel_group() if config.context_parallel_size > 1 else None
        if attn_mask_type != AttnMaskType.causal:
            raise ValueError(f"SDPAttention supports causal masks only, got {attn_mask_type}")
        self.head_dim = config.kv_channels
        self.softmax_scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(self.head_dim)
        self.dropout = config.attention_dropout if attention_dropout is None else attention_dropout
        self.dual_chunk: Optional[dca.DualChunk] = None  # evaluation-time DCA (model.dual_chunk_attention)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: Optional[torch.Tensor],
        attn_mask_type: Optional[AttnMaskType] = None,
        attention_bias: Optional[torch.Tensor] = None,
        packed_seq_params: Any = None,
    ) -> torch.Tensor:
        if attention_bias is not None:
            raise ValueError("attention bias needs Transformer Engine's attention")
        dropout = self.dropout if self.training else 0.0
        if packed_seq_params is not None:
            return self._documents(query, key, value, packed_seq_params, dropout)
        sq, b, heads, dim = query.shape
        # [s, b, h, d] -> [b, h, s, d]
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))
        gqa = k.shape[1] != heads
        if self.dual_chunk is not None and not self.training:
            if self.cp_group is not None:
                raise ValueError("model.dual_chunk_attention evaluates in one context-parallel rank; set context_parallel_size=1")
            out = dca.attention(q, k, v, self.dual_chunk, self.softmax_scale)
            return out.permute(2, 0, 1, 3).reshape(sq, b, heads * dim)
        with self._rng(dropout):
            if self.cp_group is None:
                out = F.scaled_dot_product_attention(
                    q, k, v, dropout_p=dropout, is_causal=True, scale=self.softmax_scale, enable_gqa=gqa
                )
            else:
                out = self._context_parallel(q, self._gather(k), self._gather(v), dropout, gqa)
        # [b, h, s, d] -> [s, b, h*d]
        return out.permute(2, 0, 1, 3).reshape(sq, b, heads * dim)

    def _rng(self, dropout: float) -> Any:
        return tensor_parallel.get_cuda_rng_tracker().fork() if dropout > 0 else contextlib.nullcontext()

    def _gather(self, x: torch.Tensor) -> torch.Tensor:
        return _GatherContextParallel.apply(x, self.cp_group)

    def _documents(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, packed: Any,
                   dropout: float) -> torch.Tensor:
        """THD: [t, heads, dim] of the packed documents in, [t, heads x dim] out; each document attends
        causally to itself only."""
        if packed.qkv_format != "thd":
            raise ValueError(f"packed sequences in the {packed.qkv_format!r} format are not supported; use thd")
        t, heads, dim = query.shape
        cp = 1 if self.cp_group is None else self.cp_group.size()
        if cp > 1 and packed.cu_seqlens_q_padded is None:
            raise ValueError("packed sequences under context parallelism need cu_seqlens_q_padded (qwenpt.packing.pack)")
        if self._one_call(query, dropout, cp):
            return self._varlen(query, key, value, packed).reshape(t, heads * dim)
        bounds = getattr(packed, "local_bounds", None)  # host ints from the loader (qwenpt.packing.plan)
        if bounds is None:
            cu = packed.cu_seqlens_q if packed.cu_seqlens_q_padded is None else packed.cu_seqlens_q_padded
            bounds = (cu // cp).tolist()  # this rank's share of each document (a read-back per layer)
        q, k, v = (x.transpose(0, 1).unsqueeze(0) for x in (query, key, value))  # [1, h, t, d]
        gqa = k.shape[1] != heads
        with self._rng(dropout):
            if cp > 1:
                k_parts, v_parts = self._gather(k), self._gather(v)  # [cp, 1, h, t, d]
                outs = [self._context_parallel(q[:, :, a:b], k_parts[..., a:b, :], v_parts[..., a:b, :], dropout, gqa)
                        for a, b in zip(bounds[:-1], bounds[1:])]
            else:
                outs = [F.scaled_dot_product_attention(
                    q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], dropout_p=dropout, is_causal=True,
                    scale=self.softmax_scale, enable_gqa=gqa,
                ) for a, b in zip(bounds[:-1], bounds[1:])]
        return torch.cat(outs, dim=2)[0].transpose(0, 1).reshape(t, heads * dim)

    def _one_call(self, query: torch.Tensor, dropout: float, cp: int) -> bool:
        if self.packed_kernel == "per_document" or cp > 1 or dropout > 0:
            return False
        return self.packed_kernel == "varlen" or varlen_available(query.device, query.dtype)

    def _varlen(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, packed: Any) -> torch.Tensor:
        """Every document of the micro-batch in one causal variable-length flash-attention call [t, h, d]."""
        kwargs: dict[str, Any] = {"scale": self.softmax_scale}
        if key.shape[1] != query.shape[1]:
            if "enable_gqa" in _VARLEN_ARGS:  # torch >= 2.12
                kwargs["enable_gqa"] = True
            else:  # torch 2.11: K/V heads repeated for their query groups
                groups = query.shape[1] // key.shape[1]
                key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
        if "window_size" in _VARLEN_ARGS:
            kwargs["window_size"] = (-1, 0)  # causal
        else:
            kwargs["is_causal"] = True
        cu, longest = packed.cu_seqlens_q, packed.max_seqlen_q
        return varlen_attn(query, key, value, cu, cu, longest, longest, **kwargs)

    def _context_parallel(self, q: torch.Tensor, k_parts: torch.Tensor, v_parts: torch.Tensor, dropout: float,
                          gqa: bool) -> torch.Tensor:
        """This rank's two chunks of queries [b, h, 2L, d] against every rank's K/V chunks [cp, b, h, 2L, d]."""
        cp, rank = self.cp_group.size(), self.cp_group.rank()
        k_all, v_all = _in_order(k_parts), _in_order(v_parts)
        chunk = q.shape[2] // 2
        outs = []
        for half, c in enumerate((rank, 2 * cp - 1 - rank)):  # the global indices of the local chunks
            end = (c + 1) * chunk  # keys up to the end of this chunk; causal within it (lower right)
            outs.append(
                F.scaled_dot_product_attention(
                    q[:, :, half * chunk:(half + 1) * chunk], k_all[:, :, :end], v_all[:, :, :end],
                    attn_mask=causal_lower_right(chunk, end), dropout_p=dropout, scale=self.softmax_scale,
                    enable_gqa=gqa,
                )
            )
        return torch.cat(outs, dim=2)


def attach_dual_chunk(chunk: torch.nn.Module, m: ModelConfig) -> None:
    """Give every core attention of a GPTModel chunk the DCA settings and the model's RoPE frequencies."""
    chunk_size, local_size = dca.sizes(m)
    inv_freq = chunk.rotary_pos_emb.inv_freq.detach().float().cpu()
    for module in chunk.modules():
        if isinstance(module, SDPAttention):
            module.dual_chunk = dca.DualChunk(int(chunk_size), int(local_size), inv_freq)
