"""What qwenpt trusts when it loads and what it may touch when it writes (docs/trust.md): crafted pickles in each
checkpoint file never run; a folder qwenpt did not make is refused and left byte-identical; one trainer per run
folder; rotation never deletes the run's own checkpoint; metrics.jsonl survives partial and foreign lines; bad
numbers fail before anything is allocated; SIGTERM saves (tests/integration/test_train.py); a full disk says so."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT, run_train
from qwenpt import checkpoint
from qwenpt.metrics import read_metrics

RUN = ["train.steps=4", "optim.warmup_steps=0", "train.eval_interval=4", "train.eval_steps=1",
       "checkpoint.save_interval=2", "checkpoint.keep_last=0"]


class _Payload:
    """Unpickling this creates the file ``marker``: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def run4(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("trust") / "run"
    proc = run_train(run_dir, *RUN)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert [p.name for p in checkpoint.complete_checkpoints(run_dir / "checkpoints")] == ["step_00000002", "step_00000004"]
    return run_dir


def _plant(ckpt: Path, kind: str, marker: Path) -> Path:
    """Put a code-running pickle where ``kind`` says; returns the file named in the refusal."""
    if kind == "metadata":
        (ckpt / ".metadata").write_bytes(pickle.dumps(_Payload(marker)))
        return ckpt / ".metadata"
    if kind == "common" and (ckpt / "common.pt").is_file():  # megatron-core 0.16; 0.19 keeps it as a byte object
        buf = io.BytesIO()
        torch.save({"progress": _Payload(marker)}, buf)
        (ckpt / "common.pt").write_bytes(buf.getvalue())
        return ckpt / "common.pt"
    # a byte object (the RNG state, or 0.19's common state): a new shard file holding the payload, the metadata
    # pointing at it
    from torch.distributed.checkpoint.filesystem import _StorageInfo

    buf = io.BytesIO()
    torch.save(_Payload(marker), buf)
    (ckpt / "__9_9.distcp").write_bytes(buf.getvalue())
    with open(ckpt / ".metadata", "rb") as fh:
        metadata = pickle.load(fh)
    target = "common_state" if kind == "common" else "rng_state"
    (index,) = [i for i in metadata.storage_data if i.fqn.startswith(target)]
    metadata.storage_data[index] = _StorageInfo("__9_9.distcp", 0, len(buf.getvalue()))
    (ckpt / ".metadata").write_bytes(pickle.dumps(metadata))
    return ckpt / "__9_9.distcp"


@pytest.mark.parametrize("kind", ["metadata", "byte_object", "common"])
def test_a_crafted_pickle_in_a_checkpoint_never_runs(run4, tmp_path, kind):
    """Resume, checkpoint.init_from, convert export and convert verify refuse it, naming the file; no code runs."""
    run_dir = tmp_path / "run"
    shutil.copytree(run4, run_dir)
    ckpt = run_dir / "checkpoints" / "step_00000004"
    marker = tmp_path / "code_ran"
    named = _plant(ckpt, kind, marker)
    checkpoint._write_manifest(ckpt, checksums=False)  # the manifest is no barrier: it can be rewritten too

    resumed = run_train(run_dir, *RUN, "train.steps=6")
    assert resumed.returncode == 2, resumed.stdout[-3000:]
    assert f"{named}" in resumed.stdout and "it was not loaded" in resumed.stdout, resumed.stdout[-2000:]
    assert "model tiny:" not in resumed.stdout and "Traceback" not in resumed.stdout  # before any model exists

    started = run_train(tmp_path / "new", *RUN, f"checkpoint.init_from={ckpt}")
    assert started.returncode == 2 and f"{named}" in started.stdout, started.stdout[-2000:]
    for command in (["export", "--ckpt", str(ckpt), "--out", str(tmp_path / "hf")],
                    ["verify", "--ckpt", str(ckpt), "--hf", str(tmp_path / "hf")]):
        proc = subprocess.run([sys.executable, "-m", "qwenpt.convert", *command], cwd=ROOT, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300)
        assert proc.returncode == 2 and f"{named}" in proc.stdout and "Traceback" not in proc.stdout, proc.stdout[-2000:]
    assert not marker.exists()


@pytest.mark.default_lane
def test_a_foreign_folder_is_refused_and_left_as_it_was(tmp_path):
    """A run_dir holding someone else's files (a STOP file, a metrics.jsonl of another tool's): refused before
    anything is written, every file byte-identical, no .hydra/ or train.log added."""
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "STOP").write_text("my notes\n")
    (folder / "metrics.jsonl").write_text('{"epoch": 1, "acc": 0.5}\n')
    before = _snapshot(folder)
    proc = run_train(folder, *RUN)
    assert proc.returncode == 2, proc.stdout[-3000:]
    assert (f"train.run_dir: {folder} holds files qwenpt did not write (STOP, metrics.jsonl) and is not a qwenpt run "
            "folder; nothing was written there.") in proc.stdout
    assert "Traceback" not in proc.stdout
    assert _snapshot(folder) == before and sorted(p.name for p in folder.iterdir()) == ["STOP", "metrics.jsonl"]


@pytest.mark.default_lane
def test_a_second_trainer_in_one_run_folder_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "train.py"), f"train.run_dir={run_dir}", "logging.progress=false",
           "logging.wandb.mode=disabled", f"data.cache_dir={tmp_path / 'cache'}", *RUN, "train.steps=400",
           "checkpoint.save_interval=100"]
    first = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 300
        while not ((run_dir / "metrics.jsonl").is_file() and read_metrics(run_dir, "train")):
            assert time.time() < deadline and first.poll() is None, "the first trainer never trained"
            time.sleep(0.05)
        before = (run_dir / ".hydra" / "config.yaml").read_bytes()
        second = run_train(run_dir, *RUN, "train.steps=400", "train.seed=7")
        assert second.returncode == 2, second.stdout[-3000:]
        assert f"train.run_dir: {run_dir} is in use by another trainer (PID {first.pid} on " in second.stdout
        assert (run_dir / ".hydra" / "config.yaml").read_bytes() == before
    finally:
        first.send_signal(signal.SIGTERM)
        out = first.communicate(timeout=300)[0]
    assert first.returncode == 0 and "on request (signal SIGTERM)" in out, out[-3000:]
    # the lock went with the first trainer: the folder is usable again
    assert len(list((run_dir / "launches").iterdir())) == 1


@pytest.mark.default_lane
def test_rotation_never_deletes_this_runs_checkpoint(run4, tmp_path):
    """A fresh start (checkpoint.resume=false) beside damaged checkpoints of higher steps: keep_last keeps this
    run's newest, leaves the others alone, and ``latest`` names a checkpoint that exists."""
    run_dir = tmp_path / "run"
    shutil.copytree(run4, run_dir)
    ckpts = run_dir / "checkpoints"
    os.rename(ckpts / "step_00000004", ckpts / "step_00000040")
    shard = ckpts / "step_00000040" / "__0_0.distcp"
    os.truncate(shard, shard.stat().st_size // 2)  # damaged
    os.rename(ckpts / "step_00000002", ckpts / "step_00000020")
    before = _snapshot(ckpts / "step_00000040")
    proc = run_train(run_dir, *RUN, "checkpoint.resume=false", "checkpoint.keep_last=1")
    assert proc.returncode == 0, proc.stdout[-3000:]
    names = sorted(p.name for p in ckpts.glob("step_*"))
    assert names == ["step_00000004", "step_00000020", "step_00000040"]
    assert (ckpts / "latest").read_text().strip() == "step_00000004" and checkpoint.check(ckpts / "step_00000004") is None
    assert _snapshot(ckpts / "step_00000040") == before


@pytest.mark.default_lane
def test_metrics_survive_a_partial_last_line_and_foreign_lines(run4, tmp_path, caplog):
    run_dir = tmp_path / "run"
    shutil.copytree(run4, run_dir)
    metrics = run_dir / "metrics.jsonl"
    with open(metrics, "a") as fh:
        fh.write('written by hand\n{"kind": "train", "st')  # a foreign line, then a kill mid-record
    proc = run_train(run_dir, *RUN, "train.steps=6", "checkpoint.override_schedule=true")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert [r["step"] for r in read_metrics(run_dir, "train")] == [1, 2, 3, 4, 5, 6]
    lines = metrics.read_text().splitlines()
    assert "written by hand" in lines and '{"kind": "train", "st' in lines  # kept, apart from the records
    assert sum("is not a metrics record" in r.message for r in caplog.records) == 2


@pytest.mark.default_lane
def test_a_bad_number_through_train_py_is_one_message_and_nothing_written(tmp_path):
    start = time.time()
    proc = run_train(tmp_path / "run", "data.seq_length=0")
    assert proc.returncode == 2 and "data.seq_length must be a positive number of tokens, got 0" in proc.stdout
    assert "Traceback" not in proc.stdout and time.time() - start < 60
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


@pytest.mark.default_lane
def test_save_interval_0_saves_only_the_end(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_train(run_dir, *RUN, "checkpoint.save_interval=0", "train.steps=3")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert [p.name for p in checkpoint.complete_checkpoints(run_dir / "checkpoints")] == ["step_00000003"]


def _in_small_filesystem(mib: int, folder: Path, *overrides: str) -> subprocess.CompletedProcess:
    """train.py with its checkpoints on a tmpfs of ``mib`` MiB (a user and mount namespace: no root needed)."""
    folder.mkdir(parents=True)
    if shutil.which("unshare") is None or subprocess.run(
            ["unshare", "--user", "--map-root-user", "--mount", "true"], capture_output=True).returncode != 0:
        pytest.skip("no user namespaces here to mount a small file system in")
    train = " ".join([sys.executable, str(ROOT / "train.py"), f"train.run_dir={folder.parent / 'run'}",
                      f"checkpoint.dir={folder}", "logging.progress=false", "logging.wandb.mode=disabled",
                      f"data.cache_dir={folder.parent / 'cache'}", *overrides])
    return subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                           f"mount -t tmpfs -o size={mib}m tmpfs {folder} && {train}"],
                          cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)


@pytest.mark.slow
def test_a_full_disk_says_so(tmp_path):
    """A save that runs out of space mid-write (3 MiB for a 21 MiB checkpoint), and one that cannot fit beside the
    last (30 MiB): each stops the run (exit 3) with 'no space left' and the last good checkpoint."""
    mid = _in_small_filesystem(3, tmp_path / "a" / "ckpt", *RUN)
    assert mid.returncode == 3, mid.stdout[-3000:]
    assert f"training halted: step 2: no space left on the file system of {tmp_path / 'a' / 'ckpt'} while saving" in mid.stdout
    assert "Last good checkpoint: none" in mid.stdout

    before = _in_small_filesystem(30, tmp_path / "b" / "ckpt", *RUN)
    assert before.returncode == 3, before.stdout[-3000:]
    assert f"training halted: step 4: no space left for a checkpoint in {tmp_path / 'b' / 'ckpt'}: " in before.stdout
    assert f"Last good checkpoint: {tmp_path / 'b' / 'ckpt' / 'step_00000002'}." in before.stdout
