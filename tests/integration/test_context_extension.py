"""Long context beyond document masking and YaRN: staged extension (a new run from another's
checkpoint), validation loss by position, the planner at 32K, and Dual Chunk Attention."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from conftest import ROOT
from conftest import compose_cfg


# ---- Dual Chunk Attention -------------------------------------------------------------------------


# ---- position buckets -----------------------------------------------------------------------------


# ---- planner at 32K -------------------------------------------------------------------------------


def test_planner_sizes_the_qwen2_7b_32k_stage_and_rejects_it_without_context_parallel():
    from qwenpt.plan import Gpu, make_plan
    from qwenpt.plan.memory import GiB

    plan = make_plan(compose_cfg("+experiment=long_context_qwen2_7b"), 32, Gpu.named("H100"))
    assert plan.fits and (plan.dp, plan.num_microbatches) == (4, 32)
    (stage,) = plan.stages
    # 32768 tokens / CP 4 per GPU; TP 2 + SP; per layer 2 bytes x (4 h + 2 q + 2 kv + 3 ffn) / TP per token
    tokens = 32768 // 4
    layer = 2 * tokens * (4 * 3584 + 2 * 3584 + 2 * 512 + 3 * 18944) / 2
    assert stage.activations == pytest.approx(28 * layer + 6 * tokens * 152064 / 2)
    assert 50 < stage.total / GiB < 55
    proc = subprocess.run([sys.executable, "-m", "qwenpt.plan", "+experiment=long_context_qwen2_7b",
                           "parallel.context_parallel_size=1", "--gpus", "32"], cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout[-2000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not summary["fits"] and summary["peak_gib"] > 100  # the 32K activations alone are 81.7 GiB
    assert "parallel.context_parallel_size=2" in summary["problems"][0]


# ---- a two-stage run ------------------------------------------------------------------------------


@pytest.mark.slow
def test_extension_stage_runs_the_previous_stage_and_logs_position_losses(tmp_path):
    """One command: stage 1 (run by stage 2 as its previous_stage, one process) at 256 tokens and RoPE base
    1e4, then stage 2 on two data-parallel processes at 512 tokens, base 1e6, with the optimizer state kept:
    its own step count and LR schedule, and validation losses per position bucket in metrics.jsonl and the
    runs table."""
    from qwenpt.metrics import read_metrics
    from qwenpt.scaling.runs import collect_runs

    stage1 = ["+experiment=long_context_tiny_stage1", "train.steps=3", "optim.warmup_steps=1", "train.eval_interval=3",
              "train.eval_steps=1", "checkpoint.save_interval=3", "logging.progress=false",
              f"data.cache_dir={tmp_path / 'cache'}"]
    stage1 = "[" + ",".join(f"'{arg}'" for arg in stage1) + "]"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(ROOT / "train.py"),
           "+experiment=long_context_tiny", f"checkpoint.previous_stage={stage1}", "checkpoint.init_optimizer=true",
           "data.seq_length=512", "train.steps=3", "optim.warmup_steps=2", "train.eval_interval=3", "train.eval_steps=1",
           "logging.progress=false", f"data.cache_dir={tmp_path / 'cache'}"]
    env = dict(os.environ, QWENPT_RUNS=str(tmp_path), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:]
    first = read_metrics(tmp_path / "long_context_tiny_stage1")
    assert [r["step"] for r in first if r["kind"] == "train"] == [1, 2, 3]
    assert "new stage from" in proc.stdout and "step 3 of" in proc.stdout
    for change in ("model.rope_theta 10000.0 -> 1000000.0", "data.seq_length 256 -> 512", "and optimizer state"):
        assert change in proc.stdout, change

    records = read_metrics(tmp_path / "long_context_tiny")
    train = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3]  # its own step count
    assert train[0]["lr"] == pytest.approx(1e-3 / 2)  # its own schedule: warmup step 1 of 2 to lr 1e-3
    valid = [r for r in records if r["kind"] == "valid"]
    assert [r["step"] for r in valid] == [0, 3]
    # started from stage 1's weights (3 steps from a random model at loss ln 8192): not a random model
    assert valid[0]["loss"] < [r["loss"] for r in first if r["kind"] == "valid"][0] - 0.1
    for r in valid:
        by_position = r["position_loss"]
        assert len(by_position) == 8 and all(v is not None and math.isfinite(v) for v in by_position)
        assert min(by_position) <= r["loss"] <= max(by_position)
    table = collect_runs([tmp_path / "long_context_tiny"]).to_pylist()
    assert [row["valid_loss_pos7"] for row in table] == [r["position_loss"][7] for r in valid]
