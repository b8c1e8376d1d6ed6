"""Hugging Face interop: import at any layout gives transformers' logits, export reproduces every tensor,
resharding keeps logits, and bad checkpoints are refused with the tensor named."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT
from helpers.convert import MODELS


@pytest.mark.slow
@pytest.mark.parametrize("tp,pp", [(2, 1), (1, 2)])
def test_import_at_tp2_and_pp2_gives_transformers_logits(converted, tp, pp):
    pairs = [str(p) for key in MODELS for p in converted[key][1:3]]
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(ROOT / "tests" / "workers" / "verify_worker.py"), str(tp), str(pp), *pairs],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600, cwd=ROOT,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert proc.returncode == 0, proc.stdout[-4000:]
    results = [json.loads(line.split("VERIFY ", 1)[1]) for line in proc.stdout.splitlines() if line.startswith("VERIFY ")]
    assert len(results) == len(MODELS)
    for r in results:
        assert r["layout"] == {"tp": tp, "pp": pp, "ep": 1} and r["max_abs_diff"] <= 1e-5, r


def test_verify_cli_exits_nonzero_above_tolerance(converted, tmp_path):
    _, hf_dir, ckpt, _ = converted["tied"]
    other = converted["dense_gqa"][2]  # another model's weights
    ok = subprocess.run([sys.executable, "-m", "qwenpt.convert", "verify", "--hf", str(hf_dir), "--ckpt", str(ckpt),
                         "--tolerance", "1e-5"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert ok.returncode == 0, ok.stdout[-3000:]
    assert json.loads(ok.stdout.strip().splitlines()[-1])["max_abs_diff"] <= 1e-5
    bad = subprocess.run([sys.executable, "-m", "qwenpt.convert", "verify", "--hf", str(hf_dir), "--ckpt", str(other),
                          "--tolerance", "1e-5"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert bad.returncode == 1 and "ABOVE the tolerance" in bad.stdout
    assert json.loads(bad.stdout.strip().splitlines()[-1])["max_abs_diff"] > 1e-3


@pytest.mark.slow
def test_train_from_hf_at_tp2_then_reshard_to_tp1_and_pp2(converted, tmp_path):
    """train.py checkpoint.init_from_hf at TP=2 converts and starts from the HF weights; its TP=2
    checkpoint read back at TP=1 (export to HF) and at PP=2 (verify against that export) gives the
    same logits."""
    _, hf_dir, _, _ = converted["dense_gqa"]
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(ROOT / "train.py"),
           f"train.run_dir={run_dir}", "logging.progress=false", "logging.wandb.mode=disabled",
           f"data.cache_dir={tmp_path / 'cache'}", "model.tie_embeddings=false", "parallel=tp2_sp",
           f"checkpoint.init_from_hf={hf_dir}", "train.steps=2", "optim.warmup_steps=1", "train.eval_interval=2"]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600, cwd=ROOT,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert f"initialised weights from {run_dir / 'checkpoints' / 'hf_import'}" in proc.stdout
    step2 = run_dir / "checkpoints" / "step_00000002"
    export = subprocess.run([sys.executable, "-m", "qwenpt.convert", "export", "--ckpt", str(step2), "--out",
                             str(tmp_path / "hf_step2")], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert export.returncode == 0, export.stdout[-3000:]
    trained = load_file(str(tmp_path / "hf_step2" / "model.safetensors"))
    start = load_file(str(hf_dir / "model.safetensors"))
    assert not torch.equal(trained["model.layers.0.mlp.up_proj.weight"], start["model.layers.0.mlp.up_proj.weight"])
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(ROOT / "tests" / "workers" / "verify_worker.py"), "1", "2", str(tmp_path / "hf_step2"), str(step2)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600, cwd=ROOT,
        env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stdout[-4000:]
    (line,) = [ln for ln in proc.stdout.splitlines() if ln.startswith("VERIFY ")]
    result = json.loads(line.split("VERIFY ", 1)[1])
    assert result["layout"] == {"tp": 1, "pp": 2, "ep": 1} and result["max_abs_diff"] <= 1e-5
