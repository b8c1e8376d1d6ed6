"""Checkpoints with megatron-core ``dist_checkpointing``: save, atomic publish, auto-resume.

Layout under the checkpoint directory::

    step_00000100/      a complete checkpoint (dist_checkpointing format + run_config.yaml)
    latest              text file naming the newest complete checkpoint
    .tmp_step_00000200/ a save in progress (never read; removed by the next save)

A checkpoint is written into ``.tmp_step_*`` and renamed to ``step_*`` only after every rank has
finished, then ``latest`` is replaced atomically, so a crash mid-save leaves the previous
checkpoint as the one resumed from. Each holds the model, optimizer, LR scheduler, the data
position (consumed samples) and every rank's RNG states.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing, parallel_state, tensor_parallel
from megatron.core.dist_checkpointing.mapping import ShardedObject

log = logging.getLogger(__name__)

_PREFIX = "step_"


def _rank0() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _layout() -> list[int]:
    return [
        parallel_state.get_pipeline_model_parallel_world_size(),
        parallel_state.get_tensor_model_parallel_world_size(),
        parallel_state.get_data_parallel_world_size(with_context_parallel=True),
    ]


def _rng_state() -> ShardedObject:
    state = {
        "random": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
        "tracker": tensor_parallel.get_cuda_rng_tracker().get_states(),
    }
    rank = (
        parallel_state.get_pipeline_model_parallel_rank(),
        parallel_state.get_tensor_model_parallel_rank(),
        parallel_state.get_data_parallel_rank(with_context_parallel=True),
    )
    return ShardedObject("rng_state", state, tuple(_layout()), rank, replica_id=0)


def _restore_rng(state: dict) -> None:
    random.setstate(state["random"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    tensor_parallel.get_cuda_rng_tracker().set_states(state["tracker"])


def _unwrap(chunk: torch.nn.Module) -> torch.nn.Module:
    return getattr(chunk, "module", chunk)


def _sharded_state_dict(
    model: list, optimizer: Any, with_rng: bool, is_loading: bool, optim_sharding: str = "dp_reshardable"
) -> dict:
    state: dict[str, Any] = {}
    for i, chunk in enumerate(model):
        state[f"model{i}"] = _unwrap(chunk).sharded_state_dict()
    if optimizer is not None:
        model_sd = {k: v for k, v in state.items() if k.startswith("model")}
        # only the distributed optimizer reads this: how its DP-sharded state is laid out on disk
        metadata = {"distrib_optim_sharding_type": optim_sharding}
        state["optimizer"] = optimizer.sharded_state_dict(model_sd, is_loading=is_loading, metadata=metadata)
    if with_rng:
        state["rng_state"] = _rng_state()
    return state


def save(
    root: str | Path,
    step: int,
    model: list,
    optimizer: Any,
    scheduler: Any,
    progress: dict,
    run_config: Optional[str] = None,
    keep_last: int = 0,
    optim_sharding: str = "dp_reshardable",
) -> Path:
    """Write a checkpoint for ``step`` and publish it atomically; returns its directory."""
    root = Path(root)
    tmp, final = root / f".tmp_{_PREFIX}{step:08d}", root / f"{_PREFIX}{step:08d}"
    if _rank0():
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(f".tmp_{_PREFIX}*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir()
    _barrier()
    state = _sharded_state_dict(model, optimizer, with_rng=True, is_loading=False, optim_sharding=optim_sharding)
    state["scheduler"] = scheduler.state_dict()
    state["progress"] = dict(progress, step=step, layout=_layout(), optim_sharding=optim_sharding)
    dist_checkpointing.save(state, str(tmp))
    _barrier()
    if _rank0():
        if run_config is not None:
            (tmp / "run_config.yaml").write_text(run_config)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _write_latest(root, final.name)
        if keep_last > 0:
            for old in complete_checkpoints(root)[:-keep_last]:
                shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return final


def _write_latest(root: Path, name: str) -> None:
    tmp = root / ".latest.tmp"
    tmp.write_text(name + "\n")
    os.replace(tmp, root / "latest")


def complete_checkpoints(root: str | Path) -> list[Path]:
    """Published checkpoints, oldest first (``.tmp_*`` saves in progress are never listed)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.glob(f"{_PREFIX}*") if p.is_dir() and (p / "metadata.json").is_file()]
    return sorted(found, key=lambda p: int(p.name[len(_PREFIX):]))


def latest_checkpoint(root: str | Path) -> Optional[Path]:
    root = Path(root)
    pointer = root / "latest"
    if pointer.is_file():
        named = root / pointer.read_text().strip()
        if (named / "metadata.json").is_file():
            return named
    found = complete_checkpoints(root)
    return found[-1] if found else None


def _materialize_optimizer_state(optimizer: Any) -> None:
    """torch's AdamW (megatron-core's fallback without apex/TE) creates its state lazily, but the
    distributed optimizer's state dict needs it to exist before loading into it: megatron-core's
    own dummy-state initialiser provides it (a zero-gradient step at the scheduler's initial lr of 0)."""
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        if hasattr(opt, "_init_optimizer_states_with_dummy_values") and not opt.optimizer.state:
            opt._init_optimizer_states_with_dummy_values()


def _restore_adam_steps(optimizer: Any, state: dict) -> None:
    """Put back Adam's step counters after a distributed-optimizer load.

    megatron-core 0.16 with torch's AdamW (its fallback without apex/TE) and the ``dp_reshardable``
    format restores the step from the checkpoint's param groups as one tensor shared by every
    parameter, then copies the per-parameter state over it — including the pre-load ``step``,
    which is not read from disk. Left so, Adam's bias correction after resume is wrong (the
    shared counter also advances once per parameter per step). The param groups hold the step.
    """
    chained = getattr(optimizer, "chained_optimizers", [optimizer])
    states = [state] if len(chained) == 1 else [state[i] for i in range(len(chained))]
    for opt, st in zip(chained, states):
        groups = st.get("optimizer", {}).get("param_groups") if "param_state" in st else None
        if not groups or "step" not in groups[0]:
            continue  # not a distributed optimizer, or one (apex/TE) that keeps its step elsewhere
        for param_state in opt.optimizer.state.values():
            if torch.is_tensor(param_state.get("step")):
                # one tensor per parameter: AdamW increments each in place, and megatron's load
                # hands every parameter the same tensor object
                param_state["step"] = torch.tensor(float(groups[0]["step"]), dtype=param_state["step"].dtype)


def save_model(path: str | Path, model: list, run_config: Optional[str] = None) -> Path:
    """Write the model's weights alone (a seed checkpoint) to ``path``, atomically."""
    path = Path(path)
    tmp = path.with_name(f".tmp_{path.name}")
    if _rank0():
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier()
    state = _sharded_state_dict(model, None, with_rng=False, is_loading=False)
    state["progress"] = {"step": 0, "layout": _layout(), "weights_only": True}
    dist_checkpointing.save(state, str(tmp))
    _barrier()
    if _rank0():
        if run_config is not None:
            (tmp / "run_config.yaml").write_text(run_config)
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
    _barrier()
    return path


def resolve(path: str | Path) -> Path:
    """A checkpoint directory from a path to one, or to a checkpoints root (its latest)."""
    path = Path(path).expanduser()
    if (path / "metadata.json").is_file():
        return path
    latest = latest_checkpoint(path)
    if latest is None:
        raise FileNotFoundError(f"{path} is neither a checkpoint (no metadata.json) nor a directory of checkpoints")
    return latest


@torch.no_grad()
def load_model(path: str | Path, model: list) -> Path:
    """Load only the model weights from any checkpoint (full or seed), whatever layout wrote it:
    dist_checkpointing reshards across TP/PP/VPP/EP. Returns the checkpoint directory read."""
    path = resolve(path)
    state = _sharded_state_dict(model, None, with_rng=False, is_loading=True)
    loaded = dist_checkpointing.load(state, str(path))
    for i, chunk in enumerate(model):
        _unwrap(chunk).load_state_dict(loaded[f"model{i}"], strict=True)
    return path


@torch.no_grad()  # state is copied in place into parameters (and, for fp32, views of them)
def load(path: str | Path, model: list, optimizer: Any, scheduler: Any) -> dict:
    """Restore model, optimizer, scheduler and RNG from ``path``; returns its progress record."""
    path = Path(path)
    common = dist_checkpointing.load_common_state_dict(str(path))
    progress = common["progress"]
    same_layout = list(progress["layout"]) == _layout()
    if not same_layout:
        log.warning(
            "checkpoint %s was saved with (pp, tp, dp) = %s, now %s: RNG states are not restored",
            path, progress["layout"], _layout(),
        )
    _materialize_optimizer_state(optimizer)
    sharding = progress.get("optim_sharding", "dp_reshardable")
    state = _sharded_state_dict(model, optimizer, with_rng=same_layout, is_loading=True, optim_sharding=sharding)
    loaded = dist_checkpointing.load(state, str(path))
    for i, chunk in enumerate(model):
        _unwrap(chunk).load_state_dict(loaded[f"model{i}"], strict=True)
    if optimizer is not None:
        optimizer.load_state_dict(loaded["optimizer"])
        _restore_adam_steps(optimizer, loaded["optimizer"])
    scheduler.load_state_dict(common["scheduler"])
    if same_layout:
        _restore_rng(loaded["rng_state"])
    return progress
