"""Hang watchdog: a rank whose step, evaluation or checkpoint save runs far past its expected time
dumps every thread's Python stack (faulthandler) and exits non-zero, so the job fails fast (and a
requeueing scheduler restarts it from the last checkpoint) instead of idling until the time limit.

Every rank runs its own watchdog. The first to fire writes ``<run_dir>/HANG``; the others' watchdog
threads look for it every few seconds (one ``stat``, off the training thread), dump their own
stacks too (the ranks waiting in a collective for the stuck one: where they wait) and exit, and
the first waits for them before exiting, since the launcher kills the rest once one process
ends. Each rank's stacks go to stderr and ``<run_dir>/hang_rank<N>.txt``. The limit for a train step is ``factor`` x the median of recent step times (at least
``min_s``); before there are enough steps to know, and for evaluation and saves, it is
``collective_timeout_s``, the timeout also given to the NCCL/gloo process group.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import statistics
import sys
import threading
import time
from collections import deque
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

log = logging.getLogger("qwenpt")


class Watchdog:
    POLL_S = 2.0  # how often a watchdog looks for another rank's HANG file

    def __init__(self, cfg: Any, rank: int, report_dir: Path) -> None:
        self.cfg, self.rank = cfg, rank
        self.report = report_dir / f"hang_rank{rank}.txt"
        self.flag = report_dir / "HANG"
        self.started = time.time()
        self.step_times: deque[float] = deque(maxlen=50)
        self._deadline: Optional[float] = None
        self._what = ""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        if cfg.factor > 0:
            self._thread = threading.Thread(target=self._watch, name="qwenpt-watchdog", daemon=True)
            self._thread.start()

    def step_limit(self) -> float:
        if len(self.step_times) < 5:
            return self.cfg.collective_timeout_s
        return max(self.cfg.min_s, self.cfg.factor * statistics.median(self.step_times))

    @contextmanager
    def watch(self, what: str, limit: Optional[float] = None) -> Iterator[None]:
        """Arm for ``what`` (a train step when ``limit`` is None: timed and added to the median)."""
        start = time.monotonic()
        with self._lock:
            self._deadline = start + (self.step_limit() if limit is None else limit)
            self._what = what
        try:
            yield
        finally:
            with self._lock:
                self._deadline = None
            if limit is None:
                self.step_times.append(time.monotonic() - start)

    def _watch(self) -> None:
        last_poll = 0.0
        while not self._stop.wait(0.5):
            with self._lock:
                deadline, what = self._deadline, self._what
            now = time.monotonic()
            if deadline is not None and now > deadline:
                self._fire(what, first=True)
            if now - last_poll >= self.POLL_S:
                last_poll = now
                if self._peer_reported():
                    self._fire(what or "between steps", first=False)

    def _peer_reported(self) -> bool:
        try:
            return self.flag.stat().st_mtime >= self.started
        except OSError:
            return False

    def _fire(self, what: str, first: bool) -> None:
        cause = (
            f"has not finished after its limit (train.watchdog: factor {self.cfg.factor:g} x median step time "
            f"{self._median():.3g} s, at least {self.cfg.min_s:g} s; collective_timeout_s "
            f"{self.cfg.collective_timeout_s:g} s)" if first else "was running when another rank reported a hang"
        )
        message = (
            f"watchdog: rank {self.rank}: {what} {cause}. Stacks of every thread follow (also in {self.report}); "
            f"exiting with code {self.cfg.exit_code}."
        )
        print(message, file=sys.stderr, flush=True)
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        try:
            self.report.parent.mkdir(parents=True, exist_ok=True)
            with open(self.report, "w") as fh:
                fh.write(message + "\n")
                fh.flush()
                faulthandler.dump_traceback(file=fh, all_threads=True)
        except OSError:
            pass
        if first:
            try:
                self.flag.write_text(f"rank {self.rank}: {what}\n")
            except OSError:
                pass
            time.sleep(2 * self.POLL_S + 1)  # let the other ranks write their stacks before the launcher kills them
        sys.stderr.flush()
        os._exit(self.cfg.exit_code)  # the main thread is stuck: no cleanup can run

    def _median(self) -> float:
        return statistics.median(self.step_times) if self.step_times else float("nan")

    def close(self) -> None:
        self._stop.set()
