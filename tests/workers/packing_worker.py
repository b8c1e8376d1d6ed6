"""Document masking under a parallel layout: ``torchrun --nproc_per_node 2 tests/workers/packing_worker.py TP SP CP [OUT]``.

Two samples of 64 tokens holding five documents (10, 24, 30 | 40, 24: so each also runs alone under sequence
parallelism, and under CP 2 some need padding to a multiple of 4), their position ids and loss mask made by
megatron-core's GPTDataset function with reset_position_ids / eod_mask_loss.

- CP 1: runs the packed micro-batch and each document alone on the same weights, and prints (from global
  rank 0) one JSON line with the max differences of per-token losses and of every gradient (SP-partial norm
  gradients summed over TP first, as megatron-core's finalize step does).
- CP 2: runs the packed micro-batch split per document over the CP ranks (:func:`qwenpt.packing.pack`)
  and saves to OUT (rank 0) the weights, the per-token losses in sample order (gathered from both ranks)
  and the gradients summed over CP (as DDP's all-reduce over DP x CP does); the test runs each document
  alone on those weights in one process.
"""

import json
import sys

import torch
import torch.distributed as dist
import yaml
from megatron.core import parallel_state
from megatron.core.datasets.gpt_dataset import _get_ltor_masks_and_position_ids

from qwenpt import distributed
from qwenpt.config import ModelConfig, ParallelConfig
from qwenpt.models import build_model
from qwenpt.packing import pack

EOD = 0
DOCS = [[10, 24, 30], [40, 24]]  # per sample; the last document of sample 0 is cut (no EOD)


def batch() -> dict:
    g = torch.Generator().manual_seed(5)
    rows = {k: [] for k in ("tokens", "labels", "loss_mask", "position_ids")}
    for r, lengths in enumerate(DOCS):
        text = torch.randint(1, 8192, (65,), generator=g)
        for end in torch.tensor(lengths).cumsum(0).tolist():
            if r == 1 or end < 64:
                text[end - 1] = EOD
        tokens, labels = text[:-1], text[1:]
        _, loss_mask, position_ids = _get_ltor_masks_and_position_ids(tokens, EOD, True, False, True, False)
        for k, v in zip(rows, (tokens, labels, loss_mask, position_ids)):
            rows[k].append(v)
    return {k: torch.stack(v) for k, v in rows.items()}


def alone(model, flat: dict, bounds: list[int], grads) -> tuple:
    """Per-token losses and gradients of each document of ``flat`` (between ``bounds``) run alone."""
    mask = flat["loss_mask"][0]
    out = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        loss = model(flat["tokens"][:, a:b], torch.arange(b - a).unsqueeze(0), None, labels=flat["labels"][:, a:b])[0]
        (loss * mask[a:b]).sum().backward()
        out.append(loss.detach())
    return torch.cat(out), grads()


def packed_and_alone(model, flat: dict, params, grads) -> tuple:
    """Per-token losses and gradients of the packed micro-batch, then of each document run alone on the
    same weights; ``grads()`` collects and zeroes the gradients."""
    packed = model(flat["tokens"], flat["position_ids"], None, labels=flat["labels"], packed_seq_params=params)[0]
    (packed * flat["loss_mask"][0]).sum().backward()
    packed_grads = grads()
    bounds = params.cu_seqlens_q.tolist()
    alone_losses, alone_grads = alone(model, flat, bounds, grads)
    return packed.detach(), alone_losses, packed_grads, alone_grads, len(bounds) - 1


def _context_parallel(model, grads, out: str) -> None:
    """The packed micro-batch under CP: per-token losses back in sample order, gradients summed over CP."""
    group = parallel_state.get_context_parallel_group()
    whole = batch()
    whole["index"] = torch.arange(whole["tokens"].numel()).view_as(whole["tokens"])
    whole["real"] = torch.ones_like(whole["tokens"])  # pack() zeroes it on padding
    local, params = pack(dict(whole), group)
    losses = model(local["tokens"], local["position_ids"], None, labels=local["labels"], packed_seq_params=params)[0]
    (losses * local["loss_mask"][0]).sum().backward()
    packed_grads = {n: g.contiguous() for n, g in grads().items()}
    for g in packed_grads.values():
        dist.all_reduce(g, group=group)
    parts = [torch.empty(0)] * group.size()
    dist.all_gather_object(parts, (local["index"][0], local["real"][0] > 0, losses.detach()))
    full = torch.full((whole["tokens"].numel(),), float("nan"))
    for index, real, loss in parts:
        full[index[real]] = loss[real]
    if dist.get_rank() == 0:
        torch.save({"state": model.state_dict(), "losses": full, "grads": packed_grads,
                    "cu_seqlens_q_padded": params.cu_seqlens_q_padded, "local_tokens": local["tokens"].shape[1]}, out)


def main(tp: int, sp: bool, cp: int, out: str | None) -> None:
    parallel = ParallelConfig(tensor_model_parallel_size=tp, sequence_parallel=sp, context_parallel_size=cp)
    distributed.initialize(parallel, seed=1234)
    m = ModelConfig(**yaml.safe_load(open("conf/model/tiny.yaml")))
    model = build_model(m, parallel)[0]

    def grads() -> dict:
        out = {}
        for name, p in model.named_parameters():
            g = p.grad.clone()
            if getattr(p, "sequence_parallel", False):  # each rank saw only its part of the sequence
                dist.all_reduce(g, group=parallel_state.get_tensor_model_parallel_group())
            out[name] = g
        model.zero_grad()
        return out

    if cp > 1:
        return _context_parallel(model, grads, out)
    flat, params = pack(batch())
    packed, alone_losses, packed_grads, alone_grads, documents = packed_and_alone(model, flat, params, grads)
    result = {
        "documents": documents,
        "loss_diff": (packed - alone_losses).abs().max().item(),
        "grad_diff": max((g - alone_grads[n]).abs().max().item() for n, g in packed_grads.items()),
        "grad_scale": max(g.abs().max().item() for g in packed_grads.values()),
    }
    if dist.get_rank() == 0:
        print("PACKING " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2] == "1", int(sys.argv[3]), sys.argv[4] if len(sys.argv) > 4 else None)
