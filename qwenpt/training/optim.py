"""megatron-core optimizer (AdamW; optional distributed optimizer) and LR schedule."""

from __future__ import annotations

from typing import Any

import torch
from megatron.core import utils as megatron_utils
from megatron.core.optimizer import MegatronOptimizer, OptimizerConfig, get_megatron_optimizer
from megatron.core.optimizer import clip_grads, optimizer as megatron_optimizer
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

from qwenpt.errors import check
from qwenpt.config import OptimConfig

_DECAY_STYLES = {"cosine": "cosine", "linear": "linear", "constant": "constant", "wsd": "WSD"}


def foreach_l2_norm(chunk_size: int, noop_flag: Any, tensor_lists: list, per_tensor: bool, *args: Any) -> tuple:
    """The global L2 norm of ``tensor_lists[0]`` on the device, in two kernels (``amp_C.multi_tensor_l2norm``'s
    contract). megatron-core's fallback without apex/TE builds a host list of per-parameter norms: one
    device-to-host copy per parameter (~200 per step for a 28-layer model)."""
    norms = torch._foreach_norm(tensor_lists[0], 2, dtype=torch.float32)
    return torch.linalg.vector_norm(torch.stack(norms)).reshape(1), None


def foreach_scale(chunk_size: int, noop_flag: Any, tensor_lists: list, scale: Any) -> None:
    """``dst = src * scale`` over two lists in a few fused kernels (``amp_C.multi_tensor_scale``'s contract);
    megatron-core's fallback launches two kernels per tensor."""
    sources, targets = tensor_lists
    if all(a is b for a, b in zip(sources, targets)):
        torch._foreach_mul_(targets, scale)
    else:
        torch._foreach_copy_(targets, torch._foreach_mul(sources, scale))


def use_foreach_kernels() -> None:
    """Where apex/TE are missing, give megatron-core's grad-norm and scaling the ``torch._foreach_*``
    kernels in place of its per-tensor fallbacks (which read every norm back to the host)."""
    if clip_grads.l2_norm_impl is megatron_utils.local_multi_tensor_l2_norm:
        clip_grads.l2_norm_impl = foreach_l2_norm
    for module in (clip_grads, megatron_optimizer):
        if getattr(module, "multi_tensor_scale_impl", None) is megatron_utils.local_multi_tensor_scale:
            module.multi_tensor_scale_impl = foreach_scale


def build_optimizer(optim: Any, parallel: Any, model: list, dtype: torch.dtype) -> MegatronOptimizer:
    """AdamW with decoupled weight decay (biases and norms excluded, as megatron-core does)."""
    use_foreach_kernels()
    config = OptimizerConfig(
        optimizer="adam",
        lr=optim.lr,
        min_lr=optim.min_lr,
        weight_decay=optim.weight_decay,
        adam_beta1=optim.adam_beta1,
        adam_beta2=optim.adam_beta2,
        adam_eps=optim.adam_eps,
        clip_grad=optim.clip_grad,
        bf16=dtype == torch.bfloat16,
        params_dtype=dtype,
        use_distributed_optimizer=parallel.use_distributed_optimizer,
        overlap_param_gather_with_optimizer_step=False,
    )
    return get_megatron_optimizer(config, model)


def build_scheduler(
    optim: Any, train_steps: int, optimizer: MegatronOptimizer, override: bool = False
) -> OptimizerParamScheduler:
    """Warmup then cosine / linear / constant / WSD (warmup-stable-decay); stepped once per iteration.
    On loading a checkpoint the saved schedule is kept, or with ``override`` this one replaces it (the
    step count is always the checkpoint's); qwenpt.training.resume decides which, before loading."""
    wsd_steps = int(round(optim.wsd_decay_fraction * train_steps)) if optim.schedule == "wsd" else None
    return OptimizerParamScheduler(
        optimizer,
        init_lr=0.0,
        max_lr=optim.lr,
        min_lr=optim.min_lr,
        lr_warmup_steps=optim.warmup_steps,
        lr_decay_steps=train_steps,
        lr_decay_style=_DECAY_STYLES[optim.schedule],
        start_wd=optim.weight_decay,
        end_wd=optim.weight_decay,
        wd_incr_steps=train_steps,
        wd_incr_style="constant",
        wsd_decay_steps=wsd_steps,
        lr_wsd_decay_style=optim.wsd_decay_style if wsd_steps else None,
        override_opt_param_scheduler=override,
        use_checkpoint_opt_param_scheduler=not override,
    )


def validate_schedule(o: OptimConfig, steps: int) -> None:
    """optim's schedule against the run's length, in the user's terms."""
    check(0 <= o.min_lr <= o.lr, f"optim.min_lr {o.min_lr} must be between 0 and optim.lr {o.lr}")
    check(
        0 <= o.warmup_steps < steps,
        f"optim.warmup_steps {o.warmup_steps} must be at least 0 and less than train.steps {steps} "
        "(the schedule warms up, then decays over the remaining steps); lower optim.warmup_steps or raise train.steps",
    )
    if o.schedule == "wsd":
        check(0 < o.wsd_decay_fraction <= 1, f"optim.wsd_decay_fraction {o.wsd_decay_fraction} must be in (0, 1]")
        decay = int(round(o.wsd_decay_fraction * steps))
        check(
            o.warmup_steps + decay <= steps,
            f"optim.warmup_steps {o.warmup_steps} + the WSD decay ({decay} steps = optim.wsd_decay_fraction "
            f"{o.wsd_decay_fraction} x train.steps {steps}) exceed train.steps {steps}",
        )
