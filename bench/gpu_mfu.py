"""train.py against Megatron-LM's own pretrain_gpt.py on GPUs: tokens/s/GPU, TFLOP/s/GPU, MFU, peak memory.

    python bench/gpu_mfu.py --megatron-lm /path/to/Megatron-LM [--model qwen2.5_1.5b] [--seq 4096]
        [--micro-batch 2] [--global-batch 16] [--gpus 1] [--fp8 hybrid] [--steps 30] [--warmup 10] [--repeats 2]

Both sides train the same model (every architecture number from conf/model/, passed to pretrain_gpt.py as
its flags), sequence length, micro and global batch, layout, precision (bf16, optionally TE's FP8) and
fusions (TE layer spec, fused RoPE, bias-SwiGLU fusion, gradient-accumulation fusion when TE is there),
with the distributed optimizer and recomputation off. Runs alternate (qwenpt, Megatron-LM, qwenpt, ...),
each in its own torchrun launch; a run's throughput is the median step time after ``--warmup`` steps, and the
report is the median over ``--repeats``. The FLOPs of both come from one formula, ``qwenpt.flops``, so
TFLOP/s and MFU differ only by measured time. qwenpt reads the bundled sample; Megatron-LM its mock data
(random tokens: a dense model's work does not depend on token values). Peak memory is
``torch.cuda.max_memory_allocated`` (qwenpt) and the "max allocated" Megatron-LM reports after its first
step, against the layout planner's estimate. pretrain_gpt.py (with the tree's gpt_builders.py and
model_provider.py) runs on the installed megatron-core, whose wheel ships megatron.training, so both sides
use one megatron-core; the tree's own megatron/ only where the installed package lacks it. Results go to bench/results/gpu_mfu.json, one entry per
model/precision/micro-batch, so several invocations build one table. Without ``--megatron-lm`` only the
qwenpt side runs (and the ratio is absent).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GiB = 1024**3


def compose_cfg(args: argparse.Namespace, run_dir: Path):
    from hydra import compose, initialize_config_dir

    from qwenpt.config import register

    register()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        return compose(config_name="config", overrides=qwenpt_overrides(args, run_dir))


def qwenpt_overrides(args: argparse.Namespace, run_dir: Path) -> list[str]:
    te = args.te
    return [
        f"model={args.model}", f"data.seq_length={args.seq}", f"train.micro_batch_size={args.micro_batch}",
        f"train.global_batch_size={args.global_batch}", f"train.steps={args.steps}", "train.precision=bf16",
        f"train.fp8={args.fp8 or 'null'}", f"train.fp8_recipe={args.fp8_recipe}", "optim.warmup_steps=0",
        f"train.eval_interval={args.steps}", "train.eval_steps=1", f"checkpoint.save_interval={10 * args.steps}",
        "checkpoint.resume=false", "checkpoint.keep_last=1", f"train.run_dir={run_dir}",
        f"data.cache_dir={run_dir.parent / 'cache'}", "logging.wandb.mode=disabled", "logging.progress=false",
        f"logging.log_interval={args.steps}", f"parallel.tensor_model_parallel_size={args.tp}",
        f"parallel.sequence_parallel={str(args.tp > 1).lower()}", f"parallel.gradient_accumulation_fusion={str(te).lower()}",
        f"data.document_mask={str(getattr(args, 'worker_mask', 'on') == 'on').lower()}",
    ]


def megatron_args(args: argparse.Namespace, m: Any) -> list[str]:
    """pretrain_gpt.py flags for the same model and run (dense Qwen; MoE is refused up front)."""
    from qwenpt.models.size import head_dim

    flags = [
        "--num-layers", m.num_layers, "--hidden-size", m.hidden_size, "--ffn-hidden-size", m.ffn_hidden_size,
        "--num-attention-heads", m.num_attention_heads, "--group-query-attention", "--num-query-groups",
        m.num_query_groups, "--kv-channels", head_dim(m), "--max-position-embeddings", m.max_position_embeddings,
        "--position-embedding-type", "rope", "--rotary-base", int(m.rope_theta), "--rotary-percent", "1.0",
        "--normalization", "RMSNorm", "--norm-epsilon", m.norm_eps, "--swiglu", "--disable-bias-linear",
        "--init-method-std", m.init_std, "--attention-dropout", "0", "--hidden-dropout", "0",
        # the exact vocabulary (NullTokenizer adds one EOD id), no padding at any TP
        "--tokenizer-type", "NullTokenizer", "--vocab-size", m.vocab_size - 1, "--make-vocab-size-divisible-by", 1,
        "--mock-data", "--seq-length", args.seq, "--micro-batch-size", args.micro_batch,
        "--global-batch-size", args.global_batch, "--train-iters", args.steps,
        "--optimizer", "adam", "--lr", "3e-4", "--min-lr", "3e-5", "--lr-decay-style", "cosine", "--weight-decay", "0.1",
        "--adam-beta1", "0.9", "--adam-beta2", "0.95", "--clip-grad", "1.0", "--bf16", "--calculate-per-token-loss",
        "--tensor-model-parallel-size", args.tp, "--pipeline-model-parallel-size", 1, "--seed", 1234,
        "--eval-iters", 0, "--eval-interval", 10 * args.steps, "--log-interval", 1, "--log-throughput",
        "--transformer-impl", "transformer_engine" if args.te else "local",
    ]
    if args.tp > 1:
        flags.append("--sequence-parallel")
    if m.qkv_bias:
        flags.append("--add-qkv-bias")
    if getattr(m, "qk_layernorm", False):
        flags.append("--qk-layernorm")
    if not m.tie_embeddings:
        flags.append("--untie-embeddings-and-output-weights")
    if args.fp8:
        flags += ["--fp8-format", args.fp8, "--fp8-recipe", args.fp8_recipe]
    if not args.te:  # both fusions are TE kernels; the fused masked softmax is apex's extension, absent here
        flags += ["--no-gradient-accumulation-fusion", "--no-rope-fusion", "--no-masked-softmax-fusion"]
    return [str(f) for f in flags]


def torchrun(gpus: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}"]


def steady(step_times_s: list[float], warmup: int) -> float:
    """Median step time after the warmup steps."""
    timed = step_times_s[warmup:]
    if not timed:
        raise SystemExit(f"only {len(step_times_s)} steps ran; need more than --warmup {warmup}")
    return statistics.median(timed)


def _launch(cmd: list[str], log: Path, **kwargs: Any) -> tuple[int, str]:
    """Run one training launch with its output streamed to ``log`` (a run stopped from outside keeps its log)."""
    with open(log, "w") as f:
        code = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, text=True, **kwargs).returncode
    return code, log.read_text(errors="replace")


def run_qwenpt(args: argparse.Namespace, work: Path, i: int, mask: str = "on") -> dict:
    out, log = work / f"qwenpt_mask_{mask}_{i}.json", work / f"qwenpt_mask_{mask}_{i}.log"
    cmd = [*torchrun(args.gpus), str(Path(__file__).resolve()), "--worker", str(out), "--worker-mask", mask,
           *sys.argv[1:]]  # the worker re-parses the same flags
    code, text = _launch(cmd, log, cwd=ROOT)
    if code != 0:
        raise SystemExit(f"qwenpt run failed (log {log}):\n{text[-4000:]}")
    result = json.loads(out.read_text())
    head = [ln.split(" - ")[-1] for ln in text.splitlines() if re.search(r"\] - (model|world) ", ln)]
    return {"step_s": steady(result["step_times_s"], args.warmup), "max_allocated_gib": result["max_allocated_gib"],
            "gpu_busy": result.get("gpu_busy"), "log_head": head, "document_lengths": result.get("document_lengths")}


def worker(args: argparse.Namespace) -> None:
    """One qwenpt training run under torchrun: train.py's Trainer (its fit loop: data loader, schedule, metrics,
    logging), then the step times it logged and the peak memory."""
    import logging

    import torch
    from torch.autograd import DeviceType

    from qwenpt.metrics import read_metrics
    from qwenpt.training.loop import Trainer
    from qwenpt.validation import configure

    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s", stream=sys.stdout)
    run_dir = Path(args.worker).with_suffix("")
    trainer = Trainer(configure(compose_cfg(args, run_dir)))
    trainer.evaluator.should_run = lambda step: False  # evaluation and checkpoint saves off: the train steps are measured
    trainer.save = lambda: None
    rank = int(os.environ.get("RANK", "0"))
    profiler = _profile_last_steps(trainer, args.steps, args.profile) if args.profile and rank == 0 else None
    trainer.fit()
    trainer.close()
    peak = torch.cuda.max_memory_allocated() / GiB
    peaks = [None] * int(os.environ.get("WORLD_SIZE", "1"))
    torch.distributed.all_gather_object(peaks, peak)
    if rank == 0:
        train = read_metrics(run_dir, "train")
        times = [r["step_time_s"] for r in train][: args.steps - args.profile]  # profiled steps run slower
        result = {"step_times_s": times, "max_allocated_gib": max(peaks)}
        if trainer.cfg.data.document_mask:  # the documents the steps trained on: their attention FLOPs
            result["document_lengths"] = _document_lengths(trainer.train_ds, args.steps * args.global_batch)
        if profiler is not None:
            averages = profiler.key_averages()
            # GPU busy: kernel time over the profiled steps' wall time (far below 1: the host sets the pace).
            # Kernels are their own (CUDA) events; a CPU op's device time repeats its kernels', as in torch's table
            kernels_s = sum(e.self_device_time_total for e in averages if e.device_type == DeviceType.CUDA) / 1e6
            wall_s = sum(r["step_time_s"] for r in train[-args.profile:])
            result["gpu_busy"] = round(kernels_s / wall_s, 3) if wall_s else None
            key = "self_device_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
            table = averages.table(sort_by=key, row_limit=30, max_name_column_width=70)
            Path(args.worker).with_name("qwenpt_profile.txt").write_text(
                f"last {args.profile} step(s): {wall_s:.3f} s wall, {kernels_s:.3f} s of GPU kernels\n{table}\n")
        Path(args.worker).write_text(json.dumps(result))


def _document_lengths(dataset: Any, samples: int) -> list[int]:
    """The lengths of the documents (as document masking cuts them) in the first ``samples`` samples."""
    from qwenpt.packing import document_bounds

    lengths: list[int] = []
    for i in range(min(samples, len(dataset))):
        bounds = document_bounds(dataset[i]["position_ids"].reshape(1, -1)).tolist()
        lengths += [b - a for a, b in zip(bounds[:-1], bounds[1:])]
    return lengths


def _profile_last_steps(trainer: Any, steps: int, n: int):
    """torch.profiler over the last ``n`` training steps (kernels by GPU time: where a step's time goes)."""
    import torch

    profiler = torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA],
        schedule=torch.profiler.schedule(wait=steps - n - 1, warmup=1, active=n, repeat=1))
    step = trainer.train_step

    def profiled(iterators: list):
        if trainer.step == 0:
            profiler.start()
        try:
            return step(iterators)
        finally:
            profiler.step()
            if trainer.step + 1 == steps:
                profiler.stop()

    trainer.train_step = profiled
    return profiler


_ITER = re.compile(r"elapsed time per iteration \(ms\): ([0-9.]+)")
_MEM = re.compile(r"max allocated: ([0-9.]+)")


def megatron_entry(tree: Path, work: Path) -> tuple[Path, dict, str]:
    """pretrain_gpt.py and the two modules it imports, run against the installed megatron-core, whose wheel
    ships megatron.training (0.19+), so that both sides use one megatron-core; the tree's own megatron/
    package only where the installed one lacks megatron.training."""
    import importlib.util
    import shutil

    if importlib.util.find_spec("megatron.training") is None:
        path = os.pathsep.join(filter(None, [str(tree), os.environ.get("PYTHONPATH")]))
        return tree / "pretrain_gpt.py", {"PYTHONPATH": path}, "tree"
    entry = work / "megatron_lm_entry"
    entry.mkdir(exist_ok=True)
    for name in ("pretrain_gpt.py", "gpt_builders.py", "model_provider.py"):
        shutil.copy(tree / name, entry / name)
    return entry / "pretrain_gpt.py", {}, "installed"


def run_megatron(args: argparse.Namespace, m: Any, work: Path, i: int) -> dict:
    script, extra_env, _ = megatron_entry(Path(args.megatron_lm).resolve(), work)
    cmd = [*torchrun(args.gpus), str(script), *megatron_args(args, m)]
    env = dict(os.environ, CUDA_DEVICE_MAX_CONNECTIONS="1", **extra_env)
    log = work / f"megatron_{i}.log"
    code, text = _launch(cmd, log, cwd=work, env=env)
    times = [float(t) / 1000 for t in _ITER.findall(text)]
    if code != 0 or not times:
        raise SystemExit(f"pretrain_gpt.py failed (log {log}):\n{text[-4000:]}")
    mem = [float(x) / 1024 for x in _MEM.findall(text)]
    return {"step_s": steady(times, args.warmup), "max_allocated_gib": max(mem) if mem else None}


def megatron_tree_version(tree: Path) -> Optional[str]:
    info = tree / "megatron" / "core" / "package_info.py"
    if not info.is_file():
        return None
    text = info.read_text()
    parts = [re.search(rf"^{k} = ['\"]?([^'\"\n]*)", text, re.M) for k in ("MAJOR", "MINOR", "PATCH", "PRE_RELEASE")]
    if not all(parts[:3]):
        return None
    return ".".join(m.group(1) for m in parts[:3]) + (parts[3].group(1) if parts[3] else "")


def launch_latency_us(n: int = 2000) -> float:
    """Host time of one small CUDA kernel launch through PyTorch (median of 3 batches of ``n``). A step of
    a 1.5B model issues tens of thousands of launches: on a slow host they, not the GPU, set the pace."""
    import time

    import torch

    x = torch.zeros(1, device="cuda")
    for _ in range(100):
        x.add_(1)
    torch.cuda.synchronize()
    samples = []
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(n):
            x.add_(1)
        torch.cuda.synchronize()
        samples.append((time.perf_counter() - start) / n * 1e6)
    return round(statistics.median(samples), 2)


def summarize(step_s: float, tokens_per_step: int, gpus: int, flops_per_token: float, peak_tflops: Optional[float]) -> dict:
    tps = tokens_per_step / step_s / gpus
    tflops = tps * flops_per_token / 1e12
    return {"step_s": round(step_s, 4), "tokens_per_s_per_gpu": round(tps, 1), "tflops_per_gpu": round(tflops, 1),
            "mfu": round(tflops / peak_tflops, 4) if peak_tflops else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--megatron-lm", help="a Megatron-LM source tree (pretrain_gpt.py) at the installed megatron-core's version")
    ap.add_argument("--model", default="qwen2.5_1.5b")
    ap.add_argument("--seq", type=int, default=4096)
    ap.add_argument("--micro-batch", type=int, default=2)
    ap.add_argument("--global-batch", type=int, default=16)
    ap.add_argument("--gpus", type=int, default=1)
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--fp8", choices=["hybrid", "e4m3"], default=None)
    ap.add_argument("--fp8-recipe", default="delayed")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--document-mask", choices=["on", "off", "both"], default="both",
                    help="qwenpt with document masking (the default for training), without, or both; Megatron-LM "
                         "runs without (its local spec has no packed-sequence attention), so the ratio is taken "
                         "against qwenpt without")
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="profile qwenpt's last N steps (torch.profiler; kernel table in the workdir, steps not timed)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "gpu_mfu.json"))
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--worker-mask", default="on", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if not 0 <= args.profile < args.steps - args.warmup:
        ap.error(f"--profile {args.profile} must leave timed steps: at most --steps - --warmup - 1 = {args.steps - args.warmup - 1}")

    import torch

    from qwenpt.models.builder import use_transformer_engine

    args.te = use_transformer_engine()
    if args.worker:
        return worker(args)
    if not torch.cuda.is_available():
        raise SystemExit("bench/gpu_mfu.py measures GPUs and this machine has none; bench/train_throughput.py runs on CPU")

    import megatron.core

    from qwenpt.flops import peak_tflops, training_flops_per_token
    from qwenpt.plan.planner import Gpu, make_plan

    work = Path(args.workdir or tempfile.mkdtemp(prefix="qwenpt-gpu-mfu-"))
    work.mkdir(parents=True, exist_ok=True)
    cfg = compose_cfg(args, work / "plan")
    m = cfg.model
    if m.num_experts is not None:
        raise SystemExit(f"model={args.model} is an MoE model; this benchmark compares dense models")
    gpu_name = torch.cuda.get_device_name()
    peak = peak_tflops()
    known = next((k for k in ("H200", "H100", "H800", "A100", "A800", "L40S") if k in gpu_name), None)
    planned = make_plan(cfg, args.gpus, Gpu.named(known)).summary()["peak_gib"] if known else None
    flops_per_token = training_flops_per_token(m, args.seq)
    tokens_per_step = args.global_batch * args.seq
    tree_version = megatron_tree_version(Path(args.megatron_lm)) if args.megatron_lm else None
    core_used = megatron_entry(Path(args.megatron_lm).resolve(), work)[2] if args.megatron_lm else None
    if core_used == "tree" and tree_version != megatron.core.__version__:
        print(f"warning: pretrain_gpt.py runs on the tree's megatron-core {tree_version}, qwenpt on the installed "
              f"{megatron.core.__version__}", file=sys.stderr)

    launch_us = launch_latency_us()
    print(f"{gpu_name}: {launch_us} us per small kernel launch (host side)", flush=True)
    runs: dict[str, list[dict]] = {"qwenpt": [], "qwenpt_unmasked": [], "megatron_lm": []}
    sides = []
    if args.document_mask in ("on", "both"):
        sides.append(("qwenpt", "qwenpt (document masking)", lambda i: run_qwenpt(args, work, i, "on")))
    if args.document_mask in ("off", "both"):
        sides.append(("qwenpt_unmasked", "qwenpt (no masking)", lambda i: run_qwenpt(args, work, i, "off")))
    if args.megatron_lm:
        sides.append(("megatron_lm", "Megatron-LM", lambda i: run_megatron(args, m, work, i)))
    failures = []
    for i in range(args.repeats):  # alternating, so drift (clocks, thermals) hits both alike
        for side, name, run in sides:
            try:
                runs[side].append(run(i))
            except SystemExit as failure:  # one side's failed launch does not hide the other side's figures
                failures.append(f"{name} (repeat {i}): {failure}")
                print(failures[-1], file=sys.stderr, flush=True)
                continue
            print(f"repeat {i}: {name} {runs[side][-1]['step_s'] * 1e3:.1f} ms/step", flush=True)
    if not any(runs.values()):
        raise SystemExit("\n".join(failures))

    result: dict[str, Any] = {}
    for side, rs in runs.items():
        if rs:
            result[side] = summarize(statistics.median(r["step_s"] for r in rs), tokens_per_step, args.gpus,
                                     flops_per_token, peak)
            result[side]["max_allocated_gib"] = max((r["max_allocated_gib"] or 0) for r in rs) or None
            result[side]["repeats_step_s"] = [round(r["step_s"], 4) for r in rs]
            busy = [r["gpu_busy"] for r in rs if r.get("gpu_busy") is not None]
            if busy:
                result[side]["gpu_busy"] = busy[0]
            lengths = rs[0].get("document_lengths")
            if lengths:  # MFU from the FLOPs the documents' own attention needs (full-causal above)
                doc_flops = training_flops_per_token(m, args.seq, lengths)
                result[side]["document_flops_per_token"] = doc_flops
                result[side]["mfu_documents"] = summarize(result[side]["step_s"], tokens_per_step, args.gpus,
                                                          doc_flops, peak)["mfu"]
                result[side]["mean_document_tokens"] = round(sum(lengths) / len(lengths), 1)
    # equal work: Megatron-LM's local spec runs unmasked, so the ratio is against qwenpt unmasked
    peer_side = "qwenpt_unmasked" if "qwenpt_unmasked" in result else "qwenpt"
    ratio = (result[peer_side]["tokens_per_s_per_gpu"] / result["megatron_lm"]["tokens_per_s_per_gpu"]
             if "megatron_lm" in result and peer_side in result else None)
    masking_cost = (result["qwenpt_unmasked"]["tokens_per_s_per_gpu"] / result["qwenpt"]["tokens_per_s_per_gpu"]
                    if "qwenpt" in result and "qwenpt_unmasked" in result else None)
    key = f"{args.model}/{'fp8-' + args.fp8 if args.fp8 else 'bf16'}/seq{args.seq}/mbs{args.micro_batch}/gpus{args.gpus}"
    entry = {
        "model": args.model, "precision": f"bf16 + fp8 {args.fp8} ({args.fp8_recipe})" if args.fp8 else "bf16",
        "seq_length": args.seq, "micro_batch": args.micro_batch, "global_batch": args.global_batch, "gpus": args.gpus,
        "tp": args.tp, "steps": args.steps, "warmup": args.warmup, "repeats": args.repeats,
        "attention": "Transformer Engine" if args.te else "SDPA (qwenpt) / local (Megatron-LM)",
        "flops_per_token": flops_per_token, "peak_tflops": peak, "planner_peak_gib": planned,
        **result, "ratio": round(ratio, 3) if ratio else None, "ratio_sides": f"{peer_side} / megatron_lm",
        "masking_slowdown": round(masking_cost, 3) if masking_cost else None,
        "env": {"gpu": gpu_name, "python": platform.python_version(), "torch": torch.__version__,
                "cuda": torch.version.cuda, "megatron_core": megatron.core.__version__,
                "megatron_lm_tree": tree_version, "pretrain_gpt_megatron_core": core_used,
                "transformer_engine": _te_version(), "kernel_launch_us": launch_us},
        "qwenpt_log": next((rs[0]["log_head"] for side, rs in runs.items() if side != "megatron_lm" and rs), None),
        "failures": failures,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    table = json.loads(out.read_text()) if out.is_file() else {}
    table[key] = entry
    out.write_text(json.dumps(table, indent=2) + "\n")

    print(f"\n{key} on {args.gpus} x {gpu_name} ({entry['attention']}); planner estimate {planned} GiB")
    print(f"{'':16}{'tokens/s/GPU':>14}{'TFLOP/s/GPU':>13}{'MFU':>8}{'MFU docs':>10}{'peak GiB':>10}{'GPU busy':>10}")
    for side in ("qwenpt", "qwenpt_unmasked", "megatron_lm"):
        if side in result:
            r = result[side]
            mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "-"
            mem = f"{r['max_allocated_gib']:.1f}" if r["max_allocated_gib"] else "-"
            busy = f"{r['gpu_busy']:.0%}" if r.get("gpu_busy") is not None else "-"
            docs = f"{r['mfu_documents']:.1%}" if r.get("mfu_documents") is not None else "-"
            print(f"{side:16}{r['tokens_per_s_per_gpu']:>14,.0f}{r['tflops_per_gpu']:>13.1f}{mfu:>8}{docs:>10}"
                  f"{mem:>10}{busy:>10}")
    if ratio:
        print(f"ratio {peer_side} / Megatron-LM (equal work, no masking): {ratio:.3f}")
    if masking_cost:
        print(f"document masking: {masking_cost:.3f}x the unmasked step time")
    print(f"wrote {out} [{key}]")
    if failures:
        raise SystemExit(f"{len(failures)} run(s) failed:\n" + "\n".join(failures))


def _te_version() -> Optional[str]:
    try:
        import transformer_engine

        return transformer_engine.__version__
    except ImportError:
        return None


if __name__ == "__main__":
    main()
