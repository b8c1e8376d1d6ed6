"""The run folder: one trainer at a time, never a folder qwenpt did not make, a record analyses can trust.

    <run_dir>/qwenpt_run.json       marks the folder as a qwenpt run (written by its first launch)
    <run_dir>/.qwenpt.lock          held by the launch training in it (a POSIX record lock); says who holds it
    <run_dir>/launches/<time>/      every launch's resolved config.yaml and overrides.yaml, kept
    <run_dir>/.hydra/config.yaml    the config of the launch that last trained a step: what ``scaling collect``
                                    and ``qwenpt.batches`` read. Written when a launch begins training, so a
                                    launch that fails, or finds training complete, leaves it as it was.
    <run_dir>/train.log             the console's log lines, appended by every launch

Hydra writes nothing there itself (conf/config.yaml: ``hydra.output_subdir: null`` and a console-only
job logging): a folder is only written after :func:`claim` has checked it.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import logging
import os
import socket
from pathlib import Path
from typing import Optional

import yaml
from omegaconf import OmegaConf

from qwenpt.config import Config

from qwenpt.errors import ConfigError

log = logging.getLogger("qwenpt")

MARKER = "qwenpt_run.json"
LOCK = ".qwenpt.lock"
LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"


def is_qwenpt_run(run_dir: Path) -> bool:
    """Whether ``run_dir`` is a run folder qwenpt made: it has the marker, or (runs from before the marker)
    the resolved train.py config Hydra kept in ``.hydra/config.yaml``."""
    if (run_dir / MARKER).is_file():
        return True
    try:
        saved = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(saved, dict) and {"model", "train", "data"} <= set(saved)


def _holder(fd: int) -> str:
    text = os.pread(fd, 512, 0).decode(errors="replace").strip()
    try:
        who = json.loads(text)
        return f"PID {who['pid']} on {who['host']}, started {who['started']}"
    except (ValueError, KeyError, TypeError):
        return "another process"


class RunFolder:
    """A claimed run folder (rank 0's): holds its lock until :meth:`release` or the process ends."""

    def __init__(self, run_dir: Path, fd: int, launch: Path, log_file: logging.Handler) -> None:
        self.run_dir, self.fd, self.launch, self.log_file = run_dir, fd, launch, log_file
        self.recorded = False

    def record(self, cfg: Config) -> None:
        """The launch trains: its config becomes the run's record (``.hydra/config.yaml``), atomically."""
        if self.recorded:
            return
        target = self.run_dir / ".hydra" / "config.yaml"
        target.parent.mkdir(exist_ok=True)
        tmp = target.with_name(".config.yaml.tmp")
        tmp.write_text(OmegaConf.to_yaml(cfg, resolve=True))
        os.replace(tmp, target)
        self.recorded = True

    def release(self) -> None:
        if self.fd >= 0:
            logging.getLogger().removeHandler(self.log_file)
            self.log_file.close()
            os.ftruncate(self.fd, 0)
            os.close(self.fd)
            self.fd = -1


def claim(run_dir: str | Path, cfg: Config, overrides: Optional[list[str]] = None) -> RunFolder:
    """Check and lock ``run_dir`` for this launch, keep its config under ``launches/``, and send the log to
    ``train.log``. Raises :class:`ConfigError` for a folder qwenpt did not make or one another trainer holds."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"train.run_dir: {run_dir} is a file; choose a folder (train.run_dir=<new folder>)")
    if run_dir.is_dir() and any(run_dir.iterdir()) and not is_qwenpt_run(run_dir):
        names = sorted(p.name for p in run_dir.iterdir())
        raise ConfigError(
            f"train.run_dir: {run_dir} holds files qwenpt did not write ({', '.join(names[:5])}"
            f"{', ...' if len(names) > 5 else ''}) and is not a qwenpt run folder; nothing was written there. "
            "Choose a new or empty folder (train.run_dir=<folder>)"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        holder = _holder(fd)
        os.close(fd)
        if err.errno not in (errno.EAGAIN, errno.EACCES):
            raise
        raise ConfigError(
            f"train.run_dir: {run_dir} is in use by another trainer ({holder}); two trainers in one run folder would "
            "write the same checkpoints and metrics. Wait for it to finish, stop it (touch its STOP file), or choose "
            "another train.run_dir"
        ) from None
    started = datetime.datetime.now().astimezone()
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                              "started": started.isoformat(timespec="seconds")}).encode(), 0)
    if not (run_dir / MARKER).is_file():
        (run_dir / MARKER).write_text(json.dumps({"created": started.isoformat(timespec="seconds")}) + "\n")
    launch = run_dir / "launches" / started.strftime("%Y%m%d-%H%M%S-%f")
    launch.mkdir(parents=True)
    (launch / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    (launch / "overrides.yaml").write_text(yaml.safe_dump(list(overrides or []), default_flow_style=False))
    handler = logging.FileHandler(run_dir / "train.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logging.getLogger().addHandler(handler)
    return RunFolder(run_dir, fd, launch, handler)


def hydra_overrides() -> list[str]:
    """The command line's overrides of this Hydra launch (empty outside Hydra)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return list(HydraConfig.get().overrides.task)
    except (ValueError, ImportError):
        return []
