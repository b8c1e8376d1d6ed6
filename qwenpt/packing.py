"""Document masking in packed pretraining samples (``data.document_mask``).

A pretraining sample is ``seq_length`` tokens cut from the stream of documents, each ending in the
tokenizer's EOD (data_pipeline/prepare.py). With document masking on, megatron-core's GPTDataset
restarts ``position_ids`` after every EOD (``reset_position_ids``; the EOD belongs to the document it
ends, as in Megatron-LM) and masks the loss at each EOD (``eod_mask_loss``: its label is the next
document's first token). Here those position ids become the packed-sequence ("THD") description
megatron-core takes: the micro-batch flattened into one sequence of b x s tokens, and
``cu_seqlens``, the cumulative document lengths. Transformer Engine's attention then runs the
documents without a mask; on the CPU, :class:`qwenpt.models.attention.SDPAttention` runs one fused
attention call per document. megatron-core's packed RoPE restarts positions at each document.

Context parallelism splits every document, not the sequence, as megatron-core and Transformer Engine
do for THD (``get_thd_batch_on_this_cp_rank`` / ``thd_get_partitioned_indices``): each document is
padded to a multiple of 2 x CP tokens (``cu_seqlens_q_padded``; the padding is loss-masked and comes
after the document's tokens, so no real token sees it) and cut into 2 x CP chunks, of which CP rank
r keeps chunks r and 2 x CP - 1 - r: every rank gets the same share of each document's causal work.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from megatron.core.packed_seq_params import PackedSeqParams


def _boundaries(position_ids: torch.Tensor) -> torch.Tensor:
    """``cu_seqlens`` of a micro-batch [b, s] whose documents start where ``position_ids`` is 0."""
    if int(position_ids[:, 0].max()) != 0:
        raise ValueError("document masking needs position ids restarted at every document and at every sample "
                         "start (GPTDatasetConfig.reset_position_ids=True)")
    flat = position_ids.reshape(-1)
    starts = torch.nonzero(flat == 0).squeeze(1)
    return torch.cat([starts, torch.tensor([flat.numel()], device=flat.device)]).to(torch.int32)


def packed_seq_params(position_ids: torch.Tensor) -> PackedSeqParams:
    """The THD description of a micro-batch [b, s] (every row starts a document, as GPTDataset's reset
    position ids do)."""
    cu_seqlens = _boundaries(position_ids)
    longest = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
    return PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu_seqlens, cu_seqlens_kv=cu_seqlens,
                           max_seqlen_q=longest, max_seqlen_kv=longest)


def partitioned_indices(cu_seqlens_padded: torch.Tensor, cp_size: int, cp_rank: int) -> torch.Tensor:
    """The padded-layout token indices CP rank ``cp_rank`` keeps: chunks r and 2 x CP - 1 - r of every
    document (what Transformer Engine's ``thd_get_partitioned_indices`` returns)."""
    out = []
    for a, b in zip(cu_seqlens_padded[:-1].tolist(), cu_seqlens_padded[1:].tolist()):
        chunk = (b - a) // (2 * cp_size)
        for c in (cp_rank, 2 * cp_size - 1 - cp_rank):
            out.append(torch.arange(a + c * chunk, a + (c + 1) * chunk))
    return torch.cat(out).to(cu_seqlens_padded.device)


def pack(batch: dict[str, torch.Tensor], cp_group: Optional[Any] = None,
         sequence_parallel_size: int = 1) -> tuple[dict[str, torch.Tensor], PackedSeqParams]:
    """A micro-batch of [b, s] tensors as one packed sequence [1, t] and its document boundaries; with a
    context-parallel group of more than one rank, this rank's load-balanced part of every document. The
    padded total is a multiple of 2 x CP x ``sequence_parallel_size`` (sequence parallelism splits each
    rank's tokens over the tensor-parallel ranks); the last document takes that extra padding."""
    cp = cp_group.size() if cp_group is not None else 1
    if cp == 1:
        params = packed_seq_params(batch["position_ids"])
        return {k: v.reshape(1, -1) for k, v in batch.items()}, params
    cu_seqlens = _boundaries(batch["position_ids"])
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    padded = (lengths + 2 * cp - 1) // (2 * cp) * (2 * cp)
    padded[-1] += -int(padded.sum()) % (2 * cp * sequence_parallel_size)
    cu_padded = torch.cat([padded.new_zeros(1), padded.cumsum(0)])
    # where each padded-layout position reads from in the flat micro-batch (-1: padding)
    doc = torch.repeat_interleave(torch.arange(len(padded), device=padded.device), padded)
    offset = torch.arange(int(cu_padded[-1]), device=padded.device) - cu_padded[doc]
    real = offset < lengths[doc]
    source = torch.where(real, cu_seqlens[doc].long() + offset, 0)
    keep = partitioned_indices(cu_padded.to(torch.int32), cp, cp_group.rank())
    source, real, offset = source[keep], real[keep], offset[keep]
    flat = {}
    for key, value in batch.items():
        v = value.reshape(-1)[source]
        if key == "position_ids":
            v = offset.to(v.dtype)  # padding continues its document's positions
        elif key != "tokens":
            v = torch.where(real, v, torch.zeros_like(v))  # padding: no loss
        flat[key] = v.unsqueeze(0)
    cu_real = torch.cat([lengths.new_zeros(1), lengths.cumsum(0)]).to(torch.int32)
    longest = int(padded.max())
    return flat, PackedSeqParams(
        qkv_format="thd", cu_seqlens_q=cu_real, cu_seqlens_kv=cu_real, cu_seqlens_q_padded=cu_padded.to(torch.int32),
        cu_seqlens_kv_padded=cu_padded.to(torch.int32), max_seqlen_q=longest, max_seqlen_kv=longest,
    )
