"""The non-finite and loss-spike guard: a step whose loss or grad norm is NaN/Inf never updates the
weights, and the run stops (naming the step and the last good checkpoint) or skips it, as configured.

Megatron-LM's anchor is ``check_for_nan_in_loss_and_grad``: its rerun state machine validates
each micro-batch's loss (NaN, Inf, a spike above 10x the largest of recent losses) and DDP checks
each gradient bucket's norm before the all-reduce, each with its own ``.item()``. Here the same
facts are read from values the loop already has on the host, so the guard adds no device
synchronisation: the step's loss (all-reduced, one ``.item()`` the loop makes for logging anyway)
and the global grad norm megatron-core's optimizer computes for clipping (it ends in ``.item()``).
Both are already identical on every rank (reduced over data, pipeline and model-parallel groups);
the verdict still rides on the loop's one per-step all-reduce (the stop request's), so every rank
takes the same decision even if one rank's values went bad alone. The decision is taken between
the grad norm and the update: :meth:`Guard.install` wraps the optimizer's
``step_with_ready_grads`` so that a non-finite step leaves weights, Adam moments and step
counters untouched (what Megatron-LM's fp16 loss scaler does on overflow: a skipped iteration).
Only with ``optim.clip_grad=0`` (no norm computed) does the guard compute the norm itself.
"""

from __future__ import annotations

import logging
import math
import re
import statistics
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

from qwenpt.errors import ConfigError, check
from qwenpt.config import TrainConfig

log = logging.getLogger("qwenpt")


class TrainingHalted(RuntimeError):
    """The run stopped on purpose (divergence, repeated skips, a loss spike); the message says why."""


@dataclass(frozen=True)
class Injection:
    """A test-only fault: multiply the loss or the gradients by ``factor`` at steps first..last
    (on ``rank``, or every rank when None), or hang at that step."""

    where: str  # loss | grad | hang
    factor: float
    first: int
    last: int
    rank: Optional[int]

    def fires(self, step: int, rank: int) -> bool:
        return self.first <= step <= self.last and self.rank in (None, rank)


_INJECTION = re.compile(r"^(?:(loss|grad)\*([^@]+)|(hang))@(\d+)(?:-(\d+))?(?:/(\d+))?$")


def parse_injections(spec: str) -> list[Injection]:
    """``train.guard.inject``: faults joined by ``+``."""
    out = []
    for part in re.split(r"\+(?=[a-z])", spec):
        m = _INJECTION.match(part.strip())
        if m is None:
            raise ConfigError(
                f"train.guard.inject {part!r} is not WHERE*FACTOR@STEPS[/RANK] (e.g. loss*nan@5, grad*inf@5-7/1) "
                "or hang@STEP[/RANK]"
            )
        where, factor, hang_, first, last, rank = m.groups()
        try:
            value = float(factor) if factor is not None else 1.0
        except ValueError:
            raise ConfigError(f"train.guard.inject {part!r}: factor {factor!r} is not nan, inf or a number") from None
        out.append(Injection(hang_ or where, value, int(first), int(last or first), None if rank is None else int(rank)))
    return out


def inject_loss(forward_step_func: Callable, factor: float) -> Callable:
    """The forward step with its loss multiplied by ``factor`` (NaN/Inf reach the gradients through backward)."""

    def step(data_iterator: Any, model: torch.nn.Module):
        output, loss_fn = forward_step_func(data_iterator, model)
        return output, lambda out: loss_fn(out * factor)

    return step


def inject_grads(finalize: Callable, model: list, factor: float) -> Callable:
    """``finalize_model_grads`` after multiplying this rank's first gradient by ``factor``: a fault on one
    rank before the data-parallel all-reduce, as a bad device would produce."""

    def injected(*args: Any, **kwargs: Any):
        param = next(p for p in model[0].parameters() if p.requires_grad)
        param.main_grad.mul_(factor)
        return finalize(*args, **kwargs)

    return injected


def hang() -> None:
    """Block like a rank stuck in a kernel or a collective that never returns (for the watchdog's test)."""
    while True:
        time.sleep(1)


class Guard:
    """Per-step checks on loss and grad norm; see the module docstring. ``protect_last_good`` is called
    when trouble begins, so that keep_last never rotates away the checkpoint saved before it."""

    def __init__(
        self, cfg: Any, optimizer: Any, consensus: Callable[[bool], bool], protect_last_good: Callable[[int], None]
    ) -> None:
        self.cfg = cfg
        self.consensus = consensus  # this rank's "non-finite" -> whether any rank saw one (the step's all-reduce)
        self.protect_last_good = protect_last_good
        self.loss = math.nan  # this step's loss, set before the optimizer step
        self.grad_norm: Optional[float] = None  # captured from the optimizer's own computation
        self.nonfinite: Optional[bool] = None  # the step's verdict, agreed by every rank
        self.skipped_total = 0
        self.in_a_row = 0
        self.recent: deque[float] = deque(maxlen=cfg.spike_window)
        self.injections = parse_injections(cfg.inject) if cfg.inject else []
        self._install(optimizer)

    def _install(self, optimizer: Any) -> None:
        for name in ("clip_grad_norm", "get_grad_norm"):  # FP32/mixed-precision optimizers, ChainedOptimizer
            setattr(optimizer, name, self._capture(getattr(optimizer, name)))
        update = optimizer.step_with_ready_grads

        def gated_update() -> bool:
            if self.grad_norm is None:  # optim.clip_grad = 0: megatron-core computed no norm
                self.grad_norm = float(optimizer.get_grad_norm())
            self.nonfinite = self.consensus(not self.finite())
            if self.nonfinite:
                return False  # weights, moments and Adam's step counter stay as they were
            return update()

        optimizer.step_with_ready_grads = gated_update

    def _capture(self, fn: Callable) -> Callable:
        def captured(*args: Any, **kwargs: Any):
            norm = fn(*args, **kwargs)
            self.grad_norm = float(norm)
            return norm

        return captured

    def finite(self) -> bool:
        return math.isfinite(self.loss) and self.grad_norm is not None and math.isfinite(self.grad_norm)

    def begin(self, loss: float) -> None:
        """Called after forward/backward with the step's loss, before ``optimizer.step()``."""
        self.loss, self.grad_norm, self.nonfinite = loss, None, None

    def injection_at(self, step: int, rank: int, where: str) -> Optional[float]:
        """The test-only fault to apply here, if one is configured (``train.guard.inject``)."""
        return next((i.factor for i in self.injections if i.where == where and i.fires(step, rank)), None)

    def with_injections(self, forward_step_func: Callable, finalize: Callable, model: list,
                        next_step: Callable[[], int], rank: int) -> tuple[Callable, Callable]:
        """The step's forward function and gradient finalisation wrapped once, at set-up, with the test-only
        faults of ``train.guard.inject``: each looks up the step it runs in (``next_step()``). Without
        injections the loop uses the functions unwrapped."""

        def forward(data_iterator: Any, chunk: torch.nn.Module):
            step = next_step()
            if self.injection_at(step, rank, "hang") is not None:
                hang()
            factor = self.injection_at(step, rank, "loss")
            return (forward_step_func if factor is None else inject_loss(forward_step_func, factor))(data_iterator, chunk)

        def finalize_grads(*args: Any, **kwargs: Any):
            factor = self.injection_at(next_step(), rank, "grad")
            return (finalize if factor is None else inject_grads(finalize, model, factor))(*args, **kwargs)

        return forward, finalize_grads

    def end(self, step: int, last_good: Callable[[], str]) -> bool:
        """After the optimizer step: count, log, or stop (:class:`TrainingHalted`). Returns whether the
        step's update was skipped."""
        what = f"loss {self.loss:.4g}, grad norm {self.grad_norm:.4g}" if self.grad_norm is not None else f"loss {self.loss:.4g}"
        if self.nonfinite is None:  # the optimizer stopped before the update on its own (fp16 overflow)
            self.nonfinite = not self.finite()
        if self.nonfinite:
            self.skipped_total += 1
            self.in_a_row += 1
            if self.in_a_row == 1:
                self.protect_last_good(step)
            if self.cfg.nonfinite == "stop" or self.in_a_row >= self.cfg.max_skips_in_a_row:
                why = (
                    "train.guard.nonfinite=stop" if self.cfg.nonfinite == "stop"
                    else f"{self.in_a_row} non-finite steps in a row, train.guard.max_skips_in_a_row={self.cfg.max_skips_in_a_row}"
                )
                raise TrainingHalted(
                    f"step {step}: {what} is not finite; stopped ({why}) without applying the update, and nothing "
                    f"was saved from this state. Last good checkpoint: {last_good()}. Rerunning resumes from it; lower "
                    "optim.lr, or set train.guard.nonfinite=skip to skip such steps."
                )
            log.warning(
                "step %d: %s is not finite: update skipped (%d in a row, %d in all; train.guard.nonfinite=skip)",
                step, what, self.in_a_row, self.skipped_total,
            )
            return True
        self.in_a_row = 0
        if self.cfg.spike_factor > 0 and len(self.recent) >= min(10, self.cfg.spike_window):
            median = statistics.median(self.recent)
            if self.loss > self.cfg.spike_factor * median:
                self.protect_last_good(step)
                message = (
                    f"step {step}: loss spike: {self.loss:.4f} is above {self.cfg.spike_factor:g} x the running median "
                    f"{median:.4f} of the last {len(self.recent)} steps"
                )
                if self.cfg.spike_action == "stop":
                    raise TrainingHalted(f"{message}; stopped (train.guard.spike_action=stop). Last good checkpoint: {last_good()}.")
                log.warning("%s (train.guard.spike_action=warn: training goes on)", message)
                return False  # a spike does not enter the median it is judged against
        self.recent.append(self.loss)
        return False


def check_finite_parameters(model: list, group: Any = None) -> bool:
    """Whether every parameter on every rank is finite: one pass over the weights and one all-reduce,
    made only when a checkpoint is about to be written."""
    ok = all(bool(torch.isfinite(p).all()) for chunk in model for p in chunk.parameters())
    flag = torch.tensor([0 if ok else 1], dtype=torch.int32, device=next(model[0].parameters()).device)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX, group=group)
    return int(flag.item()) == 0


def validate(t: TrainConfig) -> None:
    """train.guard and train.watchdog in the user's terms (the injections parsed as the run will)."""
    g, w = t.guard, t.watchdog
    check(g.max_skips_in_a_row >= 1, f"train.guard.max_skips_in_a_row must be at least 1, got {g.max_skips_in_a_row}")
    check(g.spike_factor == 0 or g.spike_factor > 1, f"train.guard.spike_factor {g.spike_factor} must be 0 (off) or above 1")
    check(g.spike_window >= 1, f"train.guard.spike_window must be at least 1, got {g.spike_window}")
    if g.inject is not None:
        parse_injections(g.inject)
    check(w.factor >= 0 and w.min_s > 0, f"train.watchdog.factor {w.factor} must be >= 0 and min_s {w.min_s} positive")
    check(w.collective_timeout_s > 0, f"train.watchdog.collective_timeout_s must be positive, got {w.collective_timeout_s}")
