"""Plan a run's layout: validate it, and estimate per-GPU memory and step time without GPUs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from qwenpt.errors import ConfigError
from qwenpt.distributed import data_parallel_size, describe_layout
from qwenpt.validation import validate
from qwenpt.flops import PEAK_BF16_TFLOPS, training_flops_per_token
from qwenpt.models import param_counts
from qwenpt.plan.memory import GiB, StageMemory, expert_data_parallel_size, stage_memory

GPU_MEMORY_GIB = {"H200": 141.0, "H100": 80.0, "H800": 80.0, "A100": 80.0, "A800": 80.0, "L40S": 48.0}


@dataclass(frozen=True)
class Gpu:
    name: str
    memory_gib: float
    peak_tflops: float

    @classmethod
    def named(cls, name: str, memory_gib: Optional[float] = None, peak_tflops: Optional[float] = None) -> "Gpu":
        key = name.upper()
        if key not in GPU_MEMORY_GIB and (memory_gib is None or peak_tflops is None):
            raise ConfigError(
                f"GPU {name!r} is not known ({', '.join(GPU_MEMORY_GIB)}); give its memory and bf16 peak "
                "with --gpu-memory-gib and --peak-tflops"
            )
        return cls(
            name=key,
            memory_gib=memory_gib if memory_gib is not None else GPU_MEMORY_GIB[key],
            peak_tflops=peak_tflops if peak_tflops is not None else PEAK_BF16_TFLOPS[key],
        )


@dataclass
class Plan:
    model: str
    world_size: int
    dp: int
    expert_dp: Optional[int]
    num_microbatches: int
    stages: list[StageMemory]
    usable_bytes: float
    gpu: Gpu
    mfu: float
    tokens_per_step: int
    flops_per_step: float
    total_params: int
    problems: list[str] = field(default_factory=list)

    @property
    def peak_stage(self) -> StageMemory:
        return max(self.stages, key=lambda s: s.total)

    @property
    def step_time_s(self) -> float:
        return self.flops_per_step / (self.world_size * self.gpu.peak_tflops * 1e12 * self.mfu)

    @property
    def fits(self) -> bool:
        return not self.problems

    def summary(self) -> dict:
        peak = self.peak_stage
        return {
            "model": self.model, "world_size": self.world_size, "dp": self.dp, "expert_dp": self.expert_dp,
            "num_microbatches": self.num_microbatches, "fits": self.fits, "problems": self.problems,
            "peak_stage": peak.pp_rank, "peak_gib": round(peak.total / GiB, 2),
            "usable_gib": round(self.usable_bytes / GiB, 2),
            "stages": [
                {"pp_rank": s.pp_rank, "params": s.params.total, "weights_gib": round(s.weights / GiB, 2),
                 "grads_gib": round(s.grads / GiB, 2), "optimizer_gib": round(s.optimizer / GiB, 2),
                 "activations_gib": round(s.activations / GiB, 2), "total_gib": round(s.total / GiB, 2)}
                for s in self.stages
            ],
            "tokens_per_step": self.tokens_per_step, "flops_per_step": self.flops_per_step,
            "step_time_s": round(self.step_time_s, 3), "mfu": self.mfu, "gpu": self.gpu.name,
            "tokens_per_s": round(self.tokens_per_step / self.step_time_s),
        }


def make_plan(cfg: Any, world_size: int, gpu: Gpu, mfu: float = 0.4, headroom: float = 0.1) -> Plan:
    """Validate ``cfg`` at ``world_size`` GPUs (raises ConfigError in the user's terms) and size it."""
    validate(cfg, world_size, check_files=False)
    m, p, t, d = cfg.model, cfg.parallel, cfg.train, cfg.data
    dp = data_parallel_size(p, world_size)
    expert_dp = expert_data_parallel_size(p, world_size) if m.num_experts is not None else None
    num_micro = t.global_batch_size // (t.micro_batch_size * dp)
    bf16 = t.precision != "fp32"
    stages = [
        stage_memory(m, p, r, seq_length=d.seq_length, micro_batch=t.micro_batch_size, num_microbatches=num_micro,
                     dp=dp, expert_dp=expert_dp or dp, bf16=bf16)
        for r in range(p.pipeline_model_parallel_size)
    ]
    tokens = t.global_batch_size * d.seq_length
    plan = Plan(
        model=m.name, world_size=world_size, dp=dp, expert_dp=expert_dp, num_microbatches=num_micro, stages=stages,
        usable_bytes=gpu.memory_gib * GiB * (1 - headroom), gpu=gpu, mfu=mfu, tokens_per_step=tokens,
        flops_per_step=training_flops_per_token(m, d.seq_length) * tokens, total_params=param_counts(m).total,
    )
    peak = plan.peak_stage
    if peak.total > plan.usable_bytes:
        hints = []
        if not p.use_distributed_optimizer and dp > 1:
            hints.append("parallel.use_distributed_optimizer=true")
        if p.recompute_granularity != "full" and peak.activations > 0.25 * peak.total:
            hints.append("parallel.recompute_granularity=full")
        if p.tensor_model_parallel_size > 1 and not p.sequence_parallel:
            hints.append("parallel.sequence_parallel=true")
        if d.seq_length >= 16384 and peak.activations > 0.25 * peak.total:  # long context: split the sequence
            hints.append(f"parallel.context_parallel_size={2 * p.context_parallel_size}")
        hints.append("a larger pipeline_model_parallel_size or tensor_model_parallel_size, or more GPUs")
        plan.problems.append(
            f"does not fit: pipeline stage {peak.pp_rank} needs {peak.total / GiB:.1f} GiB per GPU, "
            f"{plan.usable_bytes / GiB:.1f} GiB usable of {gpu.name}'s {gpu.memory_gib:g} GiB "
            f"({headroom:.0%} headroom); try {', '.join(hints)}"
        )
    return plan


def render(plan: Plan, cfg: Any) -> str:
    p, t = cfg.parallel, cfg.train
    shown = plan.stages if len(plan.stages) <= 8 else [plan.stages[0], plan.peak_stage, plan.stages[-1]]
    cols = [f"stage {s.pp_rank}" for s in shown]
    lines = [
        f"{plan.model} on {plan.world_size} x {plan.gpu.name}: {describe_layout(p, plan.dp, cfg.model.num_experts is not None)}"
        + (f", expert dp {plan.expert_dp}" if plan.expert_dp else ""),
        f"parameters {plan.total_params / 1e9:.2f}B; global batch {t.global_batch_size} x {cfg.data.seq_length} = "
        f"{plan.tokens_per_step / 1e6:.2f}M tokens/step = micro {t.micro_batch_size} x {plan.num_microbatches} "
        f"micro-batches x dp {plan.dp}",
        "",
        f"{'per GPU (GiB)':<40}" + "".join(f"{c:>11}" for c in cols),
    ]
    wbytes = "bf16" if t.precision != "fp32" else "fp32"
    opt = "fp32 Adam, sharded over dp" if p.use_distributed_optimizer else "fp32 Adam, replicated"
    rows = [
        ("parameters (billions)", lambda s: f"{s.params.total / 1e9:.3f}"),
        (f"weights ({wbytes})", lambda s: f"{s.weights / GiB:.1f}"),
        ("gradients (fp32 main_grad)", lambda s: f"{s.grads / GiB:.1f}"),
        (f"optimizer ({opt})", lambda s: f"{s.optimizer / GiB:.1f}"),
        (f"activations ({p.recompute_granularity or 'no'} recompute)", lambda s: f"{s.activations / GiB:.1f}"),
        ("total", lambda s: f"{s.total / GiB:.1f}"),
    ]
    for label, cell in rows:
        lines.append(f"{label:<40}" + "".join(f"{cell(s):>11}" for s in shown))
    peak = plan.peak_stage
    lines += [
        "",
        f"peak {peak.total / GiB:.1f} GiB (stage {peak.pp_rank}) of {plan.usable_bytes / GiB:.1f} GiB usable "
        f"({plan.gpu.memory_gib:g} GiB less headroom for CUDA context, NCCL and fragmentation)",
        f"compute {plan.flops_per_step / 1e18:.2f} EFLOP/step; at MFU {plan.mfu:.0%} of {plan.gpu.peak_tflops:g} "
        f"TFLOP/s: {plan.step_time_s:.2f} s/step, {plan.tokens_per_step / plan.step_time_s:,.0f} tokens/s "
        f"({plan.tokens_per_step / plan.step_time_s / plan.world_size:,.0f} per GPU)",
        "fits" if plan.fits else "\n".join(plan.problems),
    ]
    return "\n".join(lines)
