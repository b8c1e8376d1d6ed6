"""The token batches a run reads, step by step, rebuilt from its configuration.

    python -m qwenpt.batches dump --run runs/tiny-sample --steps 7:12 [--out batches.npz] [--config FILE]

For debugging and for checking a run against an independent implementation: step k's global batch is
samples ``(k - 1) x B .. k x B - 1`` of the training index (B = ``train.global_batch_size``; every
data-parallel rank reads its micro-batch slices of it, :class:`qwenpt.data.PretrainingSampler`), and the
index is what :func:`qwenpt.data.sample_horizon` says the run builds: from the run's configuration
(``<run>/.hydra/config.yaml`` unless ``--config``) and, where the run has a checkpoint, the horizon it
recorded. Writes an ``.npz`` (no pickles: ``numpy.load(f)`` reads it) with ``tokens``, ``labels``,
``loss_mask`` and ``position_ids`` as [steps, B, seq_length] and ``steps``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch.distributed as dist
from omegaconf import OmegaConf

from qwenpt import checkpoint
from qwenpt.errors import ConfigError
from qwenpt.data import build_datasets, dataset_config, load_tokenizer, resolve_blend, sample_horizon
from qwenpt.config import Config

FIELDS = ("tokens", "labels", "loss_mask", "position_ids")


def parse_steps(spec: str) -> tuple[int, int]:
    """``A:B`` (steps A to B, both included, from 1) or ``A`` alone."""
    first, _, last = spec.partition(":")
    try:
        a, b = int(first), int(last or first)
    except ValueError:
        raise ConfigError(f"--steps {spec!r}: give steps as A:B (e.g. 7:12) or one step") from None
    if not 1 <= a <= b:
        raise ConfigError(f"--steps {spec!r}: steps count from 1 and A must not exceed B")
    return a, b


def run_config(run: Path, config: Optional[Path] = None) -> Any:
    path = config or run / ".hydra" / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"{path}: no run configuration there (a train.py run folder holds .hydra/config.yaml; "
                          "or pass --config)")
    return OmegaConf.load(path)


def read_batches(cfg: Config, first: int, last: int, saved_horizon: Optional[int] = None) -> dict[str, np.ndarray]:
    """Steps ``first`` .. ``last`` of the run configured by ``cfg``, as [steps, global batch, seq] arrays."""
    t, d = cfg.train, cfg.data
    tokenizer = load_tokenizer(d, cfg.model.vocab_size)
    blend = resolve_blend(d, tokenizer)
    horizon, _ = sample_horizon(d, blend, t.steps * t.global_batch_size, saved_horizon)
    if last * t.global_batch_size > horizon:
        raise ConfigError(f"step {last} is past this run's training index ({horizon:,} samples = "
                          f"{horizon // t.global_batch_size} steps of {t.global_batch_size})")
    if not dist.is_initialized():  # megatron-core's blended dataset asks for a rank: a world of one, on the host
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    train = build_datasets(dataset_config(d, tokenizer, blend, t.seed), [horizon, 0, 0])[0]
    gbs = t.global_batch_size
    rows = [train[i] for i in range((first - 1) * gbs, last * gbs)]
    out = {k: np.stack([np.asarray(r[k]) for r in rows]).reshape(last - first + 1, gbs, -1) for k in FIELDS}
    out["steps"] = np.arange(first, last + 1)
    return out


def dump(run: Path, steps: str, out: Path, config: Optional[Path] = None) -> dict[str, np.ndarray]:
    first, last = parse_steps(steps)
    cfg = run_config(run, config)
    ckpt_dir = Path(cfg.checkpoint.dir) if cfg.checkpoint.dir else run / "checkpoints"
    newest = checkpoint.find_resumable(ckpt_dir)[0] if ckpt_dir.is_dir() else None
    saved = checkpoint.sample_horizon(newest) if newest is not None else None
    batches = read_batches(cfg, first, last, saved)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, **batches)
    return batches


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qwenpt.batches", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("dump", help="write the token batches of steps A:B of a run to an .npz")
    p.add_argument("--run", type=Path, required=True, help="the run folder (train.run_dir)")
    p.add_argument("--steps", required=True, help="A:B, both included, counting from 1")
    p.add_argument("--out", type=Path, default=None, help="default: <run>/batches_A-B.npz")
    p.add_argument("--config", type=Path, default=None, help="default: <run>/.hydra/config.yaml")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    out = args.out or args.run / f"batches_{args.steps.replace(':', '-')}.npz"
    try:
        batches = dump(args.run, args.steps, out, args.config)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    steps, gbs, seq = batches["tokens"].shape
    print(f"wrote steps {batches['steps'][0]}-{batches['steps'][-1]} ({steps} x {gbs} samples x {seq} tokens) to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
