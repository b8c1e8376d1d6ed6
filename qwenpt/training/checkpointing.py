"""The loop's checkpoints: when a step saves, what a save refuses, and the last good checkpoint.

A part around :class:`qwenpt.checkpoint.Saver` (which writes and publishes): the loop asks
:meth:`Checkpoints.due` after each step and calls :meth:`Checkpoints.save` then and on a stop request;
the guard names :meth:`Checkpoints.last_good` in its messages and calls
:meth:`Checkpoints.protect_last_good` when trouble begins, so ``keep_last`` never rotates it away.
"""

from __future__ import annotations

import contextlib
import errno
import logging
from pathlib import Path
from typing import Any, Iterator, Optional

from omegaconf import OmegaConf

from qwenpt import checkpoint
from qwenpt.config import Config
from qwenpt.training.guard import TrainingHalted, check_finite_parameters
from qwenpt.training.watchdog import Watchdog

log = logging.getLogger("qwenpt")


class Checkpoints:
    """Save timing, saves and the last good checkpoint of one run (``resumed_from``: the one it started from)."""

    def __init__(self, cfg: Config, root: Path, resumed_from: Optional[Path], is_main: bool,
                 watchdog: Watchdog) -> None:
        self.cfg, self.root, self.is_main, self.watchdog = cfg, root, is_main, watchdog
        self.last_saved = resumed_from
        self.saver = checkpoint.Saver(cfg.checkpoint.async_save, cfg.checkpoint.checksums, self._published)

    def due(self, step: int) -> bool:
        """Whether ``step`` saves: every ``checkpoint.save_interval`` steps (0: never) and at the last step."""
        every = self.cfg.checkpoint.save_interval
        return (every > 0 and step % every == 0) or step == self.cfg.train.steps

    def save(self, step: int, model: list, optimizer: Any, scheduler: Any, progress: dict) -> None:
        """Save ``step`` (in the background with ``checkpoint.async_save``); refused from non-finite weights,
        and a full disk stops the run naming the last good checkpoint."""
        if not check_finite_parameters(model):
            raise TrainingHalted(
                f"step {step}: the weights hold NaN/Inf; refusing to save a checkpoint from them. "
                f"Last good checkpoint: {self.last_good()}."
            )
        c = self.cfg.checkpoint
        with self.watchdog.watch(f"checkpoint save at step {step}", self.cfg.train.watchdog.collective_timeout_s), \
                self._halt_on_full_disk(step):
            self.saver.save(self.root, step, model, optimizer, scheduler, progress=progress,
                            run_config=OmegaConf.to_yaml(self.cfg, resolve=True), keep_last=c.keep_last,
                            optim_sharding=c.optim_sharding)

    def poll(self) -> None:
        """Publish a background save whose files are written (every step; no wait)."""
        self.saver.poll()

    def last_good(self) -> str:
        """The newest published checkpoint, for messages (a save in flight was taken before the trouble:
        it is published first)."""
        self.saver.wait()
        if self.last_saved is None:
            return "none (no checkpoint saved yet; rerunning starts over)"
        return str(self.last_saved)

    def protect_last_good(self, step: int) -> None:
        """Keep the newest checkpoint out of ``keep_last``'s rotation: the run's state before trouble at ``step``."""
        if self.is_main and self.last_saved is not None:
            checkpoint.protect(self.root, self.last_saved.name, f"the last checkpoint before trouble at step {step}")

    def close(self, abort: bool) -> None:
        """Publish a save still being written (``abort``: leave it unpublished; resume takes the previous one)."""
        self.saver.close(abort=abort)

    def _published(self, step: int, path: Path, stall_s: float, total_s: float) -> None:
        self.last_saved = path
        if self.is_main:
            log.info(
                "saved checkpoint %s (training blocked %.3f s%s)", path, stall_s,
                f", written in the background in {total_s:.3f} s" if self.cfg.checkpoint.async_save else "",
            )

    @contextlib.contextmanager
    def _halt_on_full_disk(self, step: int) -> Iterator[None]:
        """A save that finds no space stops the run with one message (the checkpoint's words, and the last good one)."""
        try:
            yield
        except OSError as err:
            if err.errno != errno.ENOSPC:
                raise
            raise TrainingHalted(f"step {step}: {err.strerror}. Last good checkpoint: {self.last_good()}.") from None
