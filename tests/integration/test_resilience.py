"""Failure handling, by fault injection on CPU: non-finite and spiking steps stop or skip as configured
with the last good checkpoint kept; damaged checkpoints are passed over and the resumed run equals an
uninterrupted one; a changed schedule or data on resume follows the documented rule; a hung rank dumps its
stack and exits; bad configs fail before anything is allocated."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT, run_train
from qwenpt import checkpoint
from qwenpt.metrics import read_metrics

# 12 steps, a checkpoint every 3 (all kept); lr 2e-3 -> 2e-4 (optim=tiny), warmup 3
REF = ["train.steps=12", "optim.warmup_steps=3", "train.eval_interval=6", "checkpoint.save_interval=3", "checkpoint.keep_last=0"]
SHORT = ["optim.warmup_steps=2", "train.eval_interval=100", "train.eval_steps=1", "checkpoint.save_interval=2"]


def _losses(run_dir):
    return [(r["kind"], r["step"], r["loss"]) for r in read_metrics(run_dir)]


def _steps(ckpt_dir):
    return sorted(int(p.name.removeprefix("step_")) for p in ckpt_dir.glob("step_*"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run, its checkpoints written in the background (async dist_checkpointing)."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    proc = run_train(run_dir, *REF, "checkpoint.async_save=true")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert proc.stdout.count("written in the background") == 4  # steps 3, 6, 9, 12
    assert _steps(run_dir / "checkpoints") == [3, 6, 9, 12]
    return run_dir


def test_damaged_checkpoints_are_passed_over_and_resume_is_exact(reference, tmp_path):
    """Each kind of damage on the newest checkpoints, at once: resume names each and takes the newest
    intact one (step 3); the resumed run's losses equal the uninterrupted run's, bit for bit."""
    run_dir = tmp_path / "run"
    shutil.copytree(reference, run_dir)
    ckpts = run_dir / "checkpoints"
    shutil.rmtree(ckpts / "step_00000012")  # as if the run had died before its last save
    shard = ckpts / "step_00000009" / "__0_1.distcp"
    size = shard.stat().st_size
    os.truncate(shard, size // 2)
    (ckpts / "step_00000006" / "common.pt").unlink()
    (ckpts / "latest").write_bytes(b"\xff\xfe" + os.urandom(30))

    proc = run_train(run_dir, *REF)
    assert proc.returncode == 0, proc.stdout[-3000:]
    out = proc.stdout
    assert "latest is unreadable (UnicodeDecodeError); ignoring it" in out
    assert f"step_00000009 is damaged: __0_1.distcp is {size // 2} bytes, {size} when saved (truncated or overwritten)" in out
    assert "step_00000006 is damaged: common.pt is missing" in out
    assert "resumed from" in out and "step_00000003 at step 3" in out
    assert "Traceback" not in out
    assert _losses(run_dir) == _losses(reference)
    assert (ckpts / "latest").read_text().strip() == "step_00000012"


def test_extending_steps_on_resume_follows_the_rule(reference, tmp_path):
    """Raising train.steps from 12 to 14 is refused (naming the knob) before anything is built; with
    checkpoint.override_schedule=true the cosine decay is rebuilt over 14 steps from step 12."""
    run_dir = tmp_path / "run"
    shutil.copytree(reference, run_dir)
    before = _losses(run_dir)
    longer = [*REF, "train.steps=14"]
    refused = run_train(run_dir, *longer)
    assert refused.returncode != 0
    assert "with a different LR schedule than it was saved with (train.steps 12 -> 14)" in refused.stdout
    assert "Set checkpoint.override_schedule=true" in refused.stdout
    assert "model tiny:" not in refused.stdout  # refused before the model was built
    assert _losses(run_dir) == before

    proc = run_train(run_dir, *longer, "checkpoint.override_schedule=true")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "LR schedule rebuilt from the new config at the checkpoint's step (train.steps 12 -> 14" in proc.stdout
    train = read_metrics(run_dir, "train")
    assert [r["step"] for r in train] == list(range(1, 15))
    peak, low, warmup = 2e-3, 2e-4, 3
    cosine = low + (peak - low) * 0.5 * (1 + math.cos(math.pi * (13 - warmup) / (14 - warmup)))
    assert train[12]["lr"] == pytest.approx(cosine, rel=1e-9)  # 3.83e-4: up from min_lr again
    assert train[13]["lr"] == pytest.approx(low, rel=1e-9)
    assert _losses(run_dir)[: len(before)] == before


def test_changed_data_on_resume_is_refused_unless_overridden(reference, tmp_path):
    """A run is one data stream: resuming with another seed and sequence length is refused before anything is
    built, naming both changes and the two ways on; checkpoint.override_data=true goes on, with the warning."""
    run_dir = tmp_path / "run"
    shutil.copytree(reference, run_dir)
    before = _losses(run_dir)
    changed = [*REF, "train.seed=7", "data.seq_length=128"]
    refused = run_train(run_dir, *changed)
    assert refused.returncode == 2, refused.stdout[-3000:]
    assert "with other data or batch than it was trained with (data.seq_length 256 -> 128; train.seed 1234 -> 7)" in refused.stdout
    assert "train.run_dir=<new folder> (with checkpoint.init_from=" in refused.stdout
    assert "checkpoint.override_data=true" in refused.stdout
    assert "model tiny:" not in refused.stdout and "Traceback" not in refused.stdout  # refused before the model was built
    assert _losses(run_dir) == before

    proc = run_train(run_dir, *changed, "checkpoint.override_data=true")  # complete at step 12: nothing to train
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert ("data or batch changed since step_00000012 (data.seq_length 256 -> 128; train.seed 1234 -> 7; "
            "checkpoint.override_data=true): the data position is kept") in proc.stdout
    assert _losses(run_dir) == before


def test_nonfinite_loss_stops_naming_the_step_and_last_good_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_train(run_dir, "train.steps=6", *SHORT, "train.guard.inject=loss*nan@5")
    assert proc.returncode == 3, proc.stdout[-3000:]
    ckpts = run_dir / "checkpoints"
    assert (
        "training halted: step 5: loss nan, grad norm nan is not finite; stopped (train.guard.nonfinite=stop) "
        "without applying the update, and nothing was saved from this state. "
        f"Last good checkpoint: {ckpts / 'step_00000004'}."
    ) in proc.stdout
    assert "Traceback" not in proc.stdout
    assert _steps(ckpts) == [2, 4] and (ckpts / "latest").read_text().strip() == "step_00000004"
    assert checkpoint.check(ckpts / "step_00000004") is None
    assert [r["step"] for r in read_metrics(run_dir, "train")] == [1, 2, 3, 4]
    assert json.loads((ckpts / checkpoint.PROTECTED).read_text()) == {
        "step_00000004": "the last checkpoint before trouble at step 5"}


def test_skip_counts_steps_warns_on_spikes_and_keeps_the_last_good_checkpoint(tmp_path):
    """Skip mode: the Inf-gradient step 3 makes no update; the 10x loss at step 7 is reported as a spike;
    keep_last=1 still keeps the checkpoints saved just before each (steps 2 and 6)."""
    run_dir = tmp_path / "run"
    proc = run_train(
        run_dir, "train.steps=10", *SHORT, "checkpoint.keep_last=1", "train.guard.nonfinite=skip",
        "train.guard.spike_window=3", "train.guard.inject=grad*inf@3+loss*10@7",
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    out = proc.stdout
    assert "is not finite: update skipped (1 in a row, 1 in all; train.guard.nonfinite=skip)" in out
    train = read_metrics(run_dir, "train")
    assert [r["step"] for r in train if r.get("skipped")] == [3]
    assert not math.isfinite(train[2]["grad_norm"]) and f"step 3: loss {train[2]['loss']:.4g}, grad norm" in out
    assert all(math.isfinite(r["loss"]) for r in train)  # the loss was fine: only the gradient was bad
    median = sorted(r["loss"] for r in train[3:6])[1]  # steps 4-6 (the skipped step never enters the median)
    assert f"step 7: loss spike: {train[6]['loss']:.4f} is above 3 x the running median {median:.4f} of the last 3 steps" in out
    assert train[6]["loss"] == pytest.approx(10 * train[5]["loss"], rel=0.05)
    ckpts = run_dir / "checkpoints"
    assert _steps(ckpts) == [2, 6, 10]
    assert sorted(json.loads((ckpts / checkpoint.PROTECTED).read_text())) == ["step_00000002", "step_00000006"]


def _torchrun(run_dir, *overrides, timeout=600):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(ROOT / "train.py"),
           f"train.run_dir={run_dir}", "logging.progress=false", "logging.wandb.mode=disabled",
           f"data.cache_dir={run_dir.parent / 'cache'}", *overrides]
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout, cwd=ROOT,
                          env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1"))


@pytest.mark.slow
def test_dp2_fault_on_one_rank_is_skipped_then_stops_on_every_rank(tmp_path):
    """DP2: an Inf gradient on rank 1 (before the all-reduce) is skipped on both ranks; NaN losses on rank 1
    at steps 5 and 6 reach max_skips_in_a_row=2 and both ranks stop, step_4 kept (saved in the background,
    published before the message names it)."""
    run_dir = tmp_path / "run"
    proc = _torchrun(
        run_dir, "train.steps=8", *SHORT, "checkpoint.keep_last=1", "checkpoint.async_save=true", "train.guard.nonfinite=skip",
        "train.guard.max_skips_in_a_row=2", "train.guard.inject=grad*inf@3/1+loss*nan@5-6/1",
    )
    assert proc.returncode != 0
    ckpts = run_dir / "checkpoints"
    assert (
        "step 6: loss nan, grad norm nan is not finite; stopped (2 non-finite steps in a row, "
        f"train.guard.max_skips_in_a_row=2) without applying the update, and nothing was saved from this state. "
        f"Last good checkpoint: {ckpts / 'step_00000004'}."
    ) in proc.stdout
    assert "exitcode  : 3" in proc.stdout  # torchrun's report: both ranks halted on purpose
    train = read_metrics(run_dir, "train")
    assert [r["step"] for r in train] == [1, 2, 3, 4, 5]
    assert [r["step"] for r in train if r.get("skipped")] == [3, 5]
    assert _steps(ckpts) == [2, 4] and checkpoint.check(ckpts / "step_00000004") is None


@pytest.mark.slow
def test_dp2_hang_dumps_every_rank_and_exits(tmp_path):
    """Rank 0 stops making progress at step 6, the first step timed against the median of the ones before
    (6 x median, at least 10 s; so a slow machine cannot fire it early); each rank writes its stack and
    exits 75; rank 1 is caught waiting in a collective."""
    run_dir = tmp_path / "run"
    proc = _torchrun(
        run_dir, "train.steps=6", *SHORT, "checkpoint.save_interval=100", "train.guard.inject=hang@6/0",
        "train.watchdog.factor=6", "train.watchdog.min_s=10",
    )
    assert proc.returncode != 0
    assert "exitcode  : 75" in proc.stdout
    for rank in (0, 1):
        report = (run_dir / f"hang_rank{rank}.txt").read_text()
        assert report.startswith(f"watchdog: rank {rank}: train step 6 ")
        assert "Current thread" in report or "Thread 0x" in report
    # whichever rank's limit came first fired; the other dumped when it saw the HANG file
    reports = [(run_dir / f"hang_rank{rank}.txt").read_text() for rank in (0, 1)]
    assert sum("has not finished after its limit" in r for r in reports) >= 1
    assert all("has not finished after its limit" in r or "another rank reported a hang" in r for r in reports)
    assert 'guard.py", line' in (run_dir / "hang_rank0.txt").read_text()  # stuck in the injected hang
    assert "in train_step" in (run_dir / "hang_rank1.txt").read_text()
