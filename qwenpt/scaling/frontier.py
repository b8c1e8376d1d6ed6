"""Compute-optimal exponents from runs directly: Chinchilla's Approaches 1 and 2.

Both give N_opt ∝ C^a and D_opt ∝ C^b (C = k·N·D, k = 6 by default) with bootstrap intervals:

- Approach 1 (:func:`fit_envelope`): the lower envelope of training curves. At each of a grid of
  FLOP budgets, every run whose curve reaches it is interpolated (loss linear in log C) and the
  lowest loss names N_opt(C). Intermediate points of a run scheduled for longer are pessimistic
  (its LR has not decayed), as in the paper; use runs whose schedules end at their last point.
- Approach 2 (:func:`fit_isoflop`): runs grouped by FLOP budget, a parabola of loss in log N per
  budget, N_opt at its minimum.

Then ``log N_opt = a·log C + const`` by least squares; intervals resample runs with replacement.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np


@dataclass
class ExponentFit:
    """N_opt = exp(n0)·C^a, D_opt = exp(d0)·C^b, from per-budget optima."""

    method: str
    a: float
    b: float
    n0: float
    d0: float
    budgets: list  # per budget: {"C", "N_opt", "D_opt", "loss"}
    intervals: dict = field(default_factory=dict)  # "a"/"b" -> (low, high)
    confidence: float | None = None

    def N_opt(self, C: np.ndarray | float) -> np.ndarray:
        return np.exp(self.n0) * np.asarray(C, dtype=float) ** self.a

    def D_opt(self, C: np.ndarray | float) -> np.ndarray:
        return np.exp(self.d0) * np.asarray(C, dtype=float) ** self.b

    def as_dict(self) -> dict:
        out = {"method": self.method, "a": self.a, "b": self.b, "n0": self.n0, "d0": self.d0, "budgets": self.budgets}
        if self.intervals:
            out.update(confidence=self.confidence, intervals={k: list(v) for k, v in self.intervals.items()})
        return out


def _power_fit(C: np.ndarray, X: np.ndarray) -> tuple[float, float]:
    slope, intercept = np.polyfit(np.log(C), np.log(X), 1)
    return float(slope), float(intercept)


def _exponents(method: str, optima: list[dict]) -> ExponentFit:
    if len(optima) < 2:
        raise ValueError(f"{method}: need optima at 2 or more FLOP budgets, found {len(optima)}")
    C = np.array([o["C"] for o in optima])
    a, n0 = _power_fit(C, np.array([o["N_opt"] for o in optima]))
    b, d0 = _power_fit(C, np.array([o["D_opt"] for o in optima]))
    return ExponentFit(method=method, a=a, b=b, n0=n0, d0=d0, budgets=optima)


def _bootstrap(fit: ExponentFit, groups: list[np.ndarray], refit, n: int, confidence: float, seed: int) -> ExponentFit:
    """Percentile intervals for a and b, resampling whole runs (``groups``: row indices per run)."""
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(n):
        pick = rng.integers(0, len(groups), len(groups))
        try:
            f = refit([groups[i] for i in pick])
        except ValueError:  # a resample that leaves a budget without a usable optimum
            continue
        samples.append((f.a, f.b))
    if len(samples) < max(10, n // 2):
        raise ValueError(f"{fit.method}: only {len(samples)} of {n} bootstrap resamples could be fitted; add runs")
    s = np.array(samples)
    lo, hi = (1 - confidence) / 2 * 100, (1 + confidence) / 2 * 100
    fit.intervals = {k: (float(np.percentile(s[:, i], lo)), float(np.percentile(s[:, i], hi))) for i, k in enumerate("ab")}
    fit.confidence = confidence
    return fit


def envelope_optima(
    run: Sequence, N: Sequence[float], D: Sequence[float], L: Sequence[float], *, budgets: int = 40,
    flops_per_param_token: float = 6.0,
) -> list[dict]:
    """Approach 1's per-budget optima from training curves (rows: one evaluation of one run)."""
    run, N, D, L = np.asarray(run), np.asarray(N, float), np.asarray(D, float), np.asarray(L, float)
    curves = []
    for r in dict.fromkeys(run.tolist()):
        m = run == r
        order = np.argsort(D[m])
        logC = np.log(flops_per_param_token * N[m][order] * D[m][order])
        curves.append((float(N[m][0]), logC, L[m][order]))
    lo = min(c[1][0] for c in curves)
    hi = max(c[1][-1] for c in curves)
    optima = []
    for logc in np.linspace(lo, hi, budgets):
        best = None
        covering = [c for c in curves if c[1][0] <= logc <= c[1][-1]]
        if len(covering) < 2:
            continue  # one curve alone says nothing about the optimum
        for n, logC, losses in covering:
            loss = float(np.interp(logc, logC, losses))
            if best is None or loss < best[1]:
                best = (n, loss)
        C = float(np.exp(logc))
        optima.append({"C": C, "N_opt": best[0], "D_opt": C / (flops_per_param_token * best[0]), "loss": best[1]})
    return optima


def fit_envelope(
    run: Sequence, N: Sequence[float], D: Sequence[float], L: Sequence[float], *, budgets: int = 40,
    flops_per_param_token: float = 6.0, bootstrap: int = 0, confidence: float = 0.8, seed: int = 0,
) -> ExponentFit:
    """Chinchilla Approach 1 on training curves."""
    run, N, D, L = np.asarray(run), np.asarray(N, float), np.asarray(D, float), np.asarray(L, float)

    def refit(draws: list[np.ndarray]) -> ExponentFit:
        ids = np.concatenate([[f"{k}"] * len(g) for k, g in enumerate(draws)])  # a run drawn twice is two curves
        rows = np.concatenate(draws)
        return _exponents("envelope", envelope_optima(ids, N[rows], D[rows], L[rows], budgets=budgets,
                                                      flops_per_param_token=flops_per_param_token))

    fit = _exponents("envelope", envelope_optima(run, N, D, L, budgets=budgets, flops_per_param_token=flops_per_param_token))
    if bootstrap:
        groups = [np.flatnonzero(run == r) for r in dict.fromkeys(run.tolist())]
        fit = _bootstrap(fit, groups, refit, bootstrap, confidence, seed)
    return fit


def isoflop_optima(
    N: Sequence[float], D: Sequence[float], L: Sequence[float], *, flops_per_param_token: float = 6.0,
    rel_tol: float = 0.1, min_points: int = 3,
) -> list[dict]:
    """Approach 2's per-budget optima: final points grouped by C (within ``rel_tol``), a parabola in
    log N each; budgets whose parabola opens downward (no interior minimum) are skipped."""
    N, D, L = np.asarray(N, float), np.asarray(D, float), np.asarray(L, float)
    C = flops_per_param_token * N * D
    order = np.argsort(C)
    groups, current = [], [order[0]]
    for i in order[1:]:
        if C[i] <= C[current[0]] * (1 + rel_tol):
            current.append(i)
        else:
            groups.append(current)
            current = [i]
    groups.append(current)
    optima = []
    for g in groups:
        g = np.asarray(g)
        if len(np.unique(N[g])) < min_points:
            continue
        x = np.log(N[g])
        p2, p1, p0 = np.polyfit(x, L[g], 2)
        if p2 <= 0:
            continue
        x_opt = -p1 / (2 * p2)
        c = float(np.exp(np.mean(np.log(C[g]))))
        n_opt = float(np.exp(x_opt))
        optima.append({"C": c, "N_opt": n_opt, "D_opt": c / (flops_per_param_token * n_opt), "loss": float(p0 + p1 * x_opt + p2 * x_opt**2)})
    return optima


def fit_isoflop(
    N: Sequence[float], D: Sequence[float], L: Sequence[float], *, flops_per_param_token: float = 6.0,
    rel_tol: float = 0.1, bootstrap: int = 0, confidence: float = 0.8, seed: int = 0,
) -> ExponentFit:
    """Chinchilla Approach 2 on final points (one per run)."""
    N, D, L = np.asarray(N, float), np.asarray(D, float), np.asarray(L, float)

    def refit(draws: list[np.ndarray]) -> ExponentFit:
        rows = np.concatenate(draws)
        return _exponents("isoflop", isoflop_optima(N[rows], D[rows], L[rows], flops_per_param_token=flops_per_param_token, rel_tol=rel_tol))

    fit = refit([np.arange(len(N))])
    if bootstrap:
        fit = _bootstrap(fit, [np.array([i]) for i in range(len(N))], refit, bootstrap, confidence, seed)
    return fit
