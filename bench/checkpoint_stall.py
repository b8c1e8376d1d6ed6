"""How long a checkpoint save stalls training: synchronous vs asynchronous (megatron-core's async
``dist_checkpointing``, torch_dist backend).

    python bench/checkpoint_stall.py [--layers 8] [--hidden 512] [--steps 12] [--save-interval 3]

Runs the real Trainer (``fit``: data loader, schedule, metrics, saves every ``--save-interval`` steps)
twice on the same model, ``checkpoint.async_save`` false then true. Per save it records the time the
training loop was blocked (sync: the whole write and publish; async: building the state dict,
forking the writer, and finalising — publish and the all-ranks agreement — when it is done) and the
time from start to publish. It also reports the median train step time, since on a machine with few
cores the background writer competes with training for CPU. The summary is the median over the
middle saves: not the first (one-time start-up of the writer) nor the last (the run waits for it
before exiting). Prints a table and writes bench/results/checkpoint_stall.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hydra import compose, initialize_config_dir  # noqa: E402

from qwenpt.config import register  # noqa: E402
from qwenpt.metrics import read_metrics  # noqa: E402
from qwenpt.models import param_counts  # noqa: E402
from qwenpt.training.loop import Trainer  # noqa: E402
from qwenpt.validation import configure  # noqa: E402


def run(args: argparse.Namespace, run_dir: Path, async_save: bool) -> dict:
    register()
    heads = args.hidden // 64
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = compose(config_name="config", overrides=[
            f"model.num_layers={args.layers}", f"model.hidden_size={args.hidden}",
            f"model.ffn_hidden_size={args.hidden * 3}", f"model.num_attention_heads={heads}",
            f"model.num_query_groups={max(1, heads // 4)}", f"train.steps={args.steps}", "optim.warmup_steps=1",
            "train.micro_batch_size=4", "train.global_batch_size=4", "data.seq_length=128",
            f"train.eval_interval={args.steps * 10}", "train.eval_steps=1", f"checkpoint.save_interval={args.save_interval}",
            f"checkpoint.async_save={str(async_save).lower()}", "checkpoint.keep_last=0", f"train.run_dir={run_dir}",
            "logging.wandb.mode=disabled", "logging.progress=false", f"data.cache_dir={run_dir.parent / 'cache'}",
        ])
    trainer = Trainer(configure(cfg))
    saves: list[dict] = []
    report = trainer.checkpoints.saver.report

    def record(step: int, path: Path, stall_s: float, total_s: float) -> None:
        saves.append({"step": step, "stall_s": stall_s, "total_s": total_s})
        report(step, path, stall_s, total_s)

    trainer.checkpoints.saver.report = record
    try:
        trainer.fit()
    finally:
        trainer.close()
    size = sum(f.stat().st_size for f in (run_dir / "checkpoints" / f"step_{args.steps:08d}").iterdir())
    steps = [r["step_time_s"] for r in read_metrics(run_dir, "train")][1:]
    return {"async": async_save, "saves": saves, "checkpoint_mb": size / 1e6,
            "median_step_s": statistics.median(steps), "params_m": param_counts(cfg.model).total / 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--save-interval", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = [run(args, Path(tmp) / f"run_{mode}", mode == "async") for mode in ("sync", "async")]
    print(f"\nmodel: {results[0]['params_m']:.1f}M parameters, checkpoint {results[0]['checkpoint_mb']:.0f} MB "
          f"(weights + Adam moments + RNG); {torch.get_num_threads()} CPU threads")
    print(f"{'mode':<6} {'save at step':>12} {'training blocked (s)':>21} {'start to publish (s)':>21} {'median step (s)':>16}")
    for r in results:
        for s in r["saves"]:
            print(f"{'async' if r['async'] else 'sync':<6} {s['step']:>12} {s['stall_s']:>21.3f} {s['total_s']:>21.3f} "
                  f"{r['median_step_s']:>16.3f}")
    summary = {
        ("async" if r["async"] else "sync"): statistics.median(s["stall_s"] for s in r["saves"][1:-1] or r["saves"])
        for r in results
    }
    print(f"median stall per save (middle saves): sync {summary['sync']:.3f} s, async {summary['async']:.3f} s "
          f"({summary['sync'] / max(summary['async'], 1e-9):.1f}x less)")
    out = ROOT / "bench" / "results" / "checkpoint_stall.json"
    out.write_text(json.dumps({"args": vars(args), "machine": platform.platform(), "results": results,
                               "median_stall_s": summary}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
