"""A resumed or longer run reads the data an uninterrupted run would (issue 29): the training sample order does
not depend on train.steps, runs sharing a cache start together, CPU threads are a setting, and a run's batches
can be written out (python -m qwenpt.batches dump)."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT, run_train

GBS = 16

# Trainers built in one process (one after another), each yielding the token batches its loader reads
_SCRIPT = """
import json, logging, sys
from itertools import islice
from hydra import compose, initialize_config_dir
from qwenpt import distributed
from qwenpt.config import register
from qwenpt.training.loop import Trainer
from qwenpt.validation import configure

register()
logging.basicConfig(level=logging.INFO)
out = {}
for name, (overrides, steps) in json.loads(sys.argv[1]).items():
    with initialize_config_dir(config_dir=sys.argv[2], version_base=None):
        cfg = compose("config", overrides=overrides)
    trainer = Trainer(configure(cfg))
    try:
        first = trainer.step + 1
        micro = list(islice(trainer.train_iterators()[0], steps * trainer.num_micro))
        per_step = [micro[i:i + trainer.num_micro] for i in range(0, len(micro), trainer.num_micro)]
        out[name] = {"first": first, "horizon": trainer.horizon, "steps": [
            [m["tokens"].tolist() for m in step] for step in per_step]}
    finally:
        trainer.close()
        distributed.shutdown()
print("RESULT " + json.dumps(out))
"""


def _overrides(run_dir, cache, steps: int, *extra: str) -> list[str]:
    return [f"train.run_dir={run_dir}", f"data.cache_dir={cache}", f"train.steps={steps}", "logging.progress=false",
            "logging.wandb.mode=disabled", "optim.warmup_steps=2", *extra]


def _step_tokens(step: list) -> np.ndarray:
    """A step's global batch [GBS, seq] from its micro-batches."""
    return np.concatenate([np.asarray(m) for m in step])


@pytest.fixture(scope="module")
def orders(tmp_path_factory) -> dict:
    """A 12-step run saved at step 6 and resumed to 40 steps, against uninterrupted 12- and 40-step runs."""
    work = tmp_path_factory.mktemp("order")
    cache = work / "cache"
    resumed = work / "resumed"
    proc = run_train(resumed, "train.steps=12", "checkpoint.save_interval=6", "train.eval_interval=12",
                     "optim.warmup_steps=2")  # its cache: work / "cache"
    assert proc.returncode == 0, proc.stdout[-3000:]
    ckpts = resumed / "checkpoints"
    shutil.rmtree(ckpts / "step_00000012")  # resume from step 6, as after an interruption there
    (ckpts / "latest").write_text("step_00000006\n")
    cases = {
        "resumed to 40": (_overrides(resumed, cache, 40, "checkpoint.override_schedule=true"), 34),
        "uninterrupted 40": (_overrides(work / "u40", cache, 40, "checkpoint.resume=false"), 40),
        "uninterrupted 12": (_overrides(work / "u12", cache, 12, "checkpoint.resume=false"), 12),
        # the horizon set to exactly 12 steps: the old behaviour (an index sized by train.steps)
        "12, horizon 12 steps": (_overrides(work / "h12", cache, 12, "checkpoint.resume=false",
                                            f"data.sample_horizon={12 * GBS}"), 12),
        "40, horizon 12 steps": (_overrides(work / "h40", cache, 40, "checkpoint.resume=false",
                                            f"data.sample_horizon={12 * GBS}"), 12),
    }
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, json.dumps({k: list(v) for k, v in cases.items()}),
                           str(ROOT / "conf")], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))[7:])
    result["work"], result["log"] = str(work), proc.stderr
    return result


@pytest.mark.slow
def test_extending_a_run_continues_the_stream_of_an_uninterrupted_run(orders):
    u40, u12, resumed = orders["uninterrupted 40"], orders["uninterrupted 12"], orders["resumed to 40"]
    assert u40["horizon"] == u12["horizon"] == resumed["horizon"] >= 40 * GBS
    assert len(u40["steps"]) == 40 and resumed["first"] == 7 and len(resumed["steps"]) == 34
    for k in range(12):  # a 12-step run reads the first 12 steps of a 40-step one
        assert np.array_equal(_step_tokens(u12["steps"][k]), _step_tokens(u40["steps"][k])), k + 1
    for k in range(34):  # resumed after step 6 with train.steps=40: steps 7-40 of the uninterrupted run
        assert np.array_equal(_step_tokens(resumed["steps"][k]), _step_tokens(u40["steps"][k + 6])), k + 7
    # an index sized by train.steps (what megatron's builder did) reorders: the test can see the difference
    short, long = orders["12, horizon 12 steps"], orders["40, horizon 12 steps"]
    assert short["horizon"] == 12 * GBS and long["horizon"] == 48 * GBS
    same = sum(np.array_equal(_step_tokens(a), _step_tokens(b)) for a, b in zip(short["steps"], long["steps"]))
    assert same < 3
    from qwenpt.checkpoint import sample_horizon

    assert sample_horizon(f"{orders['work']}/resumed/checkpoints/step_00000006") == u40["horizon"]  # recorded
    assert "training order: an index of" in orders["log"]
    assert "grows from" not in orders["log"]  # resuming within the horizon: no data warning


@pytest.mark.default_lane  # qwenpt.batches over the loader; lane 2 checks the loader's order itself (above)
@pytest.mark.slow
def test_dump_writes_the_batches_the_run_reads(orders, tmp_path):
    work = orders["work"]
    out = tmp_path / "b.npz"
    proc = subprocess.run([sys.executable, "-m", "qwenpt.batches", "dump", "--run", f"{work}/resumed", "--steps", "5:8",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"wrote steps 5-8 (4 x {GBS} samples x 256 tokens) to {out}" in proc.stdout
    with np.load(out) as got:  # plain arrays: no pickle needed
        assert got["steps"].tolist() == [5, 6, 7, 8]
        assert got["tokens"].shape == got["labels"].shape == got["loss_mask"].shape == (4, GBS, 256)
        for k in range(4):
            assert np.array_equal(got["tokens"][k], _step_tokens(orders["uninterrupted 40"]["steps"][4 + k]))
        assert np.array_equal(got["labels"][:, :, :-1], got["tokens"][:, :, 1:])
    for steps, message in [("abc", "give steps as A:B"), ("0:3", "count from 1"),
                           ("70000:70001", "past this run's training index")]:
        proc = subprocess.run([sys.executable, "-m", "qwenpt.batches", "dump", "--run", f"{work}/resumed",
                               "--steps", steps], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


@pytest.mark.default_lane
@pytest.mark.slow
def test_two_trainers_start_together_on_one_fresh_cache_with_the_threads_asked_for(tmp_path):
    """Both prepare the bundled sample and build the index on one empty cache at the same moment: one
    waits for the other instead of failing; each logs the CPU threads it was given."""
    cache = tmp_path / "cache"
    procs = [subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), f"train.run_dir={tmp_path / f'run{i}'}", f"data.cache_dir={cache}",
         "train.steps=2", "optim.warmup_steps=0", "train.eval_steps=1", "logging.progress=false",
         "logging.wandb.mode=disabled", f"train.cpu_threads={i + 1}"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    for i, (p, out) in enumerate(zip(procs, outs)):
        assert p.returncode == 0, out[-3000:]
        assert f"{i + 1} CPU threads" in out
        assert "in use by another prepare run" not in out


@pytest.mark.default_lane
def test_an_up_to_date_folder_is_read_while_another_process_holds_its_lock(tmp_path):
    """Readers of a finished prepare output take no lock; a run that must write waits for the holder."""
    from data_pipeline.prepare import OutputLocked, PrepareConfig, prepare
    from qwenpt.data import BUNDLED_TOKENIZER, SAMPLE_DIR

    config = PrepareConfig(inputs=(str(SAMPLE_DIR / "en.jsonl.gz"),), output=str(tmp_path / "out"),
                           tokenizer=str(BUNDLED_TOKENIZER), progress=False)
    first = prepare(config)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from data_pipeline.prepare import "
         "output_lock\nwith output_lock(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(float(sys.argv[2]))",
         str(tmp_path / "out"), "4"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        start = time.perf_counter()
        again = prepare(config)  # up to date: read at once
        assert time.perf_counter() - start < 3
        assert again.total("tokens") == first.total("tokens") > 0
        changed = dataclasses.replace(config, rejects_log_limit=7)  # other settings: must write; fails, or waits
        with pytest.raises(OutputLocked, match="in use by another prepare run"):
            prepare(changed)
        start = time.perf_counter()
        assert prepare(changed, wait=True).total("documents") > 0
        assert time.perf_counter() - start > 0.5  # it waited for the holder
    finally:
        holder.kill()
        holder.wait()
