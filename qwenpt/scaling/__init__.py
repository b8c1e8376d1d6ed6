"""Scaling-law fits on model size, data size and data mix, and the run table they read.

``laws`` (Chinchilla Approach 3), ``frontier`` (Approaches 1 and 2), ``mixing`` (data-mixing laws),
``runs`` (train.py runs -> table); ``python -m qwenpt.scaling`` is the command line.
"""

from qwenpt.scaling.frontier import ExponentFit, fit_envelope, fit_isoflop
from qwenpt.scaling.laws import LossLawFit, fit_loss_law, huber_delta_for, log_residual_rms, replicate_noise
from qwenpt.scaling.mixing import MixingLaw, best_mixture, extrapolate_mixtures, fit_mixing_law, rank_agreement

__all__ = [
    "huber_delta_for",
    "log_residual_rms",
    "replicate_noise",
    "ExponentFit", "LossLawFit", "MixingLaw", "best_mixture", "extrapolate_mixtures", "fit_envelope",
    "fit_isoflop", "fit_loss_law", "fit_mixing_law", "rank_agreement",
]
