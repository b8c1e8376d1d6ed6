"""Every parallel layout trains the same model as one process: same per-step losses (fp32, rel 1e-5).

All runs start from one seed checkpoint (``checkpoint.create_seed``), so layers built on different
pipeline stages or expert ranks hold the same weights; runs of one world size share a launch
(tests/workers/layouts_worker.py) to save start-up time.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT
from qwenpt.metrics import read_metrics
from qwenpt.models.hybrid import megatron_packs_gdn

LAYOUT_COMMON = [
    "logging.progress=false", "logging.wandb.mode=disabled", "train.steps=5", "optim.warmup_steps=1",
    "train.eval_interval=5", "train.eval_steps=1", "checkpoint.save_interval=100",
]
TP2_SP = ["parallel.tensor_model_parallel_size=2", "parallel.sequence_parallel=true"]
VPP2 = ["parallel.pipeline_model_parallel_size=2", "parallel.virtual_pipeline_model_parallel_size=2",
        "train.micro_batch_size=4"]
EP2 = ["parallel.expert_model_parallel_size=2"]
ALLTOALL = ["parallel.moe_token_dispatcher_type=alltoall"]
# name: (model, world size, overrides, the layout the run must log)
LAYOUTS = {
    "dp2": ("tiny", 2, [], "tp 1 x pp 1 x cp 1 x dp 2"),
    "dp2_distopt_overlap": ("tiny", 2, ["parallel=distopt", "checkpoint.save_interval=3", "checkpoint.keep_last=0"],
                            "tp 1 x pp 1 x cp 1 x dp 2, distributed optimizer"),
    "tp2": ("tiny", 2, ["parallel.tensor_model_parallel_size=2"], "tp 2 x pp 1 x cp 1 x dp 1"),
    "tp2_sp": ("tiny", 2, TP2_SP, "tp 2 (sp) x pp 1 x cp 1 x dp 1"),
    "pp2_vpp2": ("tiny", 2, VPP2, "tp 1 x pp 2 (x2 virtual) x cp 1 x dp 1"),
    # PP2 (1F1B) itself, with selective recompute on top
    "pp2_selective_recompute": ("tiny", 2, ["parallel.pipeline_model_parallel_size=2", "parallel.recompute_granularity=selective"],
                                "tp 1 x pp 2 x cp 1 x dp 1, selective recompute"),
    "tp2_sp_full_recompute": ("tiny", 2, TP2_SP + ["parallel.recompute_granularity=full"],
                              "tp 2 (sp) x pp 1 x cp 1 x dp 1, full recompute"),
    "cp2": ("tiny", 2, ["parallel.context_parallel_size=2"], "tp 1 x pp 1 x cp 2 x dp 1"),
    "moe_ep2_alltoall": ("tiny_moe", 2, EP2 + ALLTOALL, "x dp 2, experts ep 2 x etp 1, alltoall"),
    "moe_tp2_sp": ("tiny_moe", 2, TP2_SP, "tp 2 (sp) x pp 1 x cp 1 x dp 1, experts ep 1 x etp 2"),
    "tp2_sp_pp2_vpp2": ("tiny", 4, TP2_SP + VPP2, "tp 2 (sp) x pp 2 (x2 virtual) x cp 1 x dp 1"),
    "moe_tp2_sp_ep2_etp1_alltoall_distopt": (
        "tiny_moe", 4,
        TP2_SP + EP2 + ALLTOALL + ["parallel.expert_tensor_parallel_size=1", "parallel.use_distributed_optimizer=true"],
        "tp 2 (sp) x pp 1 x cp 1 x dp 2, experts ep 2 x etp 1, alltoall, distributed optimizer",
    ),
    "moe_tp2_sp_ep2_etp2_allgather": ("tiny_moe", 4, TP2_SP + EP2, "x dp 2, experts ep 2 x etp 2, allgather"),
    # Qwen3: QK-norm (its weight gradient all-reduced over TP), head width 64 != hidden / heads
    "qwen3_tp2_sp": ("tiny_qwen3", 2, TP2_SP, "tp 2 (sp) x pp 1 x cp 1 x dp 1"),
    "qwen3_pp2": ("tiny_qwen3", 2, ["parallel.pipeline_model_parallel_size=2"], "tp 1 x pp 2 x cp 1 x dp 1"),
    # Qwen3-MoE: renormalised top-k, global-batch load balancing; EP2 spreads the batch over dp 2, so each
    # rank's one micro-batch of 8 is half the reference's one micro-batch of 16 (the same global expert counts)
    "qwen3_moe_ep2": ("tiny_qwen3_moe", 2, EP2 + ALLTOALL + ["train.micro_batch_size=8"],
                      "x dp 2, experts ep 2 x etp 1, alltoall"),
    "qwen3_moe_tp2_sp": ("tiny_qwen3_moe", 2, TP2_SP, "tp 2 (sp) x pp 1 x cp 1 x dp 1, experts ep 1 x etp 2"),
    # the hybrids (Gated DeltaNet + gated attention, MTP on): the layer pattern split over two stages (GDN, GDN |
    # GDN, attention + the MTP layer with its copy of the embedding; untied: tied embeddings with MTP under PP are
    # refused) on both megatron-cores; on 0.18+ (lane 2, what GPU users run), on packed documents, also GDN heads
    # split over TP, experts over EP, and GDN under context parallelism (heads spread over the CP ranks by
    # all-to-all; without MTP, which megatron-core cannot shift on CP-padded documents: refused). Lane 1 checks
    # TP 2 and EP 2 of the hybrids through HF verify's logits (tests/integration/test_hybrid.py), within CI's time.
    "qwen3_5_moe_pp2": ("tiny_qwen3_5_moe", 2, ["parallel.pipeline_model_parallel_size=2"], "tp 1 x pp 2 x cp 1 x dp 1"),
    **({"qwen3_5_tp2_sp": ("tiny_qwen3_5", 2, TP2_SP, "tp 2 (sp) x pp 1 x cp 1 x dp 1"),
        "qwen3_5_moe_ep2": ("tiny_qwen3_5_moe", 2, EP2 + ALLTOALL + ["train.micro_batch_size=8"],
                            "x dp 2, experts ep 2 x etp 1, alltoall"),
        "qwen3_5_cp2": ("tiny_qwen3_5_nomtp", 2, ["parallel.context_parallel_size=2"], "tp 1 x pp 1 x cp 2 x dp 1")}
       if megatron_packs_gdn() else {}),
}
# The full matrix runs on megatron-core 0.18+ (CI's lane 2: what GPU users install). On older ones (lane 1: 0.16)
# one layout of each kind -- DP with the distributed optimizer and overlap, TP + SP, PP x VPP, CP, EP, the
# 4-process TP + SP x EP, the hybrid's PP -- keeps CI within its time.
if not megatron_packs_gdn():
    LAYOUTS = {name: LAYOUTS[name] for name in ("dp2_distopt_overlap", "tp2_sp", "pp2_vpp2", "cp2", "moe_ep2_alltoall",
                                                "moe_tp2_sp_ep2_etp1_alltoall_distopt", "qwen3_5_moe_pp2")}
# every run of a model, its reference included: global_aux_loss counts expert loads over the global batch as
# far as the step has seen it (a running mean over micro-batches), so the reference takes the whole batch as one
# micro-batch; and an aux-loss weight 10x Qwen3's, so that a wrong weight in a layout shows in the losses
# The hybrids pack documents where megatron-core's GDN takes them (0.18+), else train unpacked.
_GDN_MASK = [] if megatron_packs_gdn() else ["data.document_mask=false"]
MODEL_OVERRIDES = {"tiny_qwen3_moe": ["train.micro_batch_size=16", "model.moe_aux_loss_coeff=0.01"],
                   "tiny_qwen3_5": _GDN_MASK,
                   "tiny_qwen3_5_nomtp": ["model.mtp_num_layers=0"],
                   "tiny_qwen3_5_moe": ["train.micro_batch_size=16", "model.moe_aux_loss_coeff=0.01", *_GDN_MASK]}
CONF = {"tiny_qwen3_5_nomtp": "tiny_qwen3_5"}  # a reference run name -> its conf/model file
MODELS = tuple(dict.fromkeys(model for model, *_ in LAYOUTS.values()))  # each reference run once


def _launch(out, nproc: int, runs: dict[str, list[str]]) -> dict[str, str]:
    """Run ``runs`` in one launch; returns each run's share of the output."""
    launcher = [sys.executable] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    specs = [f"{name}={','.join(overrides)}" for name, overrides in runs.items()]
    proc = subprocess.run(
        [*launcher, str(ROOT / "tests" / "workers" / "layouts_worker.py"), str(out), *specs],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900, cwd=ROOT,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert proc.returncode == 0, proc.stdout[-4000:]
    logs = {}
    for part in proc.stdout.split("=== run ")[1:]:
        name, _, text = part.partition("\n")
        logs[name] = logs.get(name, "") + text
    return logs


@pytest.fixture(scope="module")
def layout_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("layouts")
    common = [*LAYOUT_COMMON, f"data.cache_dir={out / 'cache'}"]
    seeds = {m: out / f"seed_{m}" / "checkpoints" / "seed" for m in MODELS}
    start = {m: [*common, f"model={CONF.get(m, m)}", *MODEL_OVERRIDES.get(m, []), f"checkpoint.init_from={seeds[m]}"] for m in seeds}
    _launch(out, 1, {
        **{f"seed_{m}": [*common, f"model={CONF.get(m, m)}", *MODEL_OVERRIDES.get(m, []), "checkpoint.create_seed=true"]
           for m in seeds},
        **{f"single_{m}": start[m] for m in seeds},
    })
    logs = {}
    for nproc in (2, 4):
        logs.update(_launch(out, nproc, {name: start[m] + o for name, (m, n, o, _) in LAYOUTS.items() if n == nproc}))
    return out, logs


@pytest.mark.slow
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_layout_matches_single_process(layout_runs, layout):
    out, logs = layout_runs
    model, _, _, described = LAYOUTS[layout]
    assert described in logs[layout]  # the layout really ran (rank 0 logs it)
    ref, got = read_metrics(out / f"single_{model}"), read_metrics(out / layout)
    assert [(r["kind"], r["step"]) for r in got] == [(r["kind"], r["step"]) for r in ref]
    assert len(ref) == 7  # valid@0, five train steps, valid@5
    for x, y in zip(ref, got):
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-5), (layout, x, y)
    # the reference itself trains: the loss falls over the five steps
    assert ref[-1]["loss"] < ref[0]["loss"] - 0.2


@pytest.mark.slow
def test_distributed_optimizer_checkpoint_resumes_exactly(layout_runs):
    """The distributed optimizer's (DP-sharded) checkpoint: resuming from step 3 continues bit for bit."""
    out, _ = layout_runs
    run_dir = out / "dp2_distopt_overlap"
    uninterrupted = [(r["kind"], r["step"], r["loss"]) for r in read_metrics(run_dir)]
    shutil.rmtree(run_dir / "checkpoints" / "step_00000005")  # as if the run had died before saving step 5
    (run_dir / "checkpoints" / "latest").write_text("step_00000003\n")
    model, _, overrides, _ = LAYOUTS["dp2_distopt_overlap"]
    seed = out / f"seed_{model}" / "checkpoints" / "seed"
    logs = _launch(out, 2, {"dp2_distopt_overlap": [*LAYOUT_COMMON, f"data.cache_dir={out / 'cache'}", f"model={model}",
                                                     f"checkpoint.init_from={seed}", *overrides]})
    assert "resumed from" in logs["dp2_distopt_overlap"] and "at step 3" in logs["dp2_distopt_overlap"]
    assert [(r["kind"], r["step"], r["loss"]) for r in read_metrics(run_dir)] == uninterrupted
