"""The hybrid generation (Qwen3-Next, Qwen3.5, Qwen3.6): the CPU Gated DeltaNet equals transformers' torch
path, packed documents through GDN equal each document alone, Hugging Face checkpoints import with
transformers' logits at TP1/TP2/PP2/EP2 and export back bit for bit (MTP tensors included, which transformers
drops), and the tiny hybrids train with MTP on."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import ROOT, run_train
from qwenpt.metrics import read_metrics
from helpers.hybrid import MODELS, PACKS_GDN


# ---------------------------------------------------------------- Hugging Face interop


@pytest.mark.slow
@pytest.mark.parametrize("layout", [("2", "1"), ("1", "2"), ("--ep", "2", "1", "1")])
def test_import_at_tp2_pp2_ep2_gives_transformers_logits(converted_hybrids, layout):
    keys = ["qwen3_5_moe", "qwen3_next"] if layout[0] == "--ep" else list(MODELS)
    pairs = [str(p) for key in keys for p in converted_hybrids[key][1:3]]
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(ROOT / "tests" / "workers" / "verify_worker.py"), *layout, *pairs],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    results = [json.loads(line[len("VERIFY "):]) for line in proc.stdout.splitlines() if line.startswith("VERIFY ")]
    assert len(results) == len(keys)
    assert all(r["max_abs_diff"] <= 1e-5 for r in results), results


# ---------------------------------------------------------------- training

TRAIN = ["train.steps=16", "optim.warmup_steps=2", "optim.lr=3e-3", "data.seq_length=128", "train.global_batch_size=8",
         "train.micro_batch_size=4", "train.eval_interval=16", "train.eval_steps=2", "checkpoint.save_interval=0"]


@pytest.mark.slow
# lane 2 trains the dense hybrid in its layouts' references (tests/integration/test_parallel.py)
@pytest.mark.parametrize("name", [pytest.param("tiny_qwen3_5", marks=pytest.mark.default_lane), "tiny_qwen3_5_moe"])
def test_tiny_hybrids_train_with_mtp(tmp_path, name):
    """train.py as a user runs it (documents packed where megatron-core's GDN takes them): the validation loss
    falls, and each step logs the MTP layer's loss, which falls too."""
    mask = [] if PACKS_GDN else ["data.document_mask=false"]
    proc = run_train(tmp_path / "run", f"model={name}", *TRAIN, *mask)
    assert proc.returncode == 0, proc.stdout[-3000:]
    rows = read_metrics(tmp_path / "run")
    valid = [r["loss"] for r in rows if r["kind"] == "valid"]
    train = [r for r in rows if r["kind"] == "train"]
    assert len(valid) == 2 and valid[1] < valid[0] - 0.5, valid
    assert len(train) == 16 and all(len(r["mtp_loss"]) == 1 for r in train)
    assert train[-1]["mtp_loss"][0] < train[0]["mtp_loss"][0] - 0.5
    assert "MTP loss" in proc.stdout
