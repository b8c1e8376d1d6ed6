"""What one training step asks of the host, counted without a GPU: host syncs and kernel-like ops.

    python bench/step_budget.py [--models qwen2.5_0.5b qwen2.5_1.5b] [--seq 4096] [--micro-batch 2]
        [--global-batch 16] [--precision bf16] [--out bench/results/step_budget.json]

A GPU step is fast when the host queues kernels ahead of the GPU and never waits for it. Two counts
decide that and neither needs a GPU: **host syncs** (a value read back from the device: ``.item()``,
``.tolist()``, ``int()``/``float()``/``bool()`` of a tensor, ``nonzero``, ``.cpu()``, ``torch.tensor`` of
device scalars...; each one stops the host until the GPU has caught up) and **kernel-like ops** (every
aten op that is not a view or an allocation; each is a kernel launch on a GPU). They are counted here
for one steady-state training step (the second) of ``train.py``'s own :class:`~qwenpt.training.loop.Trainer`,
with a model of the named configuration's layer structure (layers, heads, query groups, biases, tied
embeddings) and a narrow width (8 per head, vocabulary 8192: the counts do not depend on width), on
the bundled sample, at the real sequence length and micro-batches per step, document masking on and
off. The micro-batches are read before counting (the loader's work is the host's by design).

Document masking counts the GPU path (``--kernel varlen``, default): attention as one call of torch's
variable-length flash attention, which has no CPU kernel, so here that op is counted and answered with
zeros of its output's shape; everything else runs for real. ``--kernel per_document`` counts the CPU's
own path. Results are JSON (``--out``), one entry per model, masking and megatron-core version; the
step-budget test (tests/{unit,integration}/test_gpu_step.py) asserts the budget on both CI lanes.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import sys
import tempfile
import traceback
import warnings
from itertools import islice
from pathlib import Path
from typing import Any, Iterator

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

_READS_BACK = {
    torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__bool__, torch.Tensor.__int__, torch.Tensor.__float__,
    torch.Tensor.__index__, torch.Tensor.__format__, torch.Tensor.__array__, torch.Tensor.numpy, torch.Tensor.cpu,
    torch.nonzero, torch.Tensor.nonzero, torch.masked_select, torch.Tensor.masked_select, torch.unique,
    torch.Tensor.unique, torch.argwhere, torch.Tensor.argwhere,
}


def _caller() -> tuple[str, bool]:
    """The innermost frame outside torch (where a read-back was asked for), and whether it was asked inside
    ``torch.optim``, whose optimizers keep their ``step`` counters on the host unless ``capturable``:
    reading those back costs no GPU sync."""
    stack = traceback.extract_stack()[:-3]
    host = any("/torch/optim/" in frame.filename for frame in stack)
    for frame in reversed(stack):
        if "/torch/" not in frame.filename and "step_budget.py" not in frame.filename:
            parts = Path(frame.filename).parts
            return f"{'/'.join(parts[-3:])}:{frame.lineno}", host
    return "?", host


class SyncCounter(TorchFunctionMode):
    """Counts calls that read a tensor's value back to the host, by call site."""

    def __init__(self) -> None:
        super().__init__()
        self.sites: collections.Counter = collections.Counter()
        self.host_counters = 0  # reads of torch.optim's host-side step counters (not syncs)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _READS_BACK or self._other_read_back(func, args, kwargs):
            site, host = _caller()
            if host:
                self.host_counters += 1
            else:
                self.sites[f"{site} {getattr(func, '__name__', func)}"] += 1
        return func(*args, **kwargs)

    @staticmethod
    def _other_read_back(func: Any, args: tuple, kwargs: dict) -> bool:
        if func is torch.tensor:  # torch.tensor([device scalars]) reads each one back
            data = args[0] if args else kwargs.get("data")
            return isinstance(data, (list, tuple)) and any(isinstance(x, torch.Tensor) for x in data)
        if func in (torch.repeat_interleave, torch.Tensor.repeat_interleave):  # output size unknown to the host
            repeats = args[1] if len(args) > 1 else kwargs.get("repeats")
            return isinstance(repeats, torch.Tensor) and kwargs.get("output_size") is None
        if func is torch.where:  # the one-argument form is nonzero
            return len(args) + len(kwargs) == 1
        return False

    @property
    def total(self) -> int:
        return sum(self.sites.values())


_NO_KERNEL = {"detach", "empty", "empty_like", "empty_strided", "lift_fresh", "_local_scalar_dense", "set_", "resize_"}


class OpCounter(TorchDispatchMode):
    """Counts aten ops that launch work (not views or allocations); answers torch's variable-length flash
    attention, which has no CPU kernel, with zeros of its outputs' shapes."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: collections.Counter = collections.Counter()
        import torch.nn.attention.varlen  # noqa: F401  (registers the torch_attn ops)

        self.varlen = torch.ops.torch_attn._varlen_attn.default
        self.varlen_backward = torch.ops.torch_attn._varlen_attn_backward.default

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        if not func.is_view and name not in _NO_KERNEL:
            self.ops[name] += 1
        if func is self.varlen and not args[0].is_cuda:
            query = args[0]
            return (torch.zeros_like(query), torch.zeros(query.shape[1], query.shape[0], dtype=torch.float32),
                    torch.zeros(2, dtype=torch.uint64))
        if func is self.varlen_backward and not args[1].is_cuda:
            return tuple(torch.zeros_like(t) for t in args[1:4])
        return func(*args, **kwargs)

    @property
    def total(self) -> int:
        return sum(self.ops.values())


def narrow_model(name: str, seq: int) -> list[str]:
    """Overrides giving ``model=name``'s layer structure at 8 per head and the bundled vocabulary."""
    import yaml

    m = yaml.safe_load((ROOT / "conf" / "model" / f"{name}.yaml").read_text())
    hidden = 8 * m["num_attention_heads"]
    out = [f"model={name}", f"model.hidden_size={hidden}", f"model.ffn_hidden_size={4 * hidden}",
           "model.vocab_size=8192", f"model.max_position_embeddings={max(seq, 2048)}"]
    if m.get("num_experts"):
        out += [f"model.moe_ffn_hidden_size={2 * hidden}"]
        if m.get("moe_shared_expert_ffn_hidden_size"):
            out += [f"model.moe_shared_expert_ffn_hidden_size={2 * hidden}"]
    return out


@contextlib.contextmanager
def _packed_kernel(kernel: str) -> Iterator[None]:
    from qwenpt.models.attention import SDPAttention

    before, SDPAttention.packed_kernel = SDPAttention.packed_kernel, kernel
    try:
        yield
    finally:
        SDPAttention.packed_kernel = before


def count_step(model_overrides: list[str], seq: int, micro_batch: int, global_batch: int, document_mask: bool,
               precision: str = "bf16", kernel: str = "varlen", workdir: Path | None = None) -> dict:
    """Host syncs and kernel-like ops of the second training step of a :class:`Trainer` in this process."""
    from hydra import compose, initialize_config_dir
    from megatron.core import __version__ as megatron_version

    from qwenpt import distributed
    from qwenpt.config import register
    from qwenpt.training.loop import Trainer
    from qwenpt.validation import configure

    workdir = Path(workdir or tempfile.mkdtemp(prefix="step_budget_"))
    overrides = [*model_overrides, f"data.seq_length={seq}", f"data.document_mask={str(document_mask).lower()}",
                 f"train.micro_batch_size={micro_batch}", f"train.global_batch_size={global_batch}",
                 "train.steps=2", "optim.warmup_steps=0", "train.eval_steps=1", f"train.precision={precision}", "checkpoint.resume=false",
                 f"train.run_dir={workdir / 'run'}", f"data.cache_dir={workdir / 'cache'}",
                 "logging.wandb.mode=disabled", "logging.progress=false"]
    register()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = compose(config_name="config", overrides=overrides)
    trainer = Trainer(configure(cfg))
    try:
        with _packed_kernel(kernel if document_mask else "auto"), OpCounter():
            iterators = trainer.train_iterators()
            trainer.train_step(iterators)  # the first step allocates optimizer state and buffers
        # this step's micro-batches, read before counting: the loader's host work is not the step's
        batches = [list(islice(it, trainer.num_micro)) if it is not None else None for it in iterators]
        documents = [len(b["pack"]["bounds"]) - 1 for b in batches[0]] if document_mask else []
        syncs, ops = SyncCounter(), OpCounter()
        cuda = torch.cuda.is_available()
        with _packed_kernel(kernel if document_mask else "auto"), syncs, ops, warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            if cuda:  # on a GPU, CUDA's own count of the syncs it saw
                torch.cuda.set_sync_debug_mode("warn")
            try:
                loss, _, _ = trainer.train_step([iter(b) if b is not None else None for b in batches])
            finally:
                if cuda:
                    torch.cuda.set_sync_debug_mode(0)
        cuda_syncs = sum("synchroniz" in str(w.message) for w in seen) if cuda else None
    finally:
        trainer.close()
        distributed.shutdown()
    return {
        "layers": cfg.model.num_layers, "micro_batches": trainer.num_micro, "seq_length": seq,
        "document_mask": document_mask, "kernel": kernel if document_mask else "sdpa",
        "documents_per_micro_batch": sum(documents) / len(documents) if documents else 1.0,
        "host_syncs": syncs.total, "sync_sites": dict(syncs.sites.most_common()),
        "optimizer_host_counter_reads": syncs.host_counters, "cuda_syncs": cuda_syncs,
        "ops": ops.total, "ops_per_micro_batch": ops.total / trainer.num_micro,
        "top_ops": dict(ops.ops.most_common(12)), "loss": loss, "megatron_core": megatron_version,
        "torch": torch.__version__,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["qwen2.5_0.5b", "qwen2.5_1.5b"])
    p.add_argument("--seq", type=int, default=4096)
    p.add_argument("--micro-batch", type=int, default=2)
    p.add_argument("--global-batch", type=int, default=16)
    p.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    p.add_argument("--kernel", default="varlen", choices=["varlen", "per_document", "auto"],
                   help="packed attention: varlen (the GPU path; stood in for on a CPU), per_document, or auto")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "step_budget.json")
    args = p.parse_args()
    results = []
    for name in args.models:
        for mask in (False, True):
            r = count_step(narrow_model(name, args.seq), args.seq, args.micro_batch, args.global_batch, mask,
                           args.precision, args.kernel)
            r["model"] = name
            results.append(r)
            print(f"{name:>14} masking {'on ' if mask else 'off'} | layers {r['layers']} | "
                  f"{r['micro_batches']} micro-batches | {r['documents_per_micro_batch']:.1f} documents/micro-batch | "
                  f"host syncs {r['host_syncs']} | ops/micro-batch {r['ops_per_micro_batch']:,.0f}", flush=True)
        off, on = results[-2], results[-1]
        print(f"{name:>14} masking on / off: ops x{on['ops'] / off['ops']:.3f}, syncs {on['host_syncs']} vs "
              f"{off['host_syncs']}; sync sites (on): {on['sync_sites']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
