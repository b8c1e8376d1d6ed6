"""Scaling-law fits: known laws recovered with covering intervals; real published data reproduced."""

from __future__ import annotations

import csv
import gzip
import re

import numpy as np
import pytest
from scipy.optimize import minimize_scalar

from qwenpt.scaling.frontier import fit_envelope, fit_isoflop
from qwenpt.scaling.laws import fit_loss_law, huber_delta_for, log_residual_rms, replicate_noise
from qwenpt.scaling.mixing import best_mixture, fit_mixing_law, rank_agreement

from helpers.scaling import EPOCH, PUBLISHED, REGMIX, isoflop_design

OLMO = PUBLISHED / "olmo-ladder" / "peteish-moreeval"


def test_noiseless_points_give_the_law_back():
    N, D = isoflop_design(EPOCH)
    fit = fit_loss_law(N, D, EPOCH.predict(N, D))
    for k in ("E", "A", "B", "alpha", "beta"):
        assert getattr(fit, k) == pytest.approx(getattr(EPOCH, k), rel=2e-3), k


def test_epoch_chinchilla_fit_recovered_from_noisy_points_and_intervals_cover_it():
    rng = np.random.default_rng(0)
    N, D = isoflop_design(EPOCH)
    L = EPOCH.predict(N, D) * np.exp(rng.normal(0, 0.003, len(N)))  # 0.3% noise
    fit = fit_loss_law(N, D, L, bootstrap=30, confidence=0.95)
    assert fit.E == pytest.approx(1.82, rel=0.01)
    assert fit.alpha == pytest.approx(0.3478, abs=0.01) and fit.beta == pytest.approx(0.3658, abs=0.01)
    assert fit.a == pytest.approx(EPOCH.a, abs=0.005)
    for k in ("E", "A", "B", "alpha", "beta", "a", "b"):
        lo, hi = fit.intervals[k]
        assert lo <= getattr(EPOCH, k) <= hi, (k, lo, hi)


def test_compute_optimal_allocation_minimises_loss_at_fixed_compute():
    for C in (1e19, 1e23):
        n_opt, d_opt = EPOCH.compute_optimal(C)
        assert 6 * n_opt * d_opt == pytest.approx(C)
        res = minimize_scalar(lambda x: EPOCH.predict(np.exp(x), C / (6 * np.exp(x))), bounds=(10, 40), method="bounded",
                              options={"xatol": 1e-10})
        assert np.log(n_opt) == pytest.approx(res.x, abs=1e-4)
    # exact FLOPs per parameter-token (e.g. 7.2 with attention) moves the optimum as C/7.2 vs C/6
    n6, _ = EPOCH.compute_optimal(1e21)
    n72, _ = EPOCH.compute_optimal(1e21, flops_per_param_token=7.2)
    assert n72 / n6 == pytest.approx((6 / 7.2) ** EPOCH.a)


def test_isoflop_and_envelope_recover_the_exponents():
    rng = np.random.default_rng(1)
    N, D = isoflop_design(EPOCH, per_budget=9)
    L = EPOCH.predict(N, D) * np.exp(rng.normal(0, 0.002, len(N)))
    iso = fit_isoflop(N, D, L, bootstrap=200, confidence=0.95)
    assert iso.a == pytest.approx(EPOCH.a, abs=0.01) and iso.b == pytest.approx(EPOCH.b, abs=0.01)
    assert iso.intervals["a"][0] <= EPOCH.a <= iso.intervals["a"][1]
    assert len(iso.budgets) == 5

    runs, NN, DD, LL = [], [], [], []
    for i, n in enumerate(np.geomspace(1e7, 1e10, 16)):  # training curves up to 1e22 FLOPs
        for d in np.geomspace(1e22 / (6 * n) / 1000, 1e22 / (6 * n), 60):
            runs.append(f"run{i}")
            NN.append(n)
            DD.append(d)
            LL.append(float(EPOCH.predict(n, d)))
    env = fit_envelope(runs, NN, DD, LL, bootstrap=100, confidence=0.95)
    assert env.a == pytest.approx(EPOCH.a, abs=0.03)
    assert env.intervals["a"][0] <= EPOCH.a <= env.intervals["a"][1]


def _synthetic_mixing(rng, n_mix: int, m: int = 4, domains: int = 3):
    truth = {f"loss_{d}": (1.5 + 0.2 * d, 1.0 + 0.3 * d, rng.normal(0, 1.0, m) - 1.5 * np.eye(m)[d]) for d in range(domains)}
    r = rng.dirichlet(np.ones(m), n_mix)
    losses = {k: c + k_ * np.exp(r @ t) for k, (c, k_, t) in truth.items()}
    return truth, r, losses


def test_mixing_law_predicts_unseen_mixtures_and_finds_the_best_one():
    rng = np.random.default_rng(0)
    truth, r, losses = _synthetic_mixing(rng, 60)
    noisy = {k: v * np.exp(rng.normal(0, 0.002, len(v))) for k, v in losses.items()}
    law = fit_mixing_law(r, noisy, [f"r_{j}" for j in range(4)])
    r_test = np.random.default_rng(7).dirichlet(np.ones(4), 200)
    test = {k: c + k_ * np.exp(r_test @ t) for k, (c, k_, t) in truth.items()}
    agreement = rank_agreement(law, r_test, test)
    assert all(a["spearman"] > 0.99 for a in agreement.values()), agreement
    assert all(a["mae"] < 0.02 for a in agreement.values()), agreement

    # the search beats every one of 20,000 random mixtures on the mean loss
    best, value = best_mixture(law)
    assert sum(best.values()) == pytest.approx(1.0) and min(best.values()) >= 0
    samples = np.random.default_rng(3).dirichlet(np.ones(4), 20000)
    brute = np.mean([law.laws[d].predict(samples) for d in law.laws], axis=0).min()
    assert value <= brute + 1e-9
    capped, _ = best_mixture(law, max_share={"r_0": 0.1, "r_1": 0.1})
    assert capped["r_0"] <= 0.1 + 1e-6 and capped["r_1"] <= 0.1 + 1e-6


def _regmix(mixture_file: str, loss_file: str):
    mixes = {row["index"]: row for row in csv.DictReader(open(REGMIX / mixture_file))}
    losses = {row["index"]: row for row in csv.DictReader(open(REGMIX / loss_file))}
    idx = [i for i in mixes if i in losses]
    mcols = [c for c in next(iter(mixes.values())) if c != "index"]
    lcols = [c for c in next(iter(losses.values())) if c != "index"]
    r = np.array([[float(mixes[i][c]) for c in mcols] for i in idx])
    return mcols, r, {c: np.array([float(losses[i][c]) for i in idx]) for c in lcols}


def test_regmix_mixing_law_ranks_held_out_mixtures():
    """Ye et al.'s law fitted on RegMix's 512 training mixtures (1M models) ranks its 256 held-out
    mixtures per domain (RegMix's own LightGBM: 96.9-99.8, Pile-CC 98.9)."""
    mcols, r, losses = _regmix("train_mixture_1m.csv", "train_pile_loss_1m.csv")
    law = fit_mixing_law(r, losses, mcols)
    _, r_test, test = _regmix("test_mixture_1m.csv", "test_pile_loss_1m.csv")
    rho = {k.removeprefix("metric/the_pile_").removesuffix("_val_loss"): v["spearman"] for k, v in rank_agreement(law, r_test, test).items()}
    print("RegMix 1M held-out Spearman rho x100:", {k: round(100 * v, 2) for k, v in rho.items()})
    assert len(rho) == 13 and min(rho.values()) > 0.93 and rho["pile_cc"] > 0.95
    _, r_1b, test_1b = _regmix("test_mixture_1B.csv", "test_pile_loss_1B.csv")
    rho_1b = rank_agreement(law, r_1b, test_1b)["metric/the_pile_pile_cc_val_loss"]["spearman"]
    print(f"1M-fitted law on 1B models, Pile-CC rho: {rho_1b:.4f}")
    assert rho_1b > 0.95  # rankings transfer across 1000x in scale


def _olmo_final(name: str, column: str = "eval/c4_en-validation/CrossEntropyLoss") -> tuple[float, float]:
    last = list(csv.DictReader(gzip.open(OLMO / f"{name}.csv.gz", "rt")))[-1]
    return float(last.get("throughput/total_tokens") or 5e12), float(last[column])


OLMO_N = {"190M": 190354176, "370M": 371262464, "760M": 758220288, "1B": 1279395840, "3B": 3169537280,
          "7B": 6887575552, "13B": 13202396160}


def _olmo_points(multiples) -> tuple[list, list, list]:
    N, D, L = [], [], []
    for size in ("190M", "370M", "760M", "1B"):
        for k in multiples:
            d, loss = _olmo_final(f"{size}-{k}")
            N.append(OLMO_N[size])
            D.append(d)
            L.append(loss)
    return N, D, L


def _olmo_errors(fit) -> dict:
    errors = {}
    for k in ("0.5xC", "1xC", "2xC", "5xC", "10xC"):
        d, loss = _olmo_final(f"3B-{k}")
        errors[f"3B-{k}"] = float(fit.predict(OLMO_N["3B"], d) / loss - 1)
    for name, file in (("7B", "peteish7_eval_anneal"), ("13B", "peteish13_eval_final")):
        d, loss = _olmo_final(file)
        errors[name] = float(fit.predict(OLMO_N[name], d) / loss - 1)
    return errors


def test_olmo_ladder_fit_predicts_7b_and_13b_c4_loss():
    """Plain Approach 3 on the 16 final points of 190M-1.3B x 1-10xC (the ladder paper's step-1 fit
    set), then the fit the data call for: all 20 fully decayed ladder points, and least squares,
    because the ladder's replicate runs put run-to-run noise far below the plain fit's residuals
    (misfit of the law, which Huber's 1e-3 would treat as outliers). Both predict the held-out 3B
    runs and the OLMo 2 7B / 13B final C4 losses; the second is closer on every one of them."""
    plain = fit_loss_law(*_olmo_points(("1xC", "2xC", "5xC", "10xC")), refine=4)  # refine=32 finds the same
    base = _olmo_errors(plain)
    print("OLMo plain Approach 3:", plain.as_dict(), {k: round(100 * v, 2) for k, v in base.items()})
    assert plain.E == pytest.approx(1.06, abs=0.1) and plain.alpha == pytest.approx(0.114, abs=0.01)
    assert base["7B"] == pytest.approx(-0.0189, abs=0.001) and base["13B"] == pytest.approx(-0.0366, abs=0.001)

    reruns = [_olmo_final(f"{s}-1xC-rerun")[1] for s in ("190M", "370M", "760M", "1B")]
    firsts = [_olmo_final(f"{s}-1xC")[1] for s in ("190M", "370M", "760M", "1B")]
    noise = replicate_noise(firsts, reruns)
    points = _olmo_points(("0.5xC", "1xC", "2xC", "5xC", "10xC"))
    residual = log_residual_rms(plain, *points)
    assert noise == pytest.approx(1.66e-4, rel=0.02) and residual == pytest.approx(7.29e-3, rel=0.02)  # misfit, not noise
    delta = huber_delta_for(residual, noise)
    assert delta == 1.0
    fit = fit_loss_law(*points, delta=delta, refine=4)
    errors = _olmo_errors(fit)
    print("OLMo, 20 points, least squares:", fit.as_dict(), {k: round(100 * v, 2) for k, v in errors.items()})
    assert errors["7B"] == pytest.approx(-0.0105, abs=0.001) and errors["13B"] == pytest.approx(-0.0213, abs=0.001)
    assert all(abs(errors[k]) < abs(base[k]) for k in base), (base, errors)


def test_mixture_laws_extrapolate_with_the_size_law():
    """Small runs of 6 mixtures at 4 sizes x 3 token budgets, losses E(r) + A/N^α + B/D^β with E(r) a
    mixing law: predict every mixture at 100x the largest model, then an unseen mixture there."""
    from qwenpt.scaling.mixing import extrapolate_mixtures

    t = np.array([-1.2, 0.4, 0.3])

    def loss(r, N, D):
        return 1.6 + 0.8 * np.exp(np.asarray(r) @ t) + 400 / N**0.34 + 1500 / D**0.36

    mixtures = np.random.default_rng(0).dirichlet(np.ones(3), 6)
    runs = [
        {"mix": i, "N": N, "D": D, "losses": {"en": float(loss(r, N, D))}}
        for i, r in enumerate(mixtures) for N in (1e7, 3e7, 1e8, 3e8) for D in (1e9, 4e9, 1.6e10)
    ]
    law, predicted = extrapolate_mixtures(mixtures, runs, 3e10, 6e11, ["a", "b", "c"])
    truth = np.array([loss(r, 3e10, 6e11) for r in mixtures])
    assert predicted["en"] == pytest.approx(truth, rel=0.01)
    unseen = np.array([0.6, 0.2, 0.2])
    assert law.predict(unseen)["en"][0] == pytest.approx(loss(unseen, 3e10, 6e11), rel=0.01)


def test_bad_points_are_named():
    with pytest.raises(ValueError, match=r"D must be positive and finite; rows \[2\] are \[0.0\]"):
        fit_loss_law([1e6] * 6, [1e9, 2e9, 0.0, 4e9, 5e9, 6e9], [3.0] * 6)
    with pytest.raises(ValueError, match="at least 5 points"):
        fit_loss_law([1e6] * 4, [1e9] * 4, [3.0] * 4)


def test_bootstrap_reports_progress_repeats_with_its_seed_and_runs_a_fixed_number_of_fits(capsys, monkeypatch):
    """What decides the bootstrap's speed is counted, not timed: L-BFGS runs per refit (the full-data optimum
    and the best coarse-grid points) and OpenBLAS on one thread while they run (its idle threads spinning
    made a fit 10-20x slower on 2 busy cores). Off a terminal, progress is a stderr line every 10%; the
    intervals depend on the seed only, not on how many processes refit."""
    from qwenpt.scaling import laws

    rng = np.random.default_rng(1)
    N, D = isoflop_design(EPOCH)
    L = EPOCH.predict(N, D) * np.exp(rng.normal(0, 0.003, len(N)))
    threads_before = laws.blas_threads()
    calls, real_minimize = [], laws.minimize

    def counted(*args, **kwargs):
        calls.append(laws.blas_threads())
        return real_minimize(*args, **kwargs)

    monkeypatch.setattr(laws, "minimize", counted)
    serial = fit_loss_law(N, D, L, refine=4, bootstrap=20, workers=1)
    assert len(calls) == 4 + 20 * laws.BOOTSTRAP_REFINE and laws.BOOTSTRAP_REFINE == 4
    assert all(set(threads) <= {1} for threads in calls) and laws.blas_threads() == threads_before
    err = capsys.readouterr().err
    assert [int(n) for n in re.findall(r"^bootstrap (\d+)/20 \(\d+\.\d s\)$", err, re.M)] == list(range(2, 21, 2)), err
    assert "\r" not in err

    parallel = fit_loss_law(N, D, L, refine=4, bootstrap=20, workers=2, progress=False)
    assert np.array_equal(parallel.samples, serial.samples) and parallel.intervals == serial.intervals
    assert capsys.readouterr().err == ""
    other_seed = fit_loss_law(N, D, L, refine=4, bootstrap=20, seed=1, workers=2, progress=False)
    assert not np.array_equal(other_seed.samples, serial.samples)
