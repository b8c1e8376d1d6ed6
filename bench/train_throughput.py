"""train.py's training throughput against a bare megatron-core loop on the same model and batch.

    python bench/train_throughput.py [--model tiny] [--steps 30] [--repeats 3]

The bare loop is what megatron-core alone costs: the same GPTModel, DDP wrapper, optimizer and
``forward_backward_func`` over batches already in memory — no data loader, LR schedule, loss
reduction, metrics or progress bar. The Trainer runs its real ``fit`` loop (data loader from the
bundled sample, schedule, metrics JSONL, logging) with eval and checkpoint saves switched off, so
the ratio measures the loop's overhead. Runs alternate (bare, trainer, bare, ...) and the median
of the repeats is reported. Prints a table and writes bench/results/train_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hydra import compose, initialize_config_dir  # noqa: E402
from megatron.core.distributed import finalize_model_grads  # noqa: E402
from megatron.core.pipeline_parallel import get_forward_backward_func  # noqa: E402

from qwenpt.config import register  # noqa: E402
from qwenpt.models import build_model  # noqa: E402
from qwenpt.training.forward import forward_step  # noqa: E402
from qwenpt.training.loop import Trainer, resolve_dtype, wrap_ddp  # noqa: E402
from qwenpt.validation import configure  # noqa: E402
from qwenpt.training.optim import build_optimizer  # noqa: E402


def compose_cfg(model: str, steps: int, run_dir: Path):
    register()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        return compose(
            config_name="config",
            overrides=[
                f"model={model}", f"train.steps={steps}", "optim.warmup_steps=0", f"train.run_dir={run_dir}",
                "logging.wandb.mode=disabled", "logging.progress=false", f"logging.log_interval={steps}",
                "checkpoint.resume=false", f"data.cache_dir={run_dir / 'cache'}",
            ],
        )


def bare_loop(cfg, warmup: int, steps: int) -> float:
    """tokens/s of megatron-core alone: model, DDP, optimizer, forward_backward_func on in-memory batches."""
    t = cfg.train
    dtype = resolve_dtype(t.precision)
    chunks = build_model(cfg.model, cfg.parallel, dtype)
    model = wrap_ddp(chunks, cfg.parallel)
    optimizer = build_optimizer(cfg.optim, cfg.parallel, model, dtype)
    mcfg = chunks[0].config
    mcfg.no_sync_func, mcfg.grad_scale_func = model[0].no_sync, optimizer.scale_loss
    mcfg.finalize_model_grads_func = finalize_model_grads
    fbf = get_forward_backward_func()
    num_micro = t.global_batch_size // t.micro_batch_size
    seq = cfg.data.seq_length
    g = torch.Generator().manual_seed(0)
    batches = [
        {
            "tokens": torch.randint(0, cfg.model.vocab_size, (t.micro_batch_size, seq), generator=g),
            "labels": torch.randint(0, cfg.model.vocab_size, (t.micro_batch_size, seq), generator=g),
            "loss_mask": torch.ones(t.micro_batch_size, seq),
            "position_ids": torch.arange(seq).expand(t.micro_batch_size, -1),
        }
        for _ in range(num_micro)
    ]

    def step() -> None:
        model[0].zero_grad_buffer()
        optimizer.zero_grad()
        fbf(
            forward_step_func=partial(forward_step, torch.device("cpu") if not torch.cuda.is_available() else torch.device("cuda")),
            data_iterator=iter(batches), model=model[0], num_microbatches=num_micro,
            seq_length=seq, micro_batch_size=t.micro_batch_size, forward_only=False,
        )
        optimizer.step()

    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    elapsed = time.perf_counter() - start
    return steps * t.global_batch_size * seq / elapsed


def trainer_loop(cfg, warmup: int, steps: int) -> float:
    """tokens/s of the Trainer's real fit loop (eval and checkpoint saves switched off)."""
    trainer = Trainer(configure(cfg))
    cfg = trainer.cfg  # the typed config the loop reads
    trainer.evaluator.should_run = lambda step: False
    trainer.save = lambda: None
    cfg.train.steps = warmup
    trainer.fit()
    cfg.train.steps = warmup + steps
    start = time.perf_counter()
    trainer.fit()
    elapsed = time.perf_counter() - start
    trainer.close()
    return steps * cfg.train.global_batch_size * cfg.data.seq_length / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "train_throughput.json"))
    args = parser.parse_args()

    bare, trained = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            cfg = compose_cfg(args.model, args.warmup + args.steps, Path(tmp) / f"run{r}")
            # the Trainer initialises distributed state; the bare loop reuses it
            trained.append(trainer_loop(cfg, args.warmup, args.steps))
            bare.append(bare_loop(cfg, args.warmup, args.steps))
    result = {
        "model": args.model,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "global_batch_tokens": cfg.train.global_batch_size * cfg.data.seq_length,
        "steps": args.steps,
        "repeats": args.repeats,
        "bare_megatron_tokens_per_s": statistics.median(bare),
        "train_py_tokens_per_s": statistics.median(trained),
        "ratio": statistics.median(trained) / statistics.median(bare),
        "all_bare": bare,
        "all_train_py": trained,
    }
    print(f"\n{'loop':<28}{'tokens/s (median)':>20}{'runs':>40}")
    print(f"{'bare megatron-core':<28}{result['bare_megatron_tokens_per_s']:>20,.0f}{str([round(x) for x in bare]):>40}")
    print(f"{'train.py Trainer':<28}{result['train_py_tokens_per_s']:>20,.0f}{str([round(x) for x in trained]):>40}")
    print(f"ratio train.py / bare: {result['ratio']:.3f}  (target >= 0.95)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
