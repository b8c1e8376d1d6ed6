"""Write a megatron-core dist checkpoint whose tensors are produced on demand, one at a time.

megatron-core's own writer stages every tensor of the state dict in memory before writing. Here
the model exists only on the meta device (shapes, no storage); its sharded state dict gives every
global tensor chunk the checkpoint must hold, and torch.distributed.checkpoint's sequential
FileSystemWriter asks for each chunk as it writes it, through ``SavePlanner.resolve_data``. The
chunk comes from ``produce(param_name)`` (a small cache keeps the last parameters, e.g. both halves
of a fused gate/up projection), so memory holds a few tensors, never the model. The result is
megatron-core's ``torch_dist`` format (common.pt, metadata.json, .metadata and .distcp files),
read by ``dist_checkpointing.load`` at any layout.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed.checkpoint as dcp
from megatron.core import dist_checkpointing
from megatron.core.dist_checkpointing.mapping import ShardedTensor, apply_factories
from megatron.core.dist_checkpointing.strategies.torch import (
    MCoreSavePlanner,
    TorchDistSaveShardedStrategy,
    _replace_state_dict_keys_with_sharded_keys,
    mcore_to_pyt_state_dict,
)
from torch.distributed.checkpoint import FileSystemWriter
from torch.distributed.checkpoint.metadata import StorageMeta
from torch.distributed.checkpoint.planner import WriteItemType


class _Writer(FileSystemWriter):
    """torch's sequential writer, recording no path in ``.metadata``: the folder is renamed once written,
    and a pickled path object is a type qwenpt's checkpoint loader refuses (:mod:`qwenpt.safe_load`)."""

    def storage_meta(self) -> StorageMeta:
        return StorageMeta(save_id=self.save_id)


class _OnDemandSave(TorchDistSaveShardedStrategy):
    """megatron-core's torch_dist format through torch's sequential writer, data resolved lazily."""

    def __init__(self, resolve: Callable[[str, tuple], torch.Tensor]) -> None:
        super().__init__("torch_dist", 1)
        self.resolve = resolve

    def save(self, sharded_state_dict: Any, checkpoint_dir: Path) -> None:
        flat, _, _ = _replace_state_dict_keys_with_sharded_keys(sharded_state_dict, self.keep_only_main_replica)
        resolve = self.resolve

        class Planner(MCoreSavePlanner):
            def resolve_data(self, write_item: Any) -> Any:
                if write_item.type == WriteItemType.BYTE_IO:  # ShardedObjects (layers' extra state)
                    return super().resolve_data(write_item)
                return resolve(write_item.index.fqn, tuple(write_item.index.offset))

        dcp.save(mcore_to_pyt_state_dict(flat, False), no_dist=True,
                 storage_writer=_Writer(str(checkpoint_dir), single_file_per_rank=True, thread_count=1),
                 planner=Planner(can_run_decentralized_global_plan=False))


def save_on_demand(meta_model: torch.nn.Module, out: str | Path, produce: Callable[[str], torch.Tensor],
                   dtype: torch.dtype, run_config: str, cache_size: int = 2) -> Path:
    """Write ``meta_model``'s weights, each parameter made by ``produce(name)`` when it is written,
    as a checkpoint into the empty folder ``out`` (the caller publishes it: :mod:`qwenpt.convert.output`)."""
    sharded = meta_model.sharded_state_dict()
    apply_factories(sharded)
    where: dict[tuple, tuple] = {}  # (checkpoint key, global offset) -> (parameter, storage offset, shape, axes)

    def index(name: str, value: Any) -> None:
        if isinstance(value, ShardedTensor):
            where[(value.key, tuple(value.global_offset))] = (
                name, value.data.storage_offset(), tuple(value.data.shape), value.prepend_axis_num)
        elif isinstance(value, dict):
            for v in value.values():
                index(name, v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                index(name, v)

    for name, value in sharded.items():
        index(name, value)
    cache: OrderedDict[str, torch.Tensor] = OrderedDict()

    def resolve(key: str, offset: tuple) -> torch.Tensor:
        name, start, shape, axes = where[(key, offset)]
        if name not in cache:
            cache[name] = produce(name).to(dtype).contiguous()
            while len(cache) > cache_size:
                cache.popitem(last=False)
        numel = 1
        for s in shape:
            numel *= s
        return cache[name].reshape(-1)[start:start + numel].view((1,) * axes + shape)

    out = Path(out)
    dist_checkpointing.save(sharded, str(out), sharded_strategy=_OnDemandSave(resolve))
    (out / "run_config.yaml").write_text(run_config)
    return out
