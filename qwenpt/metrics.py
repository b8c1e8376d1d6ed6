"""Run metrics: a JSONL file in the run directory (what analysis code reads) and wandb."""

from __future__ import annotations

import json
import math
import logging
import os
import uuid
from pathlib import Path
from typing import Optional

from qwenpt.config import WandbConfig

log = logging.getLogger(__name__)


class MetricsLogger:
    """Writes one JSON object per record to ``<run_dir>/metrics.jsonl`` and mirrors it to wandb.

    Only the main rank writes. wandb runs offline by default (no network needed; sync later with
    ``wandb sync``); ``logging.wandb.mode=online`` streams, ``disabled`` turns it off.
    """

    def __init__(self, run_dir: Path, wandb_cfg: WandbConfig, config: dict, enabled: bool, resume_step: int = 0) -> None:
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.wandb_run = None
        if not enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        if resume_step and self.path.exists():
            self._truncate_after(resume_step)
        if self.path.is_file() and self.path.stat().st_size and not self.path.read_bytes().endswith(b"\n"):
            with open(self.path, "a", encoding="utf-8") as fh:  # a partial last line stays apart from new records
                fh.write("\n")
        self.file = open(self.path, "a", encoding="utf-8")
        if wandb_cfg.mode != "disabled":
            import wandb

            os.environ.setdefault("WANDB_SILENT", "true")
            self.wandb_run = wandb.init(
                project=wandb_cfg.project,
                entity=wandb_cfg.entity,
                name=wandb_cfg.name or run_dir.name,
                mode=wandb_cfg.mode,
                dir=str(run_dir),
                config=config,
                resume="allow",
                id=_wandb_id(run_dir),
            )

    def _truncate_after(self, step: int) -> None:
        """On resume, drop records past the checkpoint: those steps are about to be redone. Lines that are not
        records (a partial line left by a kill, text written by something else) are kept, and skipped by readers.
        Rewritten atomically: a kill now leaves the old file or the new one."""
        lines = self.path.read_text(encoding="utf-8", errors="replace").splitlines()
        kept = [line for line in lines if line and not ((record := _record(line)) is not None and record["step"] > step)]
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        os.replace(tmp, self.path)

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.wandb_run is not None:
            self.wandb_run.log({k: v for k, v in record.items() if v is not None}, step=record["step"])

    def close(self) -> None:
        if not self.enabled:
            return
        self.file.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()


def _wandb_id(run_dir: Path) -> str:
    """A stable wandb run id per run directory, so a resumed run continues the same wandb run."""
    id_file = run_dir / "wandb_id"
    if not id_file.exists():
        id_file.write_text(uuid.uuid4().hex[:12])
    return id_file.read_text().strip()


def _record(line: str) -> Optional[dict]:
    """The metrics record on ``line``, or None for a line that is not one (partial, or not qwenpt's)."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    ok = isinstance(record, dict) and isinstance(record.get("step"), int) and record.get("kind") in ("train", "valid")
    return record if ok else None


def read_metrics(run_dir: str | Path, kind: Optional[str] = None) -> list[dict]:
    """The records of a run's metrics.jsonl (``kind``: 'train' or 'valid' to filter); lines that are not
    records are skipped with a warning naming the file and line."""
    path = Path(run_dir) / "metrics.jsonl"
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        record = _record(line)
        if record is None:
            log.warning("%s line %d is not a metrics record (a partial line, or not written by qwenpt); skipped: %.80s",
                        path, number, line)
            continue
        records.append(record)
    return [r for r in records if kind is None or r["kind"] == kind]


class StepWindow:
    """Throughput of each step, and the running means since the last log line that make that line: loss
    (a skipped step's left out), tokens/s, TFLOP/s per device and, on a known GPU, MFU."""

    def __init__(self, tokens_per_step: int, flops_per_token: float, world_size: int, peak_tflops: Optional[float]) -> None:
        self.tokens_per_step, self.flops_per_token = tokens_per_step, flops_per_token
        self.world_size, self.peak = world_size, peak_tflops
        self._reset()

    def _reset(self) -> None:
        self.loss, self.time_s, self.steps, self.skips = 0.0, 0.0, 0, 0

    def tflops_per_device(self, tokens_per_s: float) -> float:
        return self.flops_per_token * tokens_per_s / self.world_size / 1e12

    def add(self, loss: float, elapsed_s: float, skipped: bool) -> dict:
        """Count one step; returns its own throughput (``tokens_per_s``, ``tflops_per_device``, ``mfu``)."""
        self.time_s, self.steps = self.time_s + elapsed_s, self.steps + 1
        if skipped:
            self.skips += 1
        else:
            self.loss += loss
        tps = self.tokens_per_step / elapsed_s
        tflops = self.tflops_per_device(tps)
        return {"tokens_per_s": tps, "tflops_per_device": tflops, "mfu": tflops / self.peak if self.peak else None}

    def line(self, step: int, steps: int, lr: float, grad_norm: float, mtp_loss: Optional[list] = None) -> str:
        """The log line of the steps since the last one (then a new window starts)."""
        mean_tps = self.tokens_per_step * self.steps / self.time_s
        mean_loss = self.loss / (self.steps - self.skips) if self.steps > self.skips else math.nan
        mean_tflops = self.tflops_per_device(mean_tps)
        text = (
            f"step {step:>6}/{steps} | loss {mean_loss:.4f} | lr {lr:.3e} | "
            f"grad norm {grad_norm:.3f} | {mean_tps:,.0f} tokens/s | {mean_tflops:.3f} TFLOP/s/device"
            + (f" | MFU {mean_tflops / self.peak:.1%}" if self.peak else "")
            + (f" | MTP loss {' '.join(f'{x:.4f}' for x in mtp_loss)}" if mtp_loss is not None else "")
            + (f" | {self.skips} skipped" if self.skips else "")
        )
        self._reset()
        return text
