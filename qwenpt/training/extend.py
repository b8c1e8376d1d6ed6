"""Context-extension stages: a new run initialised from another run's checkpoint.

Qwen2 pretrains at 4K tokens and then extends to 32K with the RoPE base raised from 1e4 to 1e6
(adjusted base frequency, "ABF"); Qwen2.5/Qwen3 do the same in a final long-context stage. Here a
stage is a run of its own (own ``train.run_dir``, ``data.seq_length``, ``model.rope_theta``, LR
schedule) started with ``checkpoint.init_from`` = the previous stage's checkpoints. What it takes:

- **weights**, always (any layout reads any other's; RoPE has no weights, so a new base or YaRN
  applies as is);
- **optimizer state** (Adam moments and step count) with ``checkpoint.init_optimizer=true``; else a
  fresh optimizer, as most continued-pretraining recipes do;
- **never** the step counter, the LR schedule or the data position: the stage counts its own steps
  from 0, warms up and decays by its own ``optim`` settings, and reads its own data from the start
  (samples of a new length are a new sample index; the previous stage's consumed-sample count has no
  meaning in it). ``train.seed`` picks the order.

``checkpoint.previous_stage`` holds the train.py arguments of the run that writes ``init_from``: a
fresh run first runs it (rank 0, one process), which trains, resumes or finds it complete, so a
two-stage recipe is one command (``conf/experiment/long_context_tiny.yaml``).
"""

from __future__ import annotations

import copy
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch.distributed as dist
from megatron.core import dist_checkpointing
import yaml
from qwenpt.config import Config, to_container

from qwenpt import checkpoint
from qwenpt.errors import ConfigError
from qwenpt.training.resume import config_changes

log = logging.getLogger("qwenpt")

TRAIN_PY = Path(__file__).resolve().parents[2] / "train.py"


def run_previous_stage(cfg: Config, is_main: bool, torchrun_env: tuple[str, ...]) -> None:
    """``python train.py <checkpoint.previous_stage>`` on rank 0, in one process; every rank waits for
    it. That run resumes from its own checkpoints, so a finished one only says so."""
    if is_main:
        cmd = [sys.executable, str(TRAIN_PY), *cfg.checkpoint.previous_stage]
        env = {k: v for k, v in os.environ.items() if k not in torchrun_env}
        log.info("previous stage: %s", " ".join(cmd))
        if subprocess.run(cmd, env=env).returncode != 0:
            raise ConfigError(f"checkpoint.previous_stage: `{' '.join(cmd)}` failed (its log "
                              "is above); fix it, or train it yourself and set checkpoint.init_from")
    dist.barrier()
    source = Path(cfg.checkpoint.init_from).expanduser()
    if checkpoint.find_resumable(source)[0] is None and not (source / "metadata.json").is_file():
        raise ConfigError(f"checkpoint.init_from: {source} holds no checkpoint after the previous stage ran "
                          f"({' '.join(cfg.checkpoint.previous_stage)}); is init_from its checkpoints directory?")


def initialise(cfg: Config, source: str | Path, model: list, optimizer: Any, scheduler: Any) -> Path:
    """Load the weights (and, with ``checkpoint.init_optimizer``, the optimizer state) of ``source``
    into a fresh run; its schedule stays this run's own, at step 0. Returns the checkpoint read."""
    path = checkpoint.resolve(source)
    progress = (dist_checkpointing.load_common_state_dict(str(path)) or {}).get("progress", {})
    if not cfg.checkpoint.init_optimizer:
        checkpoint.load_model(path, model)
        optimizer.reload_model_params()  # the optimizer's fp32 main copies (bf16 runs) follow
    else:
        if progress.get("weights_only"):
            raise ConfigError(f"checkpoint.init_optimizer: {path} holds weights only (a seed or imported checkpoint); "
                              "set checkpoint.init_optimizer=false")
        # checkpoint.load restores the parameter groups' settings (max_lr, min_lr, weight decay ...) and a
        # schedule too: give it a throwaway schedule, put this run's settings back, and apply its step 0
        own = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
        checkpoint.load(path, model, optimizer, copy.copy(scheduler))
        for group, settings in zip(optimizer.param_groups, own, strict=True):
            group.update(settings)
        scheduler.step(increment=0)
    _describe(cfg, path, progress)
    return path


def _describe(cfg: Config, path: Path, progress: dict) -> None:
    """Log what the new stage changes against the run that wrote ``path``."""
    saved_file = path / "run_config.yaml"
    if not saved_file.is_file():
        return
    saved = yaml.safe_load(saved_file.read_text())
    changes = config_changes(saved, to_container(cfg))
    changed = changes["model"] + changes["data"] + changes["schedule"]
    step = progress.get("step", "?")
    log.info(
        "new stage from %s (step %s of %s): %s; taken: weights%s; starting afresh: step count, LR schedule, data order",
        path, step, saved.get("train", {}).get("run_dir", "?"), "; ".join(changed) or "no config change",
        " and optimizer state" if cfg.checkpoint.init_optimizer else " (fresh optimizer)",
    )
