"""Shared by tests/unit/test_scaling.py and tests/integration/test_scaling.py."""

from __future__ import annotations

import numpy as np

from conftest import ROOT
from qwenpt.scaling.laws import LossLawFit

# Epoch AI's refit of Chinchilla (Besiroglu et al. 2024).
EPOCH = LossLawFit(E=1.82, A=482.01, B=2085.43, alpha=0.3478, beta=0.3658, objective=0.0, n_points=0)

PUBLISHED = ROOT / "analysis" / "data" / "published"  # real runs from elsewhere, with their licences

REGMIX = PUBLISHED / "regmix"


def isoflop_design(law: LossLawFit, budgets=(1e18, 1e19, 1e20, 1e21, 1e22), per_budget: int = 7):
    N, D = [], []
    for C in budgets:
        n_opt, _ = law.compute_optimal(C)
        for f in np.geomspace(1 / 8, 8, per_budget):
            N.append(n_opt * f)
            D.append(C / (6 * n_opt * f))
    return np.array(N), np.array(D)
