"""Data parallelism under torchrun (gloo on CPU) gives the single-process losses."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT, run_train
from qwenpt.metrics import read_metrics

COMMON = ["train.steps=5", "optim.warmup_steps=1", "train.eval_interval=5", "checkpoint.save_interval=5"]


def run_torchrun(nproc: int, run_dir, *overrides: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
        str(ROOT / "train.py"), f"train.run_dir={run_dir}", "logging.progress=false",
        "logging.wandb.mode=disabled", f"data.cache_dir={run_dir.parent / 'cache'}", *overrides,
    ]
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600,
                          cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"))


@pytest.mark.slow
def test_data_parallel_matches_single_process(tmp_path):
    single = run_train(tmp_path / "single", *COMMON)
    assert single.returncode == 0, single.stdout[-3000:]
    dp2 = run_torchrun(2, tmp_path / "dp2", *COMMON)
    assert dp2.returncode == 0, dp2.stdout[-3000:]
    assert "dp 2; global batch 16 = micro 8 x 1 micro-batches x dp 2" in dp2.stdout
    a, b = read_metrics(tmp_path / "single"), read_metrics(tmp_path / "dp2")
    assert [(r["kind"], r["step"]) for r in a] == [(r["kind"], r["step"]) for r in b]
    for x, y in zip(a, b):
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-5), (x, y)


@pytest.mark.slow
def test_distributed_optimizer_matches_and_resumes_exactly(tmp_path):
    """DP=2 with megatron-core's distributed optimizer: same losses as one process, and a resume from
    its (DP-sharded) checkpoint continues bit for bit."""
    common = ["train.steps=6", "optim.warmup_steps=1", "train.eval_interval=3", "checkpoint.save_interval=3",
              "checkpoint.keep_last=0", "parallel.use_distributed_optimizer=true"]
    single = run_train(tmp_path / "single", *[c for c in common if "distributed_optimizer" not in c])
    assert single.returncode == 0, single.stdout[-3000:]
    run_dir = tmp_path / "dp2"
    full = run_torchrun(2, run_dir, *common)
    assert full.returncode == 0, full.stdout[-3000:]
    uninterrupted = [(r["kind"], r["step"], r["loss"]) for r in read_metrics(run_dir)]
    for x, (_, _, loss) in zip(read_metrics(tmp_path / "single"), uninterrupted):
        assert loss == pytest.approx(x["loss"], rel=1e-5)

    # resume from the step-3 checkpoint as if the run had died before saving step 6
    shutil.rmtree(run_dir / "checkpoints" / "step_00000006")
    (run_dir / "checkpoints" / "latest").write_text("step_00000003\n")
    resumed = run_torchrun(2, run_dir, *common)
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    assert "resumed from" in resumed.stdout
    assert [(r["kind"], r["step"], r["loss"]) for r in read_metrics(run_dir)] == uninterrupted
