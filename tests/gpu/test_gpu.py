"""The GPU path: Transformer Engine's layer spec against the SDPA spec, HF import verified with TE, bf16
(and FP8) training on one GPU, tensor parallelism over NCCL. Marker ``gpu``: skipped without CUDA."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, hf_model, model_config, run_train
from qwenpt.metrics import read_metrics

pytestmark = pytest.mark.gpu

SHORT = ["train.steps=60", "optim.lr=2e-3", "optim.min_lr=2e-4", "optim.warmup_steps=10", "train.eval_interval=30",
         "checkpoint.save_interval=60"]
# bf16 keeps 8 mantissa bits: the same weights give logits that differ by a few bf16 ulps between kernels
# (cuBLAS/cuDNN fused attention vs torch SDPA, TE's fused RMSNorm and RoPE vs torch's). Both specs in bf16 are
# compared to the SDPA spec in fp32; TE's error may be at most twice the SDPA spec's own bf16 error plus 2e-3
# of the logit scale, and the two bf16 runs may differ by at most 2% of the logit scale.
BF16_RELATIVE = 2e-2


def _has_te() -> bool:
    from qwenpt.models.builder import use_transformer_engine

    return use_transformer_engine()


# on a GPU without Transformer Engine (it did not install) these are skipped, and say so; without a GPU
# every test here is skipped by tests/gpu/conftest.py
needs_te = pytest.mark.skipif(torch.cuda.is_available() and not _has_te(), reason="needs Transformer Engine")


def _build(m, dtype: torch.dtype, te: bool, monkeypatch):
    from qwenpt.config import ParallelConfig
    from qwenpt.models import builder

    with monkeypatch.context() as patch:
        if not te:  # the SDPA spec on a GPU: what runs where TE is absent
            patch.setattr(builder, "use_transformer_engine", lambda: False)
        model = builder.build_model(m, ParallelConfig(), dtype)[0].eval()
    return model


def _logits(model, tokens: torch.Tensor) -> torch.Tensor:
    from qwenpt.convert.hf import megatron_logits

    with torch.no_grad():
        return megatron_logits([model], tokens)


@pytest.mark.parametrize("te", [False, True])
def test_built_model_lives_on_the_gpu(te, megatron_world, monkeypatch):
    """Every parameter and buffer on the GPU, qwenpt's own modules (norms) too: the first run on a GPU found
    them left on the CPU, and DDP's first broadcast failed."""
    if te and not _has_te():
        pytest.skip("needs Transformer Engine")
    model = _build(model_config("tiny"), torch.bfloat16, te=te, monkeypatch=monkeypatch)
    assert {t.device.type for t in [*model.parameters(), *model.buffers()]} == {"cuda"}


@needs_te
@pytest.mark.parametrize("name", ["tiny", "tiny_moe"])
def test_te_spec_logits_match_sdpa_spec(name, megatron_world, monkeypatch, tmp_path):
    """Same weights (a checkpoint written by the SDPA spec, read by TE's: its _extra_state is absent)."""
    from qwenpt import checkpoint

    m = model_config(name)
    reference = _build(m, torch.float32, te=False, monkeypatch=monkeypatch)
    checkpoint.save_model(tmp_path / "weights", [reference])
    te = _build(m, torch.bfloat16, te=True, monkeypatch=monkeypatch)
    sdpa = _build(m, torch.bfloat16, te=False, monkeypatch=monkeypatch)
    assert any(k.endswith("_extra_state") for k in te.state_dict())  # it is TE's spec
    for model in (te, sdpa):
        checkpoint.load_model(tmp_path / "weights", [model])
    tokens = torch.randint(0, m.vocab_size, (2, 256), generator=torch.Generator().manual_seed(0))
    ref, got_te, got_sdpa = (_logits(x, tokens) for x in (reference, te, sdpa))
    scale = ref.abs().max().item()
    err_te, err_sdpa = (got_te - ref).abs().max().item(), (got_sdpa - ref).abs().max().item()
    print(f"{name}: logit scale {scale:.3f}, bf16 error vs fp32: TE {err_te:.4f}, SDPA {err_sdpa:.4f}")
    assert err_te <= 2 * err_sdpa + 2e-3 * scale
    assert (got_te - got_sdpa).abs().max().item() <= BF16_RELATIVE * scale


@needs_te
def test_hf_import_verifies_with_te_spec(tmp_path):
    """import on a GPU (TE's spec, _extra_state included) and verify against transformers (fp32)."""
    m = model_config("tiny", tie_embeddings=False)
    hf_model(m).save_pretrained(tmp_path / "hf")

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "qwenpt.convert", *args], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=600)

    imported = cli("import", "--hf", str(tmp_path / "hf"), "--out", str(tmp_path / "ckpt"))
    assert imported.returncode == 0, imported.stdout[-3000:]
    verified = cli("verify", "--hf", str(tmp_path / "hf"), "--ckpt", str(tmp_path / "ckpt"), "--tolerance", "1e-3")
    assert verified.returncode == 0, verified.stdout[-3000:]
    result = json.loads(verified.stdout.strip().splitlines()[-1])
    assert result["max_abs_diff"] <= 1e-3  # fp32 weights; TE's GEMMs may use TF32-free cuBLAS paths


@pytest.mark.parametrize("name", ["tiny", "tiny_moe"])
def test_training_on_gpu_loss_falls(name, tmp_path):
    proc = run_train(tmp_path / "run", f"model={name}", *SHORT)
    assert proc.returncode == 0, proc.stdout[-3000:]
    attention = "Transformer Engine" if _has_te() else "SDPA"
    assert f"GPU, {attention} attention, dtype bfloat16" in proc.stdout  # train.precision=auto: bf16 on a GPU
    valid = read_metrics(tmp_path / "run", "valid")
    assert [r["step"] for r in valid] == [0, 30, 60]
    assert valid[-1]["loss"] < valid[0]["loss"] - 2.0, valid
    train = read_metrics(tmp_path / "run", "train")
    known_gpu = any(k in torch.cuda.get_device_name() for k in ("H100", "H200", "H800", "A100", "A800", "L40S"))
    assert all(r["tokens_per_s"] > 0 for r in train) and (train[-1]["mfu"] is not None) == known_gpu


@needs_te
@pytest.mark.skipif(torch.cuda.is_available() and torch.cuda.get_device_capability() < (8, 9),
                    reason="FP8 needs compute capability 8.9 (Ada, Hopper) or newer")
def test_fp8_training_tracks_bf16(tmp_path):
    """TE's FP8 (hybrid format, delayed scaling) on top of bf16: the loss falls and follows bf16's; FP8
    quantisation noise on a 1.8M-parameter model is stated as at most 0.15 nats per step."""
    runs = {}
    for name, extra in (("bf16", []), ("fp8", ["train.fp8=hybrid", "train.fp8_recipe=delayed"])):
        proc = run_train(tmp_path / name, *SHORT, "train.precision=bf16", *extra)
        assert proc.returncode == 0, proc.stdout[-3000:]
        runs[name] = [(r["kind"], r["step"], r["loss"]) for r in read_metrics(tmp_path / name)]
    gaps = [abs(a[2] - b[2]) for a, b in zip(runs["bf16"], runs["fp8"])]
    print(f"fp8 vs bf16: max per-step loss gap {max(gaps):.4f}")
    assert [k[:2] for k in runs["fp8"]] == [k[:2] for k in runs["bf16"]]
    assert max(gaps) <= 0.15 and max(gaps) > 0
    assert runs["fp8"][-1][2] < runs["fp8"][0][2] - 2.0


@pytest.mark.skipif(torch.cuda.is_available() and torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_tp2_sp_on_two_gpus_tracks_one_gpu(tmp_path):
    """NCCL: TP 2 + sequence parallel from the same seed checkpoint follows the one-GPU run (bf16)."""
    common = ["logging.progress=false", "logging.wandb.mode=disabled", f"data.cache_dir={tmp_path / 'cache'}",
              "train.steps=20", "optim.warmup_steps=2", "train.eval_interval=10", "checkpoint.save_interval=100"]
    seed = tmp_path / "seed" / "checkpoints" / "seed"

    def train(run: str, nproc: int, *extra: str) -> None:
        launcher = [sys.executable] if nproc == 1 else [
            sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
        proc = subprocess.run([*launcher, str(ROOT / "train.py"), f"train.run_dir={tmp_path / run}", *common, *extra],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900,
                              env=dict(os.environ, PYTHONUNBUFFERED="1"))
        assert proc.returncode == 0, proc.stdout[-3000:]

    train("seed", 1, "checkpoint.create_seed=true")
    train("tp1", 1, f"checkpoint.init_from={seed}")
    train("tp2", 2, f"checkpoint.init_from={seed}", "parallel=tp2_sp")
    one, two = read_metrics(tmp_path / "tp1"), read_metrics(tmp_path / "tp2")
    assert [(r["kind"], r["step"]) for r in two] == [(r["kind"], r["step"]) for r in one]
    for a, b in zip(one, two):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-2), (a, b)
    assert one[-1]["loss"] < one[0]["loss"] - 1.0


def test_one_varlen_call_per_layer_matches_per_document_attention(megatron_world, monkeypatch):
    """Document masking on a GPU runs torch's variable-length flash attention once per layer; in bf16 it gives
    the per-document SDPA path's losses and gradients within bf16 rounding (GQA, causal, each document alone)."""
    from conftest import model_config
    from qwenpt.models import attention
    from qwenpt.packing import packed_seq_params

    if attention.varlen_attn is None:
        pytest.skip(f"torch {torch.__version__} has no torch.nn.attention.varlen (2.11+)")
    m = model_config("tiny")
    torch.manual_seed(0)
    model = _build(m, torch.bfloat16, False, monkeypatch).train()
    lengths = [700, 1, 300, 1000, 47]  # one sample of 2048 tokens
    position_ids = torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0).cuda()
    tokens = torch.randint(1, m.vocab_size, (1, sum(lengths)), device="cuda")
    params = packed_seq_params(position_ids)

    def run(kernel):
        monkeypatch.setattr(attention.SDPAttention, "packed_kernel", kernel)
        losses = model(tokens, position_ids, None, labels=tokens, packed_seq_params=params)
        losses.float().sum().backward()
        grads = {n: p.grad.float().clone() for n, p in model.named_parameters()}
        model.zero_grad()
        return losses.float().detach(), grads

    one_call, one_grads = run("auto")  # bf16 on CUDA: varlen
    per_doc, per_doc_grads = run("per_document")
    assert attention.varlen_available(tokens.device, torch.bfloat16)
    assert (one_call - per_doc).abs().max().item() <= BF16_RELATIVE * per_doc.abs().max().item()
    for name, g in one_grads.items():
        ref = per_doc_grads[name]
        assert (g - ref).abs().max().item() <= BF16_RELATIVE * max(ref.abs().max().item(), 1e-6), name


def test_a_steady_state_step_syncs_a_constant_few_times(tmp_path):
    """CUDA's own sync detector (``torch.cuda.set_sync_debug_mode``) over a training step of the 1.5B's layer
    structure at seq 4096 with document masking: at most bench/step_budget.py's budget of host syncs."""
    script = (
        "import json, sys; sys.path.insert(0, 'bench'); import step_budget\n"
        "r = step_budget.count_step(step_budget.narrow_model('qwen2.5_1.5b', 4096), 4096, 2, 8, True, 'bf16', 'auto', "
        f"workdir={str(tmp_path)!r})\n"
        "print('RESULT ' + json.dumps(r))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    r = json.loads(next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))[7:])
    assert r["cuda_syncs"] is not None and r["cuda_syncs"] <= 16, r
    assert r["host_syncs"] <= 16, r["sync_sites"]


def _has_fla() -> bool:
    try:
        import fla.ops.gated_delta_rule  # noqa: F401
    except ImportError:
        return False
    return True


# the hybrid models' Gated DeltaNet kernels on a GPU (the gpu extra, scripts/gpu/minimal.txt)
needs_fla = pytest.mark.skipif(torch.cuda.is_available() and not _has_fla(), reason="needs flash-linear-attention")


@needs_fla
def test_fla_gated_delta_rule_matches_the_cpu_kernels():
    """flash-linear-attention's chunked kernel and causal conv (what megatron-core's GDN calls on a GPU) against
    qwenpt's torch kernels (the CPU path, itself equal to transformers'), packed documents included (fp32 in,
    the kernels' own tf32/bf16 inside: 1e-2 of the output scale)."""
    from fla.modules.l2norm import l2norm
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule

    from qwenpt.models import hybrid

    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 300, 4, 64, generator=g), torch.randn(1, 300, 4, 64, generator=g)
    v, decay, beta = torch.randn(1, 300, 4, 64, generator=g), -torch.rand(1, 300, 4, generator=g), torch.rand(1, 300, 4, generator=g)
    cu = torch.tensor([0, 100, 101, 300], dtype=torch.int32)
    ours, _ = hybrid.chunk_gated_delta_rule(hybrid.l2norm(q), hybrid.l2norm(k), v, decay, beta, cu_seqlens=cu)
    gpu = [t.cuda() for t in (q, k, v, decay, beta)]
    theirs, _ = chunk_gated_delta_rule(l2norm(gpu[0]), l2norm(gpu[1]), *gpu[2:], cu_seqlens=cu.long().cuda())
    assert (theirs.float().cpu() - ours).abs().max().item() <= 1e-2 * ours.abs().max().item()


@needs_fla
@pytest.mark.parametrize("name", ["tiny_qwen3_5", "tiny_qwen3_5_moe"])
def test_hybrid_training_on_gpu_loss_falls(name, tmp_path):
    """The hybrids on a GPU: megatron-core's GDN with fla's kernels, packed documents, MTP on."""
    proc = run_train(tmp_path / "run", f"model={name}", *SHORT)
    assert proc.returncode == 0, proc.stdout[-3000:]
    valid = read_metrics(tmp_path / "run", "valid")
    assert valid[-1]["loss"] < valid[0]["loss"] - 2.0, valid
    train = read_metrics(tmp_path / "run", "train")
    assert train[-1]["mtp_loss"][0] < train[0]["mtp_loss"][0] - 1.0
