"""LR schedules: the values megatron-core's scheduler gives, against hand-computed ones."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from qwenpt.config import OptimConfig
from qwenpt.training.optim import build_scheduler


def lrs(optim: OptimConfig, steps: int) -> list[float]:
    """lr applied at steps 1..steps, stepping the scheduler as the training loop does."""
    opt = SimpleNamespace(param_groups=[{"params": []}])
    sched = build_scheduler(optim, steps, opt)
    out = []
    for _ in range(steps):
        sched.step(increment=1)
        out.append(opt.param_groups[0]["lr"])
    return out


def test_warmup_then_cosine():
    got = lrs(OptimConfig(lr=1e-3, min_lr=1e-4, warmup_steps=10, schedule="cosine"), 110)
    assert got[0] == pytest.approx(1e-4)  # step 1 of 10 warmup steps: 1e-3 / 10
    assert got[9] == pytest.approx(1e-3)  # peak at the end of warmup
    assert got[59] == pytest.approx(1e-4 + 0.5 * (math.cos(math.pi * 0.5) + 1) * 9e-4)  # halfway: 5.5e-4
    assert got[-1] == pytest.approx(1e-4)


def test_warmup_stable_decay():
    got = lrs(OptimConfig(lr=1e-3, min_lr=1e-4, warmup_steps=10, schedule="wsd", wsd_decay_fraction=0.2), 100)
    assert got[9] == pytest.approx(1e-3)
    assert all(x == pytest.approx(1e-3) for x in got[9:80])  # stable until 80% of training
    assert got[89] == pytest.approx(1e-4 + 0.5 * 9e-4)  # linear decay, halfway at step 90
    assert got[99] == pytest.approx(1e-4)
