"""One check of a whole run's configuration, before any process group, model or dataset is created.

Each concept owns its checks (the model and its layout in :mod:`qwenpt.models.checks`, layout arithmetic
in :mod:`qwenpt.distributed`, the data in :mod:`qwenpt.data`, the schedule in
:mod:`qwenpt.training.optim`, the guard in :mod:`qwenpt.training.guard`, checkpoints in
:mod:`qwenpt.checkpoint`, a Hugging Face source in :mod:`qwenpt.convert.hf_io`); :func:`validate` calls
them in order, and holds only the train and logging sections' own few checks. Every failure is a
:class:`~qwenpt.errors.ConfigError` naming the field and what to do.
"""

from __future__ import annotations

import signal

from omegaconf import DictConfig

from qwenpt import checkpoint, distributed
from qwenpt.config import Config, LoggingConfig, TrainConfig, check_unknown_keys, to_object
from qwenpt.convert.hf_io import check_init_from_hf
from qwenpt.data import validate_data
from qwenpt.errors import check
from qwenpt.models.checks import validate_fp8, validate_model
from qwenpt.training import guard
from qwenpt.training.optim import validate_schedule


def configure(cfg: DictConfig, world_size: int = 1) -> Config:
    """A run's entry: Hydra's composed config validated, then typed (one :class:`~qwenpt.config.Config`)."""
    validate(cfg, world_size)
    return to_object(cfg)


def validate(cfg: Config, world_size: int = 1, check_files: bool = True) -> None:
    """Check everything a run needs before anything is allocated (``check_files=False``: not the data,
    tokenizer and checkpoint paths, as the planner runs away from the cluster's file systems)."""
    check_unknown_keys(cfg)
    validate_model(cfg.model, cfg.parallel)
    dp = distributed.data_parallel_size(cfg.parallel, world_size)
    if cfg.model.num_experts is not None:
        distributed.check_expert_layout(cfg.parallel, world_size)
    _validate_train(cfg.train, cfg.logging, dp)
    validate_data(cfg, check_files)
    validate_schedule(cfg.optim, cfg.train.steps)
    guard.validate(cfg.train)
    checkpoint.validate_config(cfg.checkpoint, world_size, check_files)
    if cfg.checkpoint.init_from_hf is not None and check_files:
        check_init_from_hf(cfg.checkpoint.init_from_hf, cfg.model)


def _validate_train(t: TrainConfig, logging: LoggingConfig, dp: int) -> None:
    """The batch arithmetic against the data-parallel size, and the train section's own settings."""
    check(t.micro_batch_size > 0, f"train.micro_batch_size must be positive, got {t.micro_batch_size}")
    check(t.global_batch_size > 0, f"train.global_batch_size must be positive, got {t.global_batch_size}")
    check(
        t.global_batch_size % (t.micro_batch_size * dp) == 0,
        f"train.global_batch_size {t.global_batch_size} is not divisible by train.micro_batch_size "
        f"{t.micro_batch_size} x data-parallel size {dp}",
    )
    check(t.steps > 0, f"train.steps must be positive, got {t.steps}")
    for key, value in (("train.eval_interval", t.eval_interval), ("train.eval_steps", t.eval_steps),
                       ("logging.log_interval", logging.log_interval)):
        check(value > 0, f"{key} must be a positive number of steps, got {value}")
    check(t.cpu_threads is None or t.cpu_threads > 0,
          f"train.cpu_threads must be a positive number of threads or null (torch's choice), got {t.cpu_threads}")
    validate_fp8(t)
    if t.exit_signal is not None:
        check(
            isinstance(getattr(signal, t.exit_signal, None), signal.Signals),
            f"train.exit_signal {t.exit_signal!r} is not a signal name (e.g. SIGUSR1, SIGTERM); null disables it",
        )
    check(t.eval_position_buckets >= 0, f"train.eval_position_buckets must be 0 (off) or more, got {t.eval_position_buckets}")
