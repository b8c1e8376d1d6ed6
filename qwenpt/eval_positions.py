"""Validation loss by position: does the model use its long context?

The sequence is cut into ``train.eval_position_buckets`` equal spans (8: per 1/8 of ``seq_length``)
and each span's mean token loss is reported: a model that uses long context has lower loss late in
the sequence than early. A token's position is its ``position_ids`` entry: its index in the sample,
or, with document masking, its index in its own document (what it can attend to). Nothing extra
runs: the loss function already holds per-token losses; they are summed per bucket on the last
pipeline stage and reduced with the loss itself (data + context parallel, then pipeline groups).
"""

from __future__ import annotations

from typing import Optional

import torch

KEY = "position loss"


def bucket_sums(losses: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, buckets: int,
                seq_length: int) -> torch.Tensor:
    """[loss sum per bucket ..., token count per bucket ...] of one micro-batch (2 x ``buckets`` values)."""
    index = (positions.reshape(-1).long() * buckets // seq_length).clamp(0, buckets - 1)
    weights = mask.reshape(-1).float()
    sums = torch.zeros(2, buckets, dtype=torch.float32, device=losses.device)
    sums[0].index_add_(0, index, losses.reshape(-1).float() * weights)
    sums[1].index_add_(0, index, weights)
    return sums.reshape(-1)


def bucket_means(total: torch.Tensor) -> list[Optional[float]]:
    """Mean loss per bucket from summed :func:`bucket_sums` (None for a bucket with no tokens)."""
    sums, counts = total.double().reshape(2, -1)
    return [float(s / c) if c > 0 else None for s, c in zip(sums.tolist(), counts.tolist())]


def bounds(buckets: int, seq_length: int) -> list[int]:
    """Each bucket's first position (the last one runs to ``seq_length``)."""
    return [i * seq_length // buckets for i in range(buckets)]
