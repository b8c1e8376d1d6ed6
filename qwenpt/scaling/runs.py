"""Collect the runs ``train.py`` wrote into one table for the fits.

A run directory holds ``metrics.jsonl`` (one JSON object per train step and per evaluation) and
checkpoints, each with the resolved config that trained it (``run_config.yaml``): the newest complete
one describes the run (for runs without checkpoints, ``.hydra/config.yaml``, the last launch that began
training), so launches that fail or find training complete never change the table. Each evaluation
becomes one row: the model's parameter counts (total, embedding, non-embedding, active; from
:mod:`qwenpt.models.size`), tokens seen, training FLOPs to that point (exact, :mod:`qwenpt.flops`), the validation loss, the mean
training loss over the steps since the previous evaluation, the data mixture (``mix_<name>``
shares), the validation loss per position bucket (``valid_loss_pos0`` ... ``valid_loss_pos7``: per 1/8 of
the sequence, :mod:`qwenpt.eval_positions`) and ``final``: the evaluation at the end of the run's
schedule (an unfinished run has none).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import pyarrow as pa
import yaml

from qwenpt.config import ModelConfig


def find_runs(paths: Iterable[str | Path]) -> list[Path]:
    """Run directories: each path itself if it holds metrics.jsonl, else every run below it."""
    runs: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"run path {p} does not exist")
        if (p / "metrics.jsonl").is_file():
            runs.append(p)
        else:
            runs.extend(sorted(m.parent for m in p.rglob("metrics.jsonl")))
    return runs


def _mixture(data: dict) -> dict[str, float]:
    """Normalised shares per source: the blend's weights, or the bundled sample's ``sample_weights``;
    empty for the sample's natural mixture (token counts, known only at run time)."""
    blend = data.get("blend") or []
    weights = {Path(e["prefix"]).name: float(e["weight"]) for e in blend} or dict(data.get("sample_weights") or {})
    total = sum(weights.values())
    return {k: v / total for k, v in weights.items()} if total else {}


def run_config(run_dir: Path) -> Path:
    """The config that produced the run's checkpoints: the newest complete checkpoint's ``run_config.yaml``,
    else (no checkpoint) ``.hydra/config.yaml``."""
    from qwenpt.checkpoint import complete_checkpoints

    checkpoints = complete_checkpoints(run_dir / "checkpoints")
    if checkpoints and (checkpoints[-1] / "run_config.yaml").is_file():
        return checkpoints[-1] / "run_config.yaml"
    config_file = run_dir / ".hydra" / "config.yaml"
    if not config_file.is_file():
        raise FileNotFoundError(f"{run_dir}: no checkpoint config and no .hydra/config.yaml; is it a train.py run directory?")
    return config_file


def run_rows(run_dir: Path) -> list[dict]:
    from qwenpt.flops import training_flops_per_token
    from qwenpt.metrics import read_metrics
    from qwenpt.models.size import param_counts

    cfg = yaml.safe_load(run_config(run_dir).read_text())
    model = ModelConfig(**cfg["model"])
    counts = param_counts(model)
    seq = int(cfg["data"]["seq_length"])
    flops_per_token = training_flops_per_token(model, seq)
    mix = _mixture(cfg["data"])
    steps = int(cfg["train"]["steps"])
    records = read_metrics(run_dir)
    rows, pending = [], []
    for r in records:
        if r["kind"] == "train":
            pending.append(r["loss"])
            continue
        rows.append(
            {
                "run": str(run_dir),
                "model": model.name,
                "params": counts.total,
                "embedding_params": counts.embedding,
                "non_embedding_params": counts.non_embedding,
                "active_params": counts.active,
                "seq_length": seq,
                "step": int(r["step"]),
                "tokens": int(r["tokens"]),
                "flops": float(flops_per_token * r["tokens"]),
                "valid_loss": float(r["loss"]),
                "train_loss": float(sum(pending) / len(pending)) if pending else None,
                "final": int(r["step"]) == steps,  # the run reached the end of its schedule
                **{f"mix_{k}": v for k, v in mix.items()},
                **{f"valid_loss_{k}": float(v) for k, v in (r.get("per_source") or {}).items()},
                # validation loss per 1/n of the sequence (qwenpt/eval_positions.py): pos0 first, pos{n-1} last
                **{f"valid_loss_pos{i}": v for i, v in enumerate(r.get("position_loss") or [])},
            }
        )
        pending = []
    return rows


def collect_runs(paths: Iterable[str | Path]) -> pa.Table:
    """One row per evaluation of every run under ``paths`` (columns missing in a run are null)."""
    rows = [row for run in find_runs(paths) for row in run_rows(run)]
    return pa.Table.from_pylist(rows)
