"""slurm/*.sh: they parse, their dry run resolves the per-node torchrun/train.py commands and checks the
layout with the planner, and the requeue path (signal -> checkpoint -> scontrol requeue) works end to end
with stand-ins for srun and scontrol around a real CPU training run."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time

import pytest

from conftest import ROOT
from qwenpt.metrics import read_metrics

SCRIPTS = sorted((ROOT / "slurm").glob("*.sh"))


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(extra)
    return env


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_parses(script):
    proc = subprocess.run(["bash", "-n", str(script)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.returncode == 0, proc.stdout


@pytest.mark.parametrize("script,nodes,experiment", [
    ("pretrain_72b.sh", 16, "pretrain_qwen2_72b"),
    ("pretrain_57b_a14b.sh", 8, "pretrain_qwen2_57b_a14b"),
    ("pretrain_7b.sh", 4, "pretrain_qwen2_7b"),
])


def test_dry_run_resolves_commands_and_fits(script, nodes, experiment):
    env = _env(QWENPT_DRY_RUN="1", SLURM_NNODES=str(nodes), SLURM_JOB_ID="4242",
               SLURM_JOB_NODELIST=f"gpu[{3:03d}-{2 + nodes:03d}]", QWENPT_RUNS="/shared/runs")
    proc = subprocess.run(["bash", str(ROOT / "slurm" / script), "train.steps=10000"], cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:]
    torchrun = (
        f"torchrun --nnodes={nodes} --nproc-per-node=8 --rdzv-backend=c10d --rdzv-endpoint=gpu003:29500 "
        f"--rdzv-id=4242 --max-restarts=0 train.py +experiment={experiment} train.steps=10000 "
        "train.stop_file=/shared/runs/.stop-4242"
    )
    lines = proc.stdout.splitlines()
    assert f"srun --nodes={nodes} --ntasks-per-node=1 --kill-on-bad-exit=1 --cpu-bind=none {torchrun}" in lines
    assert [line for line in lines if line.startswith("node ")] == [f"node {n}: {torchrun}" for n in range(nodes)]
    plan = json.loads(lines[-1])  # the planner, for this many GPUs
    assert plan["world_size"] == nodes * 8 and plan["fits"] and plan["peak_gib"] < 72
    assert "fits" in lines


def test_sweep_dry_run_takes_its_array_point():
    env = _env(QWENPT_DRY_RUN="1", SLURM_NNODES="1", SLURM_JOB_ID="9", SLURM_ARRAY_TASK_ID="14",
               SLURM_JOB_NODELIST="gpu042")
    proc = subprocess.run(["bash", str(ROOT / "slurm" / "sweep.sh"), "+experiment=size_tokens"], cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:]
    # Hydra's order: model-major, then train.steps (2500, 5000, 10000, 20000): point 14 = 7B x 10000
    assert "sweep point 14: model=qwen2.5_7b train.steps=10000" in proc.stdout
    assert "train.py +experiment=size_tokens model=qwen2.5_7b train.steps=10000 hydra.mode=RUN" in proc.stdout
    assert json.loads(proc.stdout.strip().splitlines()[-1])["model"] == "qwen2.5_7b"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_warning_signal_checkpoints_and_requeues(tmp_path):
    """The batch script gets Slurm's warning signal (--signal=B:USR1) mid-run: training checkpoints at
    the next step and exits 0, and the script requeues the job."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text('#!/bin/bash\nwhile [[ $1 == --* ]]; do shift; done\nexec "$@"\n')
    (bin_dir / "scontrol").write_text(
        '#!/bin/bash\nif [ "$1" = show ]; then echo localhost; else echo "$@" >> "$SCONTROL_LOG"; fi\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    run_dir = tmp_path / "run"
    env = _env(PATH=f"{bin_dir}:{os.environ['PATH']}", SCONTROL_LOG=str(tmp_path / "scontrol.log"),
               SLURM_NNODES="1", SLURM_JOB_ID="77", SLURM_ARRAY_TASK_ID="0", SLURM_JOB_NODELIST="localhost",
               GPUS_PER_NODE="1", MASTER_PORT=str(_free_port()), QWENPT_RUNS=str(tmp_path / "runs"),
               OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    (tmp_path / "runs").mkdir()
    cmd = ["bash", str(ROOT / "slurm" / "sweep.sh"), "+experiment=size_tokens_tiny", f"train.run_dir={run_dir}",
           f"data.cache_dir={tmp_path / 'cache'}", "logging.wandb.mode=disabled", "checkpoint.save_interval=1000"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if (run_dir / "metrics.jsonl").exists() and read_metrics(run_dir, "train"):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGUSR1)
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, out[-3000:]
    assert "warning signal: asking training to checkpoint and stop" in out
    stopped = int(out.split("stopped at step ")[1].split()[0])
    assert 1 <= stopped < 40 and "on request (stop file)" in out  # ladder/xs x 40 steps is point 0
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == f"step_{stopped:08d}"
    assert (tmp_path / "scontrol.log").read_text() == "requeue 77\n"
    assert not (tmp_path / "runs" / ".stop-77").exists()


@pytest.mark.parametrize("hang,restarts,requeued", [(True, "0", True), (True, "2", False), (False, "0", False)])
def test_a_hang_requeues_the_job_a_bounded_number_of_times(tmp_path, hang, restarts, requeued):
    """train.watchdog's HANG flag after a failed launch requeues the job (resume from the last
    checkpoint), at most QWENPT_HANG_REQUEUES (2) times; a failure without a hang is not requeued."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # the launch: a run whose watchdog fired (HANG written during this job), exit 1 as torchrun reports it
    flag = 'touch "$QWENPT_RUNS/run/HANG"\n' if hang else ""
    (bin_dir / "srun").write_text(f'#!/bin/bash\nmkdir -p "$QWENPT_RUNS/run"\n{flag}exit 1\n')
    (bin_dir / "scontrol").write_text(
        '#!/bin/bash\nif [ "$1" = show ]; then echo localhost; else echo "$@" >> "$SCONTROL_LOG"; fi\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    (tmp_path / "runs").mkdir()
    env = _env(PATH=f"{bin_dir}:{os.environ['PATH']}", SCONTROL_LOG=str(tmp_path / "scontrol.log"),
               SLURM_NNODES="1", SLURM_JOB_ID="78", SLURM_ARRAY_TASK_ID="0", SLURM_JOB_NODELIST="localhost",
               SLURM_RESTART_COUNT=restarts, GPUS_PER_NODE="1", QWENPT_RUNS=str(tmp_path / "runs"))
    proc = subprocess.run(["bash", str(ROOT / "slurm" / "sweep.sh"), "+experiment=size_tokens_tiny"], cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout[-3000:]
    log = tmp_path / "scontrol.log"
    assert (log.read_text() if log.exists() else "") == ("requeue 78\n" if requeued else "")
    assert ("training hung (" in proc.stdout) == requeued and ("not requeueing" in proc.stdout) == (hang and not requeued)
    assert not (tmp_path / "runs" / ".started-78").exists()
