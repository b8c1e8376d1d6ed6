"""Process groups and megatron-core parallel state, on GPU (NCCL) or CPU (gloo).

Works the same under ``torchrun`` (reads RANK / WORLD_SIZE / LOCAL_RANK) and as one plain
process (a world of one). On a machine without CUDA the CPU layer (:mod:`qwenpt.cpu_compat`)
is installed first.
"""

from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed
from megatron.core.transformer.moe.moe_utils import get_moe_layer_wise_logging_tracker
from megatron.core.transformer.multi_token_prediction import MTPLossLoggingHelper

try:  # megatron-core 0.19: a tracker object in moe_logging (moe_utils' dict is then a fresh view of it)
    from megatron.core.transformer.moe.moe_logging import destroy_moe_metrics_tracker
except ImportError:  # 0.16: moe_utils' module-level dict
    destroy_moe_metrics_tracker = None

from qwenpt import cpu_compat
from qwenpt.errors import check
from qwenpt.config import ParallelConfig


@dataclass(frozen=True)
class Runtime:
    rank: int
    world_size: int
    device: torch.device
    cpu: bool  # running on the CPU layer

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def world_size_from_env() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def describe_layout(parallel: ParallelConfig, dp: int, moe: bool) -> str:
    """'tp 2 (sp) x pp 2 (x2 virtual) x cp 1 x dp 1, experts ep 2 x etp 1, alltoall', as the logs say it."""
    p = parallel
    text = (
        f"tp {p.tensor_model_parallel_size}{' (sp)' if p.sequence_parallel else ''} x "
        f"pp {p.pipeline_model_parallel_size}"
        f"{f' (x{p.virtual_pipeline_model_parallel_size} virtual)' if p.virtual_pipeline_model_parallel_size else ''}"
        f" x cp {p.context_parallel_size} x dp {dp}"
    )
    if moe:
        etp = p.expert_tensor_parallel_size or p.tensor_model_parallel_size
        text += f", experts ep {p.expert_model_parallel_size} x etp {etp}, {p.moe_token_dispatcher_type}"
    if p.use_distributed_optimizer:
        text += ", distributed optimizer"
    if p.recompute_granularity:
        text += f", {p.recompute_granularity} recompute"
    return text


def data_parallel_size(parallel: ParallelConfig, world_size: int) -> int:
    """Data-parallel replicas: the world over TP x PP x CP (which must divide it)."""
    model_parallel = (
        parallel.tensor_model_parallel_size * parallel.pipeline_model_parallel_size * parallel.context_parallel_size
    )
    check(
        world_size % model_parallel == 0,
        f"world size {world_size} is not divisible by tensor x pipeline x context parallel sizes "
        f"({parallel.tensor_model_parallel_size} x {parallel.pipeline_model_parallel_size} x "
        f"{parallel.context_parallel_size} = {model_parallel})",
    )
    return world_size // model_parallel


def check_expert_layout(parallel: ParallelConfig, world_size: int) -> None:
    """The expert layout (ETP x EP x PP) tiles the world."""
    etp = parallel.expert_tensor_parallel_size or parallel.tensor_model_parallel_size
    expert_world = etp * parallel.expert_model_parallel_size * parallel.pipeline_model_parallel_size
    check(
        world_size % expert_world == 0,
        f"world size {world_size} is not divisible by expert_tensor_parallel x expert_model_parallel x "
        f"pipeline sizes ({expert_world})",
    )


def init_process_group(timeout_s: float = 1800.0) -> Runtime:
    """Join (or create) the default process group; install the CPU layer when CUDA is absent. Every
    collective of the group (NCCL or gloo) fails after ``timeout_s`` rather than waiting forever."""
    cpu = cpu_compat.install()
    if not dist.is_initialized():
        backend = "gloo" if cpu else "nccl"
        if "RANK" in os.environ:
            if not cpu:
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
                # a timed-out NCCL collective aborts the process (torch's default since 2.2, made explicit)
                os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "3")
            dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
        else:  # a single plain process: a world of one, no rendezvous needed
            if not cpu:
                torch.cuda.set_device(0)
            dist.init_process_group(backend=backend, store=dist.HashStore(), rank=0, world_size=1)
    device = torch.device("cpu") if cpu else torch.device("cuda", torch.cuda.current_device())
    return Runtime(rank=dist.get_rank(), world_size=dist.get_world_size(), device=device, cpu=cpu)


def initialize(parallel: ParallelConfig, seed: int, timeout_s: float = 1800.0) -> Runtime:
    """Process group, megatron-core model-parallel groups, and seeds (same init on every DP rank)."""
    rt = init_process_group(timeout_s)
    init_parallel_state(parallel, timeout_s=timeout_s)
    clear_loss_trackers()
    seed_everything(seed)
    return rt


def clear_loss_trackers() -> None:
    """Empty megatron-core's process-wide per-layer loss trackers (MoE auxiliary losses, MTP losses).

    Each is sized by the first model that writes to it; a later run in the same process (the layout
    tests' worker, a notebook) with more layers would index past the end (``IndexError`` in
    ``save_to_aux_losses_tracker``) or log the last run's numbers."""
    if destroy_moe_metrics_tracker is not None:
        destroy_moe_metrics_tracker()
    else:
        get_moe_layer_wise_logging_tracker().clear()
    MTPLossLoggingHelper.tracker.clear()


def init_parallel_state(parallel: ParallelConfig, gloo_groups: bool = True, timeout_s: float = 1800.0) -> None:
    """megatron-core's TP/PP/VPP/CP/EP groups for a layout, on the current default process group
    (``gloo_groups=False``: no gloo side groups, as on torch's fake process group)."""
    if parallel_state.model_parallel_is_initialized():
        release_parallel_state()
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=parallel.tensor_model_parallel_size,
        pipeline_model_parallel_size=parallel.pipeline_model_parallel_size,
        virtual_pipeline_model_parallel_size=parallel.virtual_pipeline_model_parallel_size,
        context_parallel_size=parallel.context_parallel_size,
        expert_model_parallel_size=parallel.expert_model_parallel_size,
        expert_tensor_parallel_size=parallel.expert_tensor_parallel_size or parallel.tensor_model_parallel_size,
        create_gloo_process_groups=gloo_groups,
        distributed_timeout_minutes=max(1, math.ceil(timeout_s / 60)),
    )


def release_parallel_state() -> None:
    """Destroy the process groups megatron-core created, then forget them. ``destroy_model_parallel`` alone
    forgets most of them but keeps them alive, and each gloo group keeps its threads: a process that sets up
    several runs (the layout tests' worker, a test session, a notebook) piled up ~2,900 threads on torch 2.14,
    90 of them busy, and slowed every later step by minutes."""
    # megatron-core's own list of the groups it created (None: the default group, which stays)
    for group in getattr(parallel_state, "_global_process_group_list", None) or ():
        if group is not None:
            dist.destroy_process_group(group)
    parallel_state.destroy_model_parallel()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    model_parallel_cuda_manual_seed(seed, force_reset_rng=True)


def shutdown() -> None:
    if parallel_state.model_parallel_is_initialized():
        release_parallel_state()
    if dist.is_initialized():
        dist.destroy_process_group()
