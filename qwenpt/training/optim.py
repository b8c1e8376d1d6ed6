"""megatron-core optimizer (AdamW; optional distributed optimizer) and LR schedule."""

from __future__ import annotations

from typing import Any

import torch
from megatron.core.optimizer import MegatronOptimizer, OptimizerConfig, get_megatron_optimizer
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

_DECAY_STYLES = {"cosine": "cosine", "linear": "linear", "constant": "constant", "wsd": "WSD"}


def build_optimizer(optim: Any, parallel: Any, model: list, dtype: torch.dtype) -> MegatronOptimizer:
    """AdamW with decoupled weight decay (biases and norms excluded, as megatron-core does)."""
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
