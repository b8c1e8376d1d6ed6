"""Parametric loss law L(N, D) = E + A/N^α + B/D^β, fitted as Chinchilla's Approach 3 does.

Hoffmann et al. (2022), Appendix D.2, as reconstructed by Besiroglu et al. (2024): minimise the
Huber loss (δ = 1e-3) of residuals between the log-sum-exp prediction

    log L̂ = LSE(a − α·log N, b − β·log D, e),   A = eᵃ, B = eᵇ, E = eᵉ

and log L, with L-BFGS started from a grid of initialisations, keeping the best. All 4,500 grid
points are scored in one vectorised pass and L-BFGS runs from the 32 best (running it from every
point gives the same optimum on the tests' data and takes minutes).
Confidence intervals come from refitting bootstrap resamples of the runs, in worker processes.

Fits run with OpenBLAS on one thread: L-BFGS-B's 5x5 linear algebra is too small to share, and
OpenBLAS's idle threads spin, which made one fit 10-20x slower on a busy 2-core machine.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Optional, Sequence, TypeVar

import numpy as np
from scipy.optimize import minimize
from scipy.special import logsumexp

# Hoffmann et al.'s initialisation grid (Appendix D.2).
GRID = {
    "alpha": (0.0, 0.5, 1.0, 1.5, 2.0),
    "beta": (0.0, 0.5, 1.0, 1.5, 2.0),
    "e": (-1.0, -0.5, 0.0, 0.5, 1.0),
    "a": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
    "b": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
}
PARAMS = ("E", "A", "B", "alpha", "beta")
BOOTSTRAP_REFINE = 4  # L-BFGS runs per bootstrap refit: the best 4 of the full-data optimum and the coarse grid
T = TypeVar("T")


@dataclass
class LossLawFit:
    E: float
    A: float
    B: float
    alpha: float
    beta: float
    objective: float
    n_points: int
    intervals: dict = field(default_factory=dict)  # name -> (low, high) at `confidence`
    confidence: Optional[float] = None
    samples: Optional[np.ndarray] = None  # bootstrap refits: rows of (E, A, B, alpha, beta)

    def predict(self, N: np.ndarray | float, D: np.ndarray | float) -> np.ndarray:
        N, D = np.asarray(N, dtype=float), np.asarray(D, dtype=float)
        return self.E + self.A / N**self.alpha + self.B / D**self.beta

    def predict_band(self, N: np.ndarray | float, D: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """Percentile band of the prediction over the bootstrap refits, at the fit's confidence."""
        if self.samples is None:
            raise ValueError("no bootstrap samples: fit with bootstrap > 0")
        N, D = np.asarray(N, dtype=float)[..., None], np.asarray(D, dtype=float)[..., None]
        E, A, B, alpha, beta = self.samples.T
        preds = E + A / N**alpha + B / D**beta
        q = (1 - (self.confidence or 0.8)) / 2 * 100
        return np.percentile(preds, q, axis=-1), np.percentile(preds, 100 - q, axis=-1)

    @property
    def a(self) -> float:
        """N_opt ∝ C^a under C = 6ND."""
        return self.beta / (self.alpha + self.beta)

    @property
    def b(self) -> float:
        """D_opt ∝ C^b under C = 6ND."""
        return self.alpha / (self.alpha + self.beta)

    def compute_optimal(self, C: np.ndarray | float, flops_per_param_token: float = 6.0) -> tuple[np.ndarray, np.ndarray]:
        """(N_opt, D_opt) minimising L at compute C = k·N·D (k = 6 by default, or the exact FLOPs
        per parameter-token from :mod:`qwenpt.flops` for a given architecture)."""
        C = np.asarray(C, dtype=float) / flops_per_param_token
        G = (self.alpha * self.A / (self.beta * self.B)) ** (1.0 / (self.alpha + self.beta))
        return G * C**self.a, C**self.b / G

    def as_dict(self) -> dict:
        out = {k: getattr(self, k) for k in PARAMS}
        out.update(a=self.a, b=self.b, objective=self.objective, n_points=self.n_points)
        if self.intervals:
            out["confidence"] = self.confidence
            out["intervals"] = {k: list(v) for k, v in self.intervals.items()}
        return out


def replicate_noise(first: Sequence[float], second: Sequence[float]) -> float:
    """Run-to-run noise of one final loss, as a standard deviation of log-loss, from pairs of
    replicate runs (same N and D, another seed): sqrt(mean((ln a - ln b)^2) / 2)."""
    a, b = np.log(np.asarray(first, dtype=float)), np.log(np.asarray(second, dtype=float))
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"need pairs of replicate losses, got {a.size} and {b.size}")
    return float(np.sqrt(np.mean((a - b) ** 2) / 2))


def log_residual_rms(fit: "LossLawFit", N: Sequence[float], D: Sequence[float], L: Sequence[float]) -> float:
    """Root-mean-square of ln(predicted) - ln(actual) over the points."""
    r = np.log(fit.predict(np.asarray(N, float), np.asarray(D, float))) - np.log(np.asarray(L, float))
    return float(np.sqrt(np.mean(r**2)))


def huber_delta_for(residual_rms: float, noise: float) -> float:
    """The Huber threshold the data call for. Chinchilla's δ = 1e-3 treats residuals above 0.1% as
    outliers, which is right when points are noisy. When the residuals of a fit are many times the
    replicate noise (here > 3x), they are the law's misfit, not outliers: every point should pull,
    so least squares (δ = 1: any log residual below e-fold is quadratic). Otherwise Huber's 95%-
    efficiency tuning, δ = 1.345 σ."""
    return 1.0 if residual_rms > 3 * noise else 1.345 * noise


def _huber(r: np.ndarray, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """Huber loss of residuals and its derivative."""
    small = np.abs(r) <= delta
    loss = np.where(small, 0.5 * r**2, delta * (np.abs(r) - 0.5 * delta))
    grad = np.where(small, r, delta * np.sign(r))
    return loss, grad


def _objective(theta: np.ndarray, logN: np.ndarray, logD: np.ndarray, logL: np.ndarray, delta: float):
    a, b, e, alpha, beta = theta
    terms = np.stack([a - alpha * logN, b - beta * logD, np.full_like(logN, e)])
    lse = logsumexp(terms, axis=0)
    loss, dloss = _huber(lse - logL, delta)
    w = np.exp(terms - lse)  # softmax weights: ∂LSE/∂term
    grad = np.array(
        [
            np.sum(dloss * w[0]),
            np.sum(dloss * w[1]),
            np.sum(dloss * w[2]),
            np.sum(dloss * w[0] * -logN),
            np.sum(dloss * w[1] * -logD),
        ]
    )
    return loss.sum(), grad


def _grid_values(starts: np.ndarray, logN, logD, logL, delta: float) -> np.ndarray:
    """The objective at every start at once ([S, 5] -> [S])."""
    a, b, e, alpha, beta = (starts[:, i : i + 1] for i in range(5))
    terms = np.stack([a - alpha * logN, b - beta * logD, np.broadcast_to(e, (len(starts), len(logN)))])
    return _huber(logsumexp(terms, axis=0) - logL, delta)[0].sum(axis=1)


def _openblas_thread_setters() -> list[tuple]:
    """(get, set) of the thread count of every OpenBLAS loaded in this process (numpy's and scipy's
    each bundle one); empty where none is found (another BLAS, or not Linux)."""
    pairs = []
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "openblas" in line.rsplit("/", 1)[-1]}
    except OSError:
        return pairs
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in ("scipy_openblas_{}_num_threads64_", "scipy_openblas_{}_num_threads", "openblas_{}_num_threads"):
            if hasattr(lib, name.format("get")) and hasattr(lib, name.format("set")):
                pairs.append((getattr(lib, name.format("get")), getattr(lib, name.format("set"))))
                break
    return pairs


def blas_threads() -> list[int]:
    """Thread counts of the loaded OpenBLAS libraries."""
    return [int(get()) for get, _ in _openblas_thread_setters()]


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """OpenBLAS on one thread inside, as it was after (see the module docstring for why)."""
    pairs = _openblas_thread_setters()
    before = [int(get()) for get, _ in pairs]
    for _, set_threads in pairs:
        set_threads(ctypes.c_int(1))
    try:
        yield
    finally:
        for (_, set_threads), n in zip(pairs, before):
            set_threads(ctypes.c_int(n))


def _fit_once(
    logN, logD, logL, delta: float, starts: Sequence[np.ndarray], refine: int = 32
) -> tuple[np.ndarray, float]:
    """L-BFGS from the ``refine`` grid points with the lowest objective (all are scored first)."""
    starts = np.asarray(starts, dtype=float)
    order = np.argsort(_grid_values(starts, logN, logD, logL, delta))[:refine]
    best, best_val = None, np.inf
    for x0 in starts[order]:
        # L-BFGS-B's ftol is relative to max(|f|, 1): the objective here is ~1e-4, so tighten it
        res = minimize(_objective, x0, args=(logN, logD, logL, delta), jac=True, method="L-BFGS-B",
                       options={"ftol": 1e-15, "gtol": 1e-10, "maxiter": 5000})
        if res.fun < best_val:
            best, best_val = res.x, res.fun
    return best, float(best_val)


def _progress(items: Iterable[T], total: int, label: str) -> Iterator[T]:
    """``items``, reporting progress on stderr: a tqdm bar on a terminal, else a line every 10%."""
    if sys.stderr.isatty():
        from tqdm import tqdm

        yield from tqdm(items, total=total, desc=label, file=sys.stderr)
        return
    every, start = max(1, math.ceil(total / 10)), time.perf_counter()
    for i, item in enumerate(items, 1):
        yield item
        if i % every == 0 or i == total:
            print(f"{label} {i}/{total} ({time.perf_counter() - start:.1f} s)", file=sys.stderr, flush=True)


def _usable_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _bootstrap_refit(args: tuple) -> tuple[np.ndarray, float]:
    """One bootstrap refit; a top-level function so worker processes can run it."""
    logN, logD, logL, delta, starts = args
    with one_blas_thread():
        return _fit_once(logN, logD, logL, delta, starts, refine=BOOTSTRAP_REFINE)


def _bootstrap_fits(jobs: list[tuple], workers: int, progress: bool) -> list[tuple[np.ndarray, float]]:
    """The refits in order, over ``workers`` processes (1: in this one)."""
    with contextlib.ExitStack() as stack:
        if workers > 1:
            pool = stack.enter_context(ProcessPoolExecutor(workers))
            done = pool.map(_bootstrap_refit, jobs)
        else:
            done = map(_bootstrap_refit, jobs)
        return list(_progress(done, len(jobs), "bootstrap") if progress else done)


def grid_starts(grid: dict = GRID) -> list[np.ndarray]:
    return [np.array([a, b, e, al, be]) for al, be, e, a, b in itertools.product(
        grid["alpha"], grid["beta"], grid["e"], grid["a"], grid["b"])]


def _to_fit(theta: np.ndarray, objective: float, n: int) -> LossLawFit:
    a, b, e, alpha, beta = theta
    return LossLawFit(E=float(np.exp(e)), A=float(np.exp(a)), B=float(np.exp(b)), alpha=float(alpha),
                      beta=float(beta), objective=objective, n_points=n)


def fit_loss_law(
    N: Sequence[float],
    D: Sequence[float],
    L: Sequence[float],
    *,
    delta: float = 1e-3,
    bootstrap: int = 0,
    confidence: float = 0.8,
    seed: int = 0,
    grid: dict = GRID,
    refine: int = 32,
    workers: Optional[int] = None,
    progress: bool = True,
) -> LossLawFit:
    """Fit L(N, D); with ``bootstrap`` > 0, percentile intervals from refits on resampled points
    (each refit starts from the full-data optimum and a coarse grid, which finds the same basin).
    ``refine``: how many of the best grid points L-BFGS starts from (4 finds the same optimum on the
    tests' data in a tenth of the time). ``workers``: processes for the bootstrap refits (default:
    the CPUs this process may use); the resamples are drawn up front from ``seed``, so the intervals
    do not depend on it. ``progress``: report the bootstrap on stderr (it takes seconds to minutes)."""
    N, D, L = (np.asarray(x, dtype=float) for x in (N, D, L))
    if not (len(N) == len(D) == len(L)):
        raise ValueError(f"N, D and L must have the same length, got {len(N)}, {len(D)}, {len(L)}")
    for name, x in (("N", N), ("D", D), ("L", L)):
        bad = np.flatnonzero(~(np.isfinite(x) & (x > 0)))
        if len(bad):
            raise ValueError(f"{name} must be positive and finite; rows {bad[:10].tolist()} are {x[bad[:10]].tolist()}")
    logN, logD, logL = np.log(N), np.log(D), np.log(L)
    if len(logN) < 5:
        raise ValueError(f"fitting 5 parameters needs at least 5 points, got {len(logN)}")
    with one_blas_thread():
        theta, val = _fit_once(logN, logD, logL, delta, grid_starts(grid), refine=refine)
    fit = _to_fit(theta, val, len(logN))
    if bootstrap:
        rng = np.random.default_rng(seed)
        coarse = {k: v[:: 2] for k, v in grid.items()}
        starts = [theta] + grid_starts(coarse)
        draws = [rng.integers(0, len(logN), len(logN)) for _ in range(bootstrap)]
        jobs = [(logN[idx], logD[idx], logL[idx], delta, starts) for idx in draws]
        workers = min(bootstrap, workers or _usable_cpus())
        samples = []
        for t, v in _bootstrap_fits(jobs, workers, progress):
            f = _to_fit(t, v, len(logN))
            samples.append([getattr(f, k) for k in PARAMS] + [f.a, f.b])
        s = np.array(samples)
        lo, hi = (1 - confidence) / 2 * 100, (1 + confidence) / 2 * 100
        names = list(PARAMS) + ["a", "b"]
        fit.intervals = {k: (float(np.percentile(s[:, i], lo)), float(np.percentile(s[:, i], hi))) for i, k in enumerate(names)}
        fit.confidence = confidence
        fit.samples = s[:, :5]
    return fit
