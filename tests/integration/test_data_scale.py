"""Data at scale (issue 17): near-duplicate detection quality, quality filters' counts, Slurm array
tasks + merge byte-identical to one machine, a killed task's rerun, slurm/prepare_data.sh.

Inputs are the bundled sample (qwenpt/assets/sample, GPL-2+, see its COPYRIGHT) and crafted text.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from data_pipeline.manifest import Manifest
from data_pipeline.neardedup import NearDedupConfig
from data_pipeline.prepare import prepare
from data_pipeline.tasks import TaskSplit, merge
from qwenpt.data import BUNDLED_TOKENIZER

from conftest import ROOT
from helpers.data_scale import _config, _corpus


def tree(root: Path) -> dict[str, bytes]:
    """Every output file's bytes, but the run's bookkeeping (locks, the task plan)."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.name.startswith(".lock") and p.parent.name != "tasks"}


# --- near-duplicates: the synthetic set ------------------------------------------------------------


# --- quality filters -------------------------------------------------------------------------------


# --- tasks, merge, a killed task -------------------------------------------------------------------


@pytest.mark.slow
def test_three_tasks_and_merge_equal_one_machine_and_a_killed_task_reruns_alone(tmp_path, tokenizer):
    """Task 1 of 3 is killed (SIGKILL) inside its second file; merge refuses, naming task 1; rerunning
    task 1 redoes that file only; merge then writes exactly the bytes of a one-machine run. Near-dup
    and cross-file duplicate counts land in the manifest by language and source."""
    files = _corpus(tmp_path / "src")
    near = NearDedupConfig()
    multi = tmp_path / "multi"
    for i in (0, 2):
        prepare(_config(files, multi, near_dedup=near, tasks=TaskSplit(3, i)), tokenizer)
    e = files[4]  # task 1 takes b and e (files 1 and 4); e becomes a pipe it blocks in
    content, mtime = e.read_bytes(), e.stat().st_mtime_ns
    e.unlink()
    os.mkfifo(e)
    fifo = e
    cmd = [sys.executable, "-m", "data_pipeline", "prepare", *map(str, files), "-o", str(multi), "--tokenizer", str(BUNDLED_TOKENIZER),
           "--dedup", "--near-dedup", "--batch-docs", "4", "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "SLURM_ARRAY_TASK_COUNT": "3", "SLURM_ARRAY_TASK_ID": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        fd = _open_for_writing(fifo, proc)  # the task has opened e (reading runs ahead of writing b)
        deadline = time.monotonic() + 120
        while not any((multi / "shards").glob("b-*/stats.json")) and time.monotonic() < deadline:
            assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
            time.sleep(0.05)  # until b is written: the kill must land inside e
        os.write(fd, content[:300])
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        os.close(fd)  # the orphaned reader sees the end of the pipe and exits
    finally:
        proc.kill()
    _wait_unlocked(multi / ".lock-task-1")  # that reader inherited the task's lock (Slurm kills it with the task)
    shards = {p.name.split("-")[0]: p for p in (multi / "shards").iterdir()}
    assert (shards["b"] / "stats.json").is_file() and not (shards["e"] / "stats.json").exists()
    e.unlink()  # e as a regular file again, as it was
    e.write_bytes(content)
    os.utime(e, ns=(mtime, mtime))
    with pytest.raises(RuntimeError, match=r"not prepared.*rerun task\(s\) \[1\] of 3"):
        merge(multi, tokenizer)
    stamps = {name: (p / "stats.json").stat().st_mtime_ns for name, p in shards.items() if (p / "stats.json").exists()}
    prepare(_config(files, multi, near_dedup=near, tasks=TaskSplit(3, 1)), tokenizer)
    after = {name: (p / "stats.json").stat().st_mtime_ns for name, p in shards.items()}
    assert {n for n in after if stamps.get(n) != after[n]} == {"e"}  # only the killed file was redone
    merged = merge(multi, tokenizer)
    one = prepare(_config(files, tmp_path / "one", near_dedup=near), tokenizer)
    assert merged.drops_by_reason() == one.drops_by_reason() == {"duplicate": 4, "near_duplicate": 4}
    rows = {(r["lang"], r["source"]): dict(r["drops"]) for r in one.table.to_pylist()}
    assert rows[("en", "b")] == {"near_duplicate": 1, "duplicate": 1} and rows[("en", "f")] == {"near_duplicate": 1}
    assert rows[("ja", "d")] == rows[("fr", "e")] == {"near_duplicate": 1} and rows[("de", "c")] == {"duplicate": 2}
    assert tree(multi) == tree(tmp_path / "one")


def _wait_unlocked(path: Path, timeout: float = 120) -> None:
    fd = os.open(path, os.O_RDWR)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(fd, fcntl.LOCK_UN)
                return
            except OSError:
                assert time.monotonic() < deadline, f"{path} still locked"
                time.sleep(0.05)
    finally:
        os.close(fd)


def _open_for_writing(path: Path, proc: subprocess.Popen) -> int:

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            return os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:  # no reader yet
            assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
            time.sleep(0.05)
    raise TimeoutError("the task never opened the pipe")


# --- slurm/prepare_data.sh -------------------------------------------------------------------------

SBATCH = r"""#!/bin/bash
# stand-in sbatch: log the call, run the --wrap command now (each array index in turn), print a job id
n=$(( $(wc -l < "$SBATCH_LOG" 2>/dev/null || echo 0) + 101 ))
echo "$n $*" >> "$SBATCH_LOG"
array="" wrap=""
for a in "$@"; do
    case $a in --array=*) array=${a#--array=} ;; --wrap=*) wrap=${a#--wrap=} ;; esac
done
if [ -n "$array" ]; then
    for i in $(seq "${array%-*}" "${array#*-}"); do
        SLURM_ARRAY_TASK_ID=$i SLURM_ARRAY_TASK_COUNT=$(( ${array#*-} + 1 )) bash -c "$wrap" >> "$SBATCH_LOG.out" 2>&1 || exit 1
    done
else
    bash -c "$wrap" >> "$SBATCH_LOG.out" 2>&1 || exit 1
fi
echo "$n"
"""


@pytest.mark.slow
def test_prepare_data_script_plans_and_runs_the_array_then_merge(tmp_path, tokenizer):
    """Dry run: the plan (files per task) and three sbatch calls chained by afterok. With a stand-in
    sbatch that runs each job, the 2-task prepare + buckets + merge output equals one machine's."""
    src = tmp_path / "src"
    _corpus(src)
    out = tmp_path / "slurm-out"
    args = [str(src), "--output", str(out), "--tokenizer", str(BUNDLED_TOKENIZER), "--dedup", "--near-dedup", "--batch-docs", "4"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env["QWENPT_RUNS"] = str(tmp_path / "runs")
    dry = subprocess.run(["bash", str(ROOT / "slurm" / "prepare_data.sh"), *args], cwd=ROOT, text=True, capture_output=True,
                         env={**env, "QWENPT_DRY_RUN": "1", "PREP_TASKS": "2"}, timeout=120)
    assert dry.returncode == 0, dry.stderr
    lines = dry.stdout.splitlines()
    assert lines[0] == "plan: 6 input files, " + lines[0].split(", ")[1] + ", 2 prepare tasks, near-dedup threshold 0.7"
    assert lines[1].startswith("task 0: 3 files") and "a.jsonl, c.jsonl, e.jsonl" in lines[1]
    assert lines[2].startswith("task 1: 3 files") and "b.jsonl, d.jsonl, f.jsonl" in lines[2]
    sbatch = [x for x in lines if x.startswith("sbatch ")]
    assert len(sbatch) == 3 and not out.exists()
    assert "--array=0-1" in sbatch[0] and "--num-tasks\\ 2" in sbatch[0]
    assert "--dependency=afterok:\\<qwenpt-prepare\\>" in sbatch[1] and "buckets" in sbatch[1]
    assert "--dependency=afterok:\\<qwenpt-buckets\\>" in sbatch[2] and "merge" in sbatch[2]

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(SBATCH)
    (bin_dir / "sbatch").chmod(0o755)
    log = tmp_path / "sbatch.log"
    run = subprocess.run(["bash", str(ROOT / "slurm" / "prepare_data.sh"), *args], cwd=ROOT, text=True, capture_output=True,
                         env={**env, "PREP_TASKS": "2", "SBATCH_LOG": str(log), "PATH": f"{bin_dir}:{env['PATH']}"}, timeout=600)
    assert run.returncode == 0, run.stderr + Path(f"{log}.out").read_text()[-3000:]
    calls = log.read_text().splitlines()
    assert [c.split()[0] for c in calls] == ["101", "102", "103"]
    assert "--dependency=afterok:101" in calls[1] and "--dependency=afterok:102" in calls[2]
    assert "submitted: prepare array 101 (tasks 0-1 of 2), buckets array 102, merge 103" in run.stdout
    ref = prepare(_config([src], tmp_path / "one", near_dedup=NearDedupConfig()), tokenizer)
    assert Manifest.read(out / "manifest.parquet").drops_by_reason() == ref.drops_by_reason()
    assert tree(out) == tree(tmp_path / "one")
