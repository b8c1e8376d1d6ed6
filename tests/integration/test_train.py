"""End-to-end runs of train.py on CPU: loss falls, MoE trains, a killed run resumes exactly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, run_train
from qwenpt.metrics import read_metrics

SHORT = ["train.steps=60", "optim.lr=2e-3", "optim.min_lr=2e-4", "optim.warmup_steps=10", "train.eval_interval=30", "checkpoint.save_interval=60"]


def test_tiny_validation_loss_falls(tmp_path):
    proc = run_train(tmp_path / "run", *SHORT, "logging.wandb.mode=offline")
    assert proc.returncode == 0, proc.stdout[-3000:]
    valid = read_metrics(tmp_path / "run", "valid")
    assert [r["step"] for r in valid] == [0, 30, 60]
    start, end = valid[0]["loss"], valid[-1]["loss"]
    assert start == pytest.approx(9.01, abs=0.1)  # ~ln(8192): an untrained model is uniform
    assert end < start - 2.0, f"validation loss only went {start:.3f} -> {end:.3f}"
    train = read_metrics(tmp_path / "run", "train")
    assert len(train) == 60 and all(r["tokens_per_s"] > 0 and r["tflops_per_device"] > 0 for r in train)
    assert train[-1]["tokens"] == 60 * 16 * 256
    assert train[0]["lr"] == pytest.approx(2e-4) and train[9]["lr"] == pytest.approx(2e-3)  # warmup to the peak
    assert train[-1]["lr"] == pytest.approx(2e-4)  # cosine down to optim.min_lr (default 2e-4)
    offline = list((tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(offline) == 1 and offline[0].stat().st_size > 0  # wandb wrote its offline run
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text().strip() == "step_00000060"


@pytest.mark.default_lane  # lane 2 trains MoE in its layouts' references and the hybrid MoE
def test_tiny_moe_trains(tmp_path):
    proc = run_train(tmp_path / "run", "model=tiny_moe", *SHORT)
    assert proc.returncode == 0, proc.stdout[-3000:]
    valid = read_metrics(tmp_path / "run", "valid")
    assert valid[-1]["loss"] < valid[0]["loss"] - 2.0
    # 3,775,104 total; top-2 of 8 experts leaves 6 x 36,864 x 4 layers unused per token
    assert "3.78M parameters (1.68M non-embedding, 2.89M active)" in proc.stdout


def _losses(run_dir):
    return [(r["kind"], r["step"], r["loss"]) for r in read_metrics(run_dir)]


RESUME = ["train.steps=16", "optim.warmup_steps=4", "train.eval_interval=8", "checkpoint.save_interval=8"]


@pytest.fixture(scope="module")
def reference16(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    proc = run_train(run_dir, *RESUME)
    assert proc.returncode == 0, proc.stdout[-3000:]
    return run_dir


def _train_cmd(run_dir, *overrides):
    return [sys.executable, str(ROOT / "train.py"), f"train.run_dir={run_dir}", "logging.progress=false",
            "logging.wandb.mode=disabled", f"data.cache_dir={run_dir.parent / 'cache'}", *overrides]


def _wait_for_step(run_dir, step: int, proc) -> None:
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if (run_dir / "metrics.jsonl").exists() and any(r["step"] > step for r in read_metrics(run_dir, "train")):
            return
        time.sleep(0.02)
    raise AssertionError(f"the run never got past step {step}")


@pytest.mark.default_lane
@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGUSR1, signal.SIGTERM])
def test_stop_request_checkpoints_and_resumes_step_for_step(tmp_path, reference16, signum):
    """SIGUSR1 (what Slurm's --signal delivers) or SIGTERM (a scheduler's stop, `kill`) makes the run save
    and exit cleanly mid-way; rerunning the same command finishes it bit for bit. (The stop file:
    tests/integration/test_slurm.py, end to end.)"""
    run_dir = tmp_path / "run"
    first = subprocess.Popen(_train_cmd(run_dir, *RESUME), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _wait_for_step(run_dir, 0, first)
    first.send_signal(signum)
    out = first.communicate(timeout=300)[0]
    assert first.returncode == 0, out[-3000:]
    stopped = int(out.split("stopped at step ")[1].split()[0])
    assert 1 <= stopped < 14 and f"stopped at step {stopped} of 16 on request (signal {signum.name})" in out
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == f"step_{stopped:08d}"

    last = run_train(run_dir, *RESUME)
    assert last.returncode == 0, last.stdout[-3000:]
    assert _losses(run_dir) == _losses(reference16)


@pytest.mark.slow
def test_killed_run_resumes_step_for_step(tmp_path, reference16):
    """The killed run writes its checkpoints in the background (checkpoint.async_save): published only
    when complete, they resume exactly like synchronous ones."""
    common = RESUME
    run_dir = tmp_path / "killed"
    cmd = _train_cmd(run_dir, *common, "checkpoint.async_save=true")
    # its own process group, killed whole (as a node failure would): megatron-core's checkpoint
    # writer process must not outlive the test as an orphan
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    latest = run_dir / "checkpoints" / "latest"
    deadline = time.time() + 300
    while time.time() < deadline and not (latest.exists() and latest.read_text().strip() == "step_00000008"):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert latest.read_text().strip() == "step_00000008"
    killed_at = max(r["step"] for r in read_metrics(run_dir))
    assert 8 <= killed_at < 16

    resumed = run_train(run_dir, *common)
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    assert "resumed from" in resumed.stdout and "at step 8" in resumed.stdout
    assert _losses(run_dir) == _losses(reference16)  # bit-identical, every step
