"""Count the parameters of megatron-core's real model on one rank of a layout, without GPUs.

One process pretends to be rank R of a world of W through torch's fake process-group backend
(collectives are no-ops), lets megatron-core build its parallel groups, and builds this rank's
GPTModel chunks on the meta device (no memory, no initialisation). That is the ground truth the
planner's arithmetic (:mod:`qwenpt.plan.memory`) is checked against.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from qwenpt.plan.memory import StageParams


def real_stage_params(model: Any, parallel: Any, world_size: int, pp_rank: int) -> StageParams:
    """Parameters megatron-core puts on the first GPU of pipeline stage ``pp_rank``."""
    from megatron.core import parallel_state
    from torch.testing._internal.distributed.fake_pg import FakeStore

    from qwenpt import cpu_compat, distributed
    from qwenpt.models.builder import build_model

    cpu_compat.install()
    if dist.is_initialized():
        dist.destroy_process_group()
    # megatron-core's default rank order puts pipeline outermost: stage r holds ranks r*W/pp ...
    rank = pp_rank * (world_size // parallel.pipeline_model_parallel_size)
    dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=world_size)
    try:
        distributed.init_parallel_state(parallel, gloo_groups=False)  # gloo cannot run on the fake store
        with torch.device("meta"):
            chunks = build_model(model, parallel, torch.bfloat16, perform_initialization=False)
        dense = expert = 0
        for chunk in chunks:
            for p in chunk.parameters():
                if getattr(p, "allreduce", True):
                    dense += p.numel()
                else:  # megatron marks expert parameters allreduce=False (expert-data-parallel)
                    expert += p.numel()
        return StageParams(dense=dense, expert=expert)
    finally:
        parallel_state.destroy_model_parallel()
        dist.destroy_process_group()
