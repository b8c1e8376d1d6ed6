"""Scaling-law fits: known laws recovered with covering intervals; real published data reproduced."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from qwenpt.scaling.runs import collect_runs

from conftest import ROOT, run_train
from helpers.scaling import EPOCH, REGMIX, isoflop_design


def test_cli_prints_the_fit_and_ends_with_json(tmp_path):
    N, D = isoflop_design(EPOCH)
    path = tmp_path / "points.csv"
    path.write_text("N,D,loss\n" + "".join(f"{n},{d},{EPOCH.predict(n, d)}\n" for n, d in zip(N, D)))
    cmd = [sys.executable, "-m", "qwenpt.scaling", "fit", "--law", "chinchilla", "--data", str(path), "--budgets", "1e21"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["alpha"] == pytest.approx(0.3478, rel=2e-3) and any(re.match(r"\s+alpha\s+0\.347", line) for line in r.stdout.splitlines())
    assert out["compute_optimal"][0]["N_opt"] == pytest.approx(float(EPOCH.compute_optimal(1e21)[0]), rel=0.02)

    cmd = [sys.executable, "-m", "qwenpt.scaling", "fit", "--law", "mix", "--join-on", "index",
           "--data", str(REGMIX / "train_mixture_1m.csv"), str(REGMIX / "train_pile_loss_1m.csv"),
           "--test", str(REGMIX / "test_mixture_1m.csv"), str(REGMIX / "test_pile_loss_1m.csv"),
           "--mix-cols", "train_the_pile_*", "--loss-cols", "metric/the_pile_pile_cc_val_loss",
           "--target", "metric/the_pile_pile_cc_val_loss=1", "--trust-region"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["test"]["metric/the_pile_pile_cc_val_loss"]["spearman"] > 0.95
    assert sum(out["best_mixture"]["mixture"].values()) == pytest.approx(1.0)

    r = subprocess.run([sys.executable, "-m", "qwenpt.scaling", "fit", "--law", "chinchilla", "--data", str(path), "--n-col", "params"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--n-col 'params' is not a column" in r.stderr


def test_collect_reads_train_py_runs_with_per_source_validation(tmp_path):
    """A real run on one prepared language with per-source evaluation: its per-source loss is the
    blended one exactly (same samples), and collection turns metrics + config into table rows."""
    from data_pipeline.prepare import PrepareConfig, prepare
    from qwenpt.data import BUNDLED_TOKENIZER, SAMPLE_DIR

    prepare(PrepareConfig(inputs=(str(SAMPLE_DIR / "de.jsonl.gz"),), output=str(tmp_path / "tok"),
                          tokenizer=str(BUNDLED_TOKENIZER), progress=False))
    run = tmp_path / "runs" / "run"
    proc = run_train(run, "train.steps=6", "train.eval_interval=3", "checkpoint.save_interval=6", "optim.warmup_steps=2",
                     "train.eval_per_source=true", f"data.blend=[{{prefix:{tmp_path / 'tok' / 'de'},weight:1.0}}]")
    assert proc.returncode == 0, proc.stdout[-3000:]
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    valid = [m for m in metrics if m["kind"] == "valid"]
    assert [m["per_source"]["de"] for m in valid] == [m["loss"] for m in valid]

    table = collect_runs([tmp_path / "runs"]).to_pylist()
    assert [row["step"] for row in table] == [0, 3, 6] and [row["final"] for row in table] == [False, False, True]
    assert [row["valid_loss"] for row in table] == [m["loss"] for m in valid]
    assert [row["valid_loss_de"] for row in table] == [m["loss"] for m in valid] and table[0]["mix_de"] == 1.0
    train = [m["loss"] for m in metrics if m["kind"] == "train"]
    assert table[1]["train_loss"] == pytest.approx(sum(train[:3]) / 3)
    from qwenpt.flops import training_flops_per_token
    from qwenpt.models.size import param_counts
    from conftest import model_config

    m = model_config("tiny")
    assert table[2]["non_embedding_params"] == param_counts(m).non_embedding == 739456
    assert table[2]["flops"] == pytest.approx(training_flops_per_token(m, 256) * table[2]["tokens"])
