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
"""

from __future__ import annotations

import torch
from megatron.core.packed_seq_params import PackedSeqParams


def packed_seq_params(position_ids: torch.Tensor) -> PackedSeqParams:
    """The THD description of a micro-batch [b, s] whose documents start where ``position_ids`` is 0
    (every row starts one, as GPTDataset's reset position ids do)."""
    flat = position_ids.reshape(-1)
    starts = torch.nonzero(flat == 0).squeeze(1)
    end = torch.tensor([flat.numel()], device=flat.device)
    cu_seqlens = torch.cat([starts, end]).to(torch.int32)
    longest = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
    return PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu_seqlens, cu_seqlens_kv=cu_seqlens,
                           max_seqlen_q=longest, max_seqlen_kv=longest)


def pack(batch: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], PackedSeqParams]:
    """A micro-batch of [b, s] tensors as one packed sequence [1, b x s], and its document boundaries."""
    if int(batch["position_ids"][:, 0].max()) != 0:
        raise ValueError("document masking needs position ids restarted at every document and at every sample "
                         "start (GPTDatasetConfig.reset_position_ids=True)")
    params = packed_seq_params(batch["position_ids"])
    return {k: v.reshape(1, -1) for k, v in batch.items()}, params
