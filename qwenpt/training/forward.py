"""One micro-batch through the model: the batch on this rank, the forward step megatron-core's schedules
call, the loss it reduces, and the loaders that feed it (training and evaluation alike)."""

from __future__ import annotations

import inspect
from functools import partial
from typing import Any, Iterator, Optional

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.utils import get_attr_wrapped_model, get_batch_on_this_cp_rank

from qwenpt import eval_positions, packing
from qwenpt.data import make_loader


def loss_func(loss_mask: torch.Tensor, output_tensor: torch.Tensor, positions: Optional[tuple] = None):
    """Sum of token losses and the token count: megatron-core divides by the global count.
    ``positions`` (position_ids, buckets, seq_length): also the sums per position bucket (evaluation)."""
    losses = output_tensor.float().view(-1)
    mask = loss_mask.float().view(-1)
    loss = torch.sum(losses * mask)
    tokens = mask.sum().to(torch.int)
    reported = {"lm loss": torch.stack([loss.detach(), tokens.detach().float()])}
    if positions is not None:
        reported[eval_positions.KEY] = eval_positions.bucket_sums(losses.detach(), mask, *positions)
    return loss, tokens, reported


_SEQUENCE_KEYS = ("tokens", "labels", "loss_mask", "position_ids")


def _this_cp_rank(batch: dict) -> dict:
    """This rank's 2 of the 2 x CP chunks of every sequence (megatron-core's load-balanced split).
    megatron-core >= 0.17 requires ``is_hybrid_cp`` and needs the CP group passed explicitly."""
    kwargs: dict[str, Any] = {"cp_group": parallel_state.get_context_parallel_group()}
    if "is_hybrid_cp" in inspect.signature(get_batch_on_this_cp_rank).parameters:
        kwargs["is_hybrid_cp"] = False
    return get_batch_on_this_cp_rank(batch, **kwargs)


def forward_step(device: torch.device, data_iterator: Optional[Iterator[dict]], model: torch.nn.Module,
                 document_mask: bool = False, position_buckets: Optional[tuple[int, int]] = None):
    if data_iterator is None:  # a middle pipeline stage: activations come from the previous stage
        return model(None, None, None), partial(loss_func, None)
    sample = next(data_iterator)
    batch = {k: sample[k].to(device, non_blocking=True) for k in _SEQUENCE_KEYS}
    packed = None
    if document_mask:  # one packed sequence of the micro-batch's documents, CP-split per document (qwenpt/packing.py)
        batch, packed = packing.pack(batch, parallel_state.get_context_parallel_group(), micro_plan=sample["pack"])
    else:
        batch = _this_cp_rank(batch)
    labels = batch["labels"] if get_attr_wrapped_model(model, "post_process") else None
    # multi-token prediction computes its own loss in the model: it needs the mask (EOD, CP padding) too
    loss_mask = batch["loss_mask"] if labels is not None and get_attr_wrapped_model(model, "mtp_process") else None
    output = model(batch["tokens"], batch["position_ids"], None, labels=labels, packed_seq_params=packed,
                   **({"loss_mask": loss_mask} if loss_mask is not None else {}))
    positions = (batch["position_ids"], *position_buckets) if position_buckets else None
    return output, partial(loss_func, batch["loss_mask"], positions=positions)


def reduce_sums(loss_dicts: list[dict], device: torch.device, key: str = "lm loss", size: int = 2) -> torch.Tensor:
    """The global sum of the micro-batches' ``key`` tensors, known on every rank (they are computed on
    the last stage: summed over data + context parallel ranks, then over the pipeline)."""
    total = torch.zeros(size, dtype=torch.float64, device=device)
    for d in loss_dicts:
        total += d[key].to(total)
    dist.all_reduce(total, group=parallel_state.get_data_parallel_group(with_context_parallel=True))
    dist.all_reduce(total, group=parallel_state.get_pipeline_model_parallel_group())
    return total


def reduce_loss(loss_dicts: list[dict], device: torch.device) -> tuple[float, int]:
    """Global mean token loss of a step, known on every rank."""
    loss_sum, tokens = reduce_sums(loss_dicts, device).tolist()  # one read-back for both
    return loss_sum / max(tokens, 1.0), int(tokens)


def micro_batch_iterators(model: list, dataset: Any, consumed: int, mbs: int, workers: int, document_mask: bool = False) -> list:
    """One loader per model chunk that reads data (first or last stage, or every stage with document
    masking: each stage needs the micro-batch's document boundaries, which the loader computes on the
    host, :class:`qwenpt.packing.Collate`); None for the others."""
    collate = None
    if document_mask:
        config = get_attr_wrapped_model(model[0], "config")
        collate = packing.Collate(parallel_state.get_context_parallel_world_size(),
                                  parallel_state.get_context_parallel_rank(),
                                  config.tensor_model_parallel_size if config.sequence_parallel else 1)
    its = []
    for chunk in model:
        reads = document_mask or get_attr_wrapped_model(chunk, "pre_process") or get_attr_wrapped_model(chunk, "post_process")
        its.append(make_loader(dataset, consumed, mbs, workers, collate) if reads else None)
    return its
