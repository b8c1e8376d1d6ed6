"""Document masking in packed pretraining samples (``data.document_mask``).

A pretraining sample is ``seq_length`` tokens cut from the stream of documents, each ending in the
tokenizer's EOD (data_pipeline/prepare.py). With document masking on, megatron-core's GPTDataset
restarts ``position_ids`` after every EOD (``reset_position_ids``; the EOD belongs to the document it
ends, as in Megatron-LM) and masks the loss at each EOD (``eod_mask_loss``: its label is the next
document's first token). Here those position ids become the packed-sequence ("THD") description
megatron-core takes: the micro-batch flattened into one sequence of b x s tokens, and
``cu_seqlens``, the cumulative document lengths.

Where the work happens decides the GPU step's speed (docs/performance.md): every boundary, length and
index is computed on the host, from the loader's CPU tensors, by :class:`Collate` (in the loader's
worker processes when ``data.num_workers`` > 0), and travels as pinned tensors plus Python ints.
:func:`pack` then only copies and gathers on the device, so nothing inside the step waits for the GPU:
attention gets the boundaries as ints (:attr:`DocumentPack.local_bounds`) and RoPE gets each token's
position (:func:`positions_of`) instead of reading ``cu_seqlens`` back per layer.

Context parallelism splits every document, not the sequence, as megatron-core and Transformer Engine
do for THD (``get_thd_batch_on_this_cp_rank`` / ``thd_get_partitioned_indices``): each document is
padded to a multiple of 2 x CP tokens (``cu_seqlens_q_padded``; the padding is loss-masked and comes
after the document's tokens, so no real token sees it) and cut into 2 x CP chunks, of which CP rank
r keeps chunks r and 2 x CP - 1 - r: every rank gets the same share of each document's causal work.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from megatron.core.packed_seq_params import PackedSeqParams
from torch.utils.data import default_collate

_POSITIONS = "qwenpt_positions"  # the attribute of a cu_seqlens tensor that holds its tokens' positions


@dataclass
class DocumentPack(PackedSeqParams):
    """megatron-core's THD description plus this rank's document boundaries as host ints (in the
    layout attention sees: under CP, each padded document's local share)."""

    local_bounds: Optional[tuple[int, ...]] = None


def document_bounds(position_ids: torch.Tensor) -> torch.Tensor:
    """``cu_seqlens`` (int32, on ``position_ids``' device) of a micro-batch [b, s] whose documents start
    where ``position_ids`` is 0. Called on the host: on a GPU tensor each step here would be a sync."""
    if int(position_ids[:, 0].max()) != 0:
        raise ValueError("document masking needs position ids restarted at every document and at every sample "
                         "start (GPTDatasetConfig.reset_position_ids=True)")
    flat = position_ids.reshape(-1)
    starts = torch.nonzero(flat == 0).squeeze(1)
    return torch.cat([starts, torch.tensor([flat.numel()], device=flat.device)]).to(torch.int32)


def partitioned_indices(cu_seqlens_padded: torch.Tensor, cp_size: int, cp_rank: int) -> torch.Tensor:
    """The padded-layout token indices CP rank ``cp_rank`` keeps: chunks r and 2 x CP - 1 - r of every
    document (what Transformer Engine's ``thd_get_partitioned_indices`` returns)."""
    out = []
    for a, b in zip(cu_seqlens_padded[:-1].tolist(), cu_seqlens_padded[1:].tolist()):
        chunk = (b - a) // (2 * cp_size)
        for c in (cp_rank, 2 * cp_size - 1 - cp_rank):
            out.append(torch.arange(a + c * chunk, a + (c + 1) * chunk))
    return torch.cat(out).to(cu_seqlens_padded.device)


def plan(position_ids: torch.Tensor, cp_size: int = 1, cp_rank: int = 0, sequence_parallel_size: int = 1) -> dict:
    """Everything :func:`pack` needs of a micro-batch's documents, computed on the host from its CPU
    ``position_ids`` [b, s]: tensors (pinned by the loader) and ints. With CP > 1, which flat token
    each of this rank's positions reads (``source``; padding reads token 0), which are real, and their
    positions within their documents. The padded total is a multiple of 2 x CP x
    ``sequence_parallel_size`` (sequence parallelism splits each rank's tokens over the tensor-parallel
    ranks); the last document takes that extra padding."""
    cu_seqlens = document_bounds(position_ids)
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    if cp_size == 1:
        return {"cu_seqlens": cu_seqlens, "max_seqlen": int(lengths.max()), "bounds": tuple(cu_seqlens.tolist())}
    padded = (lengths + 2 * cp_size - 1) // (2 * cp_size) * (2 * cp_size)
    padded[-1] += -int(padded.sum()) % (2 * cp_size * sequence_parallel_size)
    cu_padded = torch.cat([padded.new_zeros(1), padded.cumsum(0)])
    # where each padded-layout position reads from in the flat micro-batch (-1: padding)
    doc = torch.repeat_interleave(torch.arange(len(padded)), padded)
    offset = torch.arange(int(cu_padded[-1])) - cu_padded[doc]
    real = offset < lengths[doc]
    source = torch.where(real, cu_seqlens[doc].long() + offset, 0)
    keep = partitioned_indices(cu_padded.to(torch.int32), cp_size, cp_rank)
    return {
        "cu_seqlens": cu_seqlens, "cu_seqlens_padded": cu_padded.to(torch.int32), "max_seqlen": int(padded.max()),
        "bounds": tuple((cu_padded // cp_size).tolist()), "source": source[keep], "real": real[keep],
        "positions": offset[keep],
    }


class Collate:
    """The loader's collate function with document masking: the default collation plus the micro-batch's
    :func:`plan` under key ``"pack"`` (a plain class, so worker processes can pickle it)."""

    def __init__(self, cp_size: int = 1, cp_rank: int = 0, sequence_parallel_size: int = 1) -> None:
        self.cp_size, self.cp_rank, self.sp = cp_size, cp_rank, sequence_parallel_size

    def __call__(self, samples: list) -> dict:
        batch = default_collate(samples)
        batch["pack"] = plan(batch["position_ids"], self.cp_size, self.cp_rank, self.sp)
        return batch


def positions_of(cu_seqlens: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """The position within its document of each packed token, as :func:`pack` attached it to the
    ``cu_seqlens`` tensor megatron-core hands to RoPE (None for any other tensor)."""
    return getattr(cu_seqlens, _POSITIONS, None)


def _to(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    return x.to(device, non_blocking=True)


def pack(batch: dict[str, torch.Tensor], cp_group: Optional[Any] = None, sequence_parallel_size: int = 1,
         micro_plan: Optional[dict] = None) -> tuple[dict[str, torch.Tensor], DocumentPack]:
    """A micro-batch of [b, s] tensors (on the device) as one packed sequence [1, t] and its document
    boundaries; with a context-parallel group of more than one rank, this rank's load-balanced part of
    every document. ``micro_plan``: the loader's :func:`plan` of this micro-batch (else made here, which
    reads the position ids back to the host)."""
    cp = cp_group.size() if cp_group is not None else 1
    if micro_plan is None:
        micro_plan = plan(batch["position_ids"].cpu(), cp, cp_group.rank() if cp > 1 else 0, sequence_parallel_size)
    device = batch["tokens"].device
    longest = micro_plan["max_seqlen"]
    if cp == 1:
        flat = {k: v.reshape(1, -1) for k, v in batch.items()}
        cu = _to(micro_plan["cu_seqlens"], device)
        setattr(cu, _POSITIONS, flat["position_ids"][0])
        params = DocumentPack(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, max_seqlen_q=longest,
                              max_seqlen_kv=longest, local_bounds=micro_plan["bounds"])
        return flat, params
    source, real = _to(micro_plan["source"], device), _to(micro_plan["real"], device)
    flat = {}
    for key, value in batch.items():
        if key == "position_ids":
            v = _to(micro_plan["positions"], device).to(value.dtype)  # padding continues its document's positions
        else:
            v = value.reshape(-1)[source]
            if key != "tokens":
                v = torch.where(real, v, torch.zeros_like(v))  # padding: no loss
        flat[key] = v.unsqueeze(0)
    cu_real, cu_padded = _to(micro_plan["cu_seqlens"], device), _to(micro_plan["cu_seqlens_padded"], device)
    setattr(cu_padded, _POSITIONS, flat["position_ids"][0])
    return flat, DocumentPack(
        qkv_format="thd", cu_seqlens_q=cu_real, cu_seqlens_kv=cu_real, cu_seqlens_q_padded=cu_padded,
        cu_seqlens_kv_padded=cu_padded, max_seqlen_q=longest, max_seqlen_kv=longest,
        local_bounds=micro_plan["bounds"],
    )


def packed_seq_params(position_ids: torch.Tensor) -> DocumentPack:
    """The THD description of a micro-batch [b, s] (every row starts a document, as GPTDataset's reset
    position ids do)."""
    return pack({"tokens": position_ids, "position_ids": position_ids})[1]
