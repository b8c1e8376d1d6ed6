"""The layout planner: exact per-GPU parameters (checked against megatron-core's model on the meta
device), memory arithmetic, and rejections in the user's terms."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import ROOT
from qwenpt.plan.memory import GiB


def _plan_cli(*args: str) -> tuple[int, str, dict]:
    proc = subprocess.run([sys.executable, "-m", "qwenpt.plan", *args], cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=300)
    return proc.returncode, proc.stdout, json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("args", [
    ["+experiment=pretrain_qwen2_72b", "--gpus", "128"],  # TP8 SP x PP4 x VPP5, untied
    ["+experiment=pretrain_qwen2_57b_a14b", "--gpus", "64"],  # TP4 x PP2 x EP8 (ETP1), shared expert
    ["model=qwen2.5_0.5b", "parallel.tensor_model_parallel_size=2", "parallel.pipeline_model_parallel_size=2",
     "--gpus", "8"],  # tied embeddings: a synced copy on the last stage
    ["+experiment=pretrain_qwen3_30b_a3b", "--gpus", "16"],  # QK-norm, heads of 128 on hidden 2048, EP16, no shared expert
    ["+experiment=pretrain_qwen3_235b_a22b", "--gpus", "256"],  # TP4 SP x PP2 x EP32, 47 layers per stage
])


def test_parameters_per_gpu_match_megatron_core_on_meta_device(args):
    rc, out, plan = _plan_cli(*args, "--check-megatron")
    assert rc == 0, out[-3000:]
    checks = plan["megatron_check"]
    assert len(checks) == len(plan["stages"]) >= 1
    for check, stage in zip(checks, plan["stages"]):
        assert check["megatron"] == check["plan"] == stage["params"], check
        # the memory figures are these exact counts times bytes per parameter
        assert stage["weights_gib"] == pytest.approx(2 * check["megatron"] / GiB, abs=0.006)
        assert stage["grads_gib"] == pytest.approx(4 * check["megatron"] / GiB, abs=0.006)


def test_rejects_a_layout_that_does_not_fit_with_the_reason():
    rc, out, plan = _plan_cli("+experiment=pretrain_qwen2_72b", "parallel.pipeline_model_parallel_size=2",
                              "parallel.virtual_pipeline_model_parallel_size=null",
                              "parallel.use_distributed_optimizer=false", "parallel.overlap_param_gather=false",
                              "--gpus", "32")
    assert rc == 1 and not plan["fits"]
    assert "does not fit: pipeline stage 0 needs" in out and "parallel.use_distributed_optimizer=true" in out
    assert plan["peak_gib"] > plan["usable_gib"] == 72.0
