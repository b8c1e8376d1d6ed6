"""Data-mixing laws: per-domain loss as a function of the training mixture (Ye et al. 2024).

    L_i(r) = c_i + k_i · exp(Σ_j t_ij · r_j)

over mixture proportions r (on the simplex). One fit per validation domain i, by least squares on
(mixture, loss) pairs from small proxy runs, from a few starts. The fitted law predicts the loss
of an unseen mixture, and :func:`best_mixture` searches the simplex for the mixture minimising a
weighted sum of domain losses (e.g. the average over languages, or one language), optionally with
per-domain caps (a language with little data can only be repeated so often).

:func:`extrapolate_mixtures` combines it with the size law: fit L(N, D) per mixture and domain on
small runs, predict each mixture's losses at the target (N, D), and fit the mixing law on those
(Ye et al.'s nested pipeline).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
from scipy.optimize import least_squares, minimize
from scipy.stats import spearmanr


@dataclass
class DomainLaw:
    c: float
    k: float
    t: np.ndarray  # one coefficient per training domain
    rmse: float

    def predict(self, r: np.ndarray) -> np.ndarray:
        return self.c + self.k * np.exp(np.asarray(r, float) @ self.t)


@dataclass
class MixingLaw:
    train_domains: list[str]  # columns of r
    laws: dict[str, DomainLaw]  # validation domain -> its law

    def predict(self, r: np.ndarray) -> dict[str, np.ndarray]:
        r = np.atleast_2d(np.asarray(r, float))
        return {d: law.predict(r) for d, law in self.laws.items()}

    def as_dict(self) -> dict:
        return {
            "train_domains": self.train_domains,
            "laws": {d: {"c": l.c, "k": l.k, "t": dict(zip(self.train_domains, l.t.tolist())), "rmse": l.rmse} for d, l in self.laws.items()},
        }


def fit_domain_law(r: np.ndarray, loss: np.ndarray, ridge: float = 1e-4) -> DomainLaw:
    """Least squares for one domain. ``ridge`` pins the direction Σ_j t_j that Σ_j r_j = 1 makes
    redundant with k (and keeps t finite when a domain's data never varies)."""
    r, loss = np.asarray(r, float), np.asarray(loss, float)
    n, m = r.shape
    if n < m + 2:
        raise ValueError(f"mixing law: {m + 2} parameters per domain need more than {n} mixtures")

    def residuals(p: np.ndarray) -> np.ndarray:
        c, logk, t = p[0], p[1], p[2:]
        pred = c + np.exp(logk + r @ t)
        return np.concatenate([pred - loss, np.sqrt(ridge) * t])

    best = None
    lo = float(loss.min())
    for frac in (0.0, 0.5, 0.9):
        c0 = frac * lo
        p0 = np.concatenate([[c0, np.log(max(float(loss.mean()) - c0, 1e-6))], np.zeros(m)])
        res = least_squares(residuals, p0, method="trf", x_scale="jac", max_nfev=2000,
                            bounds=(np.r_[-np.inf, -np.inf, np.full(m, -50.0)], np.r_[lo, np.inf, np.full(m, 50.0)]))
        if best is None or res.cost < best.cost:
            best = res
    c, logk, t = best.x[0], best.x[1], best.x[2:]
    rmse = float(np.sqrt(np.mean((c + np.exp(logk + r @ t) - loss) ** 2)))
    return DomainLaw(c=float(c), k=float(np.exp(logk)), t=t, rmse=rmse)


def fit_mixing_law(r: np.ndarray, losses: Mapping[str, Sequence[float]], train_domains: Sequence[str] | None = None) -> MixingLaw:
    """One :class:`DomainLaw` per validation domain in ``losses`` (domain -> loss per mixture row)."""
    r = np.asarray(r, float)
    names = list(train_domains) if train_domains is not None else [f"r{j}" for j in range(r.shape[1])]
    return MixingLaw(names, {d: fit_domain_law(r, np.asarray(v, float)) for d, v in losses.items()})


def rank_agreement(law: MixingLaw, r: np.ndarray, losses: Mapping[str, Sequence[float]]) -> dict[str, dict]:
    """Per domain on held-out mixtures: Spearman's ρ of predicted vs actual loss, and MAE."""
    pred = law.predict(r)
    out = {}
    for d, actual in losses.items():
        actual = np.asarray(actual, float)
        out[d] = {"spearman": float(spearmanr(pred[d], actual).statistic), "mae": float(np.mean(np.abs(pred[d] - actual)))}
    return out


def best_mixture(
    law: MixingLaw, target: Mapping[str, float] | None = None, max_share: Mapping[str, float] | None = None,
    starts: int = 16, seed: int = 0,
) -> tuple[dict[str, float], float]:
    """The mixture minimising Σ_i w_i L_i(r) (``target``: domain -> w_i; default the mean over
    domains) on the simplex, with optional per-training-domain caps; SLSQP from several starts."""
    names = law.train_domains
    target = dict(target) if target else {d: 1.0 / len(law.laws) for d in law.laws}
    unknown = sorted(set(target) - set(law.laws))
    if unknown:
        raise ValueError(f"target names {unknown}, which the law was not fitted on; it has {sorted(law.laws)}")
    caps = np.array([(max_share or {}).get(n, 1.0) for n in names])
    if caps.sum() < 1:
        raise ValueError(f"max_share caps sum to {caps.sum():.3f} < 1: no mixture satisfies them")
    w = {d: float(v) for d, v in target.items()}

    def objective(r: np.ndarray) -> tuple[float, np.ndarray]:
        f, g = 0.0, np.zeros_like(r)
        for d, wd in w.items():
            law_d = law.laws[d]
            e = law_d.k * np.exp(r @ law_d.t)
            f += wd * (law_d.c + e)
            g += wd * e * law_d.t
        return f, g

    rng = np.random.default_rng(seed)
    m = len(names)
    candidates = [np.full(m, 1.0 / m)] + [rng.dirichlet(np.ones(m)) for _ in range(starts - 1)]
    best_r, best_f = None, np.inf
    for r0 in candidates:
        r0 = np.minimum(r0, caps)
        r0 = r0 / r0.sum()
        res = minimize(objective, r0, jac=True, method="SLSQP", bounds=list(zip(np.zeros(m), caps)),
                       constraints=[{"type": "eq", "fun": lambda r: r.sum() - 1.0, "jac": lambda r: np.ones_like(r)}],
                       options={"maxiter": 500, "ftol": 1e-12})
        if res.success and res.fun < best_f:
            best_r, best_f = res.x, float(res.fun)
    if best_r is None:
        raise ValueError("mixture search did not converge from any start")
    best_r = np.clip(best_r, 0, None)
    best_r /= best_r.sum()
    return dict(zip(names, best_r.tolist())), best_f


def extrapolate_mixtures(
    mixtures: np.ndarray, runs: Sequence[Mapping], target_N: float, target_D: float, train_domains: Sequence[str],
    refine: int = 8,
) -> tuple[MixingLaw, dict[str, np.ndarray]]:
    """Ye et al.'s nested pipeline. ``runs``: one mapping per (mixture index, N, D) with keys
    ``mix`` (row of ``mixtures``), ``N``, ``D`` and ``losses`` (domain -> loss). Fits L(N, D) per
    mixture and domain, predicts at (target_N, target_D), fits the mixing law on those predictions.
    Returns the law and the predicted losses (domain -> per mixture)."""
    from qwenpt.scaling.laws import fit_loss_law

    mixtures = np.asarray(mixtures, float)
    domains = sorted({d for run in runs for d in run["losses"]})
    predicted = {d: np.zeros(len(mixtures)) for d in domains}
    for i in range(len(mixtures)):
        mine = [run for run in runs if run["mix"] == i]
        for d in domains:
            if len(mine) < 5:
                raise ValueError(f"mixture {i}: {len(mine)} runs; the size law needs 5 or more (N, D) points per mixture")
            fit = fit_loss_law([x["N"] for x in mine], [x["D"] for x in mine], [x["losses"][d] for x in mine], refine=refine)
            predicted[d][i] = float(fit.predict(target_N, target_D))
    return fit_mixing_law(mixtures, predicted, train_domains), predicted
