"""Checkpoints with megatron-core ``dist_checkpointing``: save, atomic publish, auto-resume.

Layout under the checkpoint directory::

    step_00000100/      a complete checkpoint (dist_checkpointing format + run_config.yaml)
    latest              text file naming the newest complete checkpoint
    .tmp_step_00000200/ a save in progress (never read; removed by the next save)

A checkpoint is written into ``.tmp_step_*`` and renamed to ``step_*`` only after every rank has
finished, then ``latest`` is replaced atomically, so a crash mid-save leaves the previous
checkpoint as the one resumed from. Each holds the model, optimizer, LR scheduler, the data
position (consumed samples) and every rank's RNG states, and ``qwenpt_manifest.json`` (written
last, before the rename): every file's size (and SHA-256 with ``checksums``), which
:func:`find_resumable` checks so that a damaged checkpoint is reported and skipped, never loaded.
With ``async_save`` the files are written by megatron-core's background writer while training
goes on, and published (manifest, rename, ``latest``) once every rank's writer is done.
"""

from __future__ import annotations

import errno
import hashlib
import inspect
import json
import logging
import os
import random
import shutil
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.distributed as dist
import yaml
from megatron.core import dist_checkpointing, parallel_state, tensor_parallel
from megatron.core.dist_checkpointing.mapping import ShardedObject
from megatron.core.dist_checkpointing.strategies.async_utils import AsyncCallsQueue
from megatron.core.transformer.utils import ensure_metadata_has_dp_cp_group
from torch.distributed.checkpoint.api import CheckpointException

from qwenpt import errors
from qwenpt.safe_load import verify_checkpoint
from qwenpt.config import CheckpointConfig

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
        # the data-parallel group named (megatron-core's default when none is given): the MTP stage's copy of the
        # embedding (pipeline parallel, model.mtp_num_layers) reads it from the metadata and has no default
        metadata = ensure_metadata_has_dp_cp_group(None)
        state[f"model{i}"] = _unwrap(chunk).sharded_state_dict(metadata=metadata)
    if optimizer is not None:
        model_sd = {k: v for k, v in state.items() if k.startswith("model")}
        # only the distributed optimizer reads this: how its DP-sharded state is laid out on disk
        metadata = {"distrib_optim_sharding_type": optim_sharding}
        state["optimizer"] = optimizer.sharded_state_dict(model_sd, is_loading=is_loading, metadata=metadata)
    if with_rng:
        state["rng_state"] = _rng_state()
    return state


MANIFEST = "qwenpt_manifest.json"
PROTECTED = "protected.json"  # checkpoints keep_last never deletes (the last good one before trouble)


def _write_manifest(directory: Path, checksums: bool) -> None:
    files = {}
    for f in sorted(directory.rglob("*")):
        if f.is_file() and f.name != MANIFEST:
            entry: dict[str, Any] = {"size": f.stat().st_size}
            if checksums:
                with open(f, "rb") as fh:
                    entry["sha256"] = hashlib.file_digest(fh, "sha256").hexdigest()
            files[str(f.relative_to(directory))] = entry
    tmp = directory / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps({"files": files}, indent=1))
    os.replace(tmp, directory / MANIFEST)


def protected(root: Path) -> dict[str, str]:
    """Checkpoint name -> why it is kept (never rotated away by keep_last)."""
    path = Path(root) / PROTECTED
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def protect(root: str | Path, name: str, reason: str) -> None:
    """Keep checkpoint ``name`` whatever ``keep_last`` says (rank 0 calls this)."""
    root = Path(root)
    kept = protected(root)
    if name not in kept:
        kept[name] = reason
        tmp = root / f".{PROTECTED}.tmp"
        tmp.write_text(json.dumps(kept, indent=1))
        os.replace(tmp, root / PROTECTED)


class Saver:
    """Writes checkpoints (synchronously, or in the background with ``async_save``) and publishes
    each atomically. ``report(step, path, stall_s, total_s)`` is called when one is published:
    ``stall_s`` is the time training was blocked by it, ``total_s`` from start to publish."""

    def __init__(self, async_save: bool, checksums: bool, report: Callable[[int, Path, float, float], None]) -> None:
        self.checksums, self.report = checksums, report
        self.queue = AsyncCallsQueue() if async_save else None
        self.pending: Optional[dict] = None  # the async save not yet published

    def save(
        self,
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
        """Write a checkpoint for ``step``; returns the directory it is (or will be) published as."""
        self.wait()  # one save in flight at a time: the previous one is published first
        start = time.perf_counter()
        optim_sharding = str(optim_sharding)  # plain data on disk: the config's StrEnum would not load as weights
        root = Path(root)
        tmp, final = root / f".tmp_{_PREFIX}{step:08d}", root / f"{_PREFIX}{step:08d}"
        if _rank0():
            root.mkdir(parents=True, exist_ok=True)
            for stale in root.glob(f".tmp_{_PREFIX}*"):
                shutil.rmtree(stale, ignore_errors=True)
            _check_space(root)
            tmp.mkdir()
        _barrier()
        state = _sharded_state_dict(model, optimizer, with_rng=True, is_loading=False, optim_sharding=optim_sharding)
        state["scheduler"] = scheduler.state_dict()
        state["progress"] = dict(progress, step=step, layout=_layout(), optim_sharding=optim_sharding)
        publish = partial(self._publish, root, tmp, final, run_config, keep_last)
        if self.queue is None:
            try:
                dist_checkpointing.save(state, str(tmp))
            except (OSError, RuntimeError, CheckpointException) as err:  # the last: a BaseException
                full = _disk_full(root, err)
                if full is None:
                    raise
                shutil.rmtree(tmp, ignore_errors=True)  # the partial save, which holds the space
                raise OSError(errno.ENOSPC, full) from err
            publish()
            elapsed = time.perf_counter() - start
            self.report(step, final, elapsed, elapsed)
        else:
            # megatron-core 0.17+ defaults async saves to NVIDIA's resiliency extension (nvrx, not a
            # dependency); its own writer, "mcore", is what 0.16 always uses
            nvrx_default = "async_strategy" in inspect.signature(dist_checkpointing.save).parameters
            request = dist_checkpointing.save(state, str(tmp), async_sharded_save=True,
                                              **({"async_strategy": "mcore"} if nvrx_default else {}))
            request.finalize_fns.append(publish)
            self.queue.schedule_async_request(request)
            self.pending = {"step": step, "path": final, "start": start, "stall": time.perf_counter() - start}
        return final

    def _publish(self, root: Path, tmp: Path, final: Path, run_config: Optional[str], keep_last: int) -> None:
        _barrier()
        if _rank0():
            if run_config is not None:
                (tmp / "run_config.yaml").write_text(run_config)
            _write_manifest(tmp, self.checksums)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            _write_latest(root, final.name)
            if keep_last > 0:  # the newest keep_last up to this one; never this one, nor any of a later step
                kept, step = protected(root), _step_of(final)
                older = [p for p in complete_checkpoints(root) if p.name not in kept and _step_of(p) < step]
                for old in older[:max(len(older) - (keep_last - 1), 0)]:
                    shutil.rmtree(old, ignore_errors=True)
        _barrier()

    def poll(self, blocking: bool = False) -> None:
        """Publish the background save if every rank's writer is done (one small all-reduce, made only
        while a save is in flight); ``blocking``: wait for it."""
        if self.pending is None:
            return
        start = time.perf_counter()
        if self.queue.maybe_finalize_async_calls(blocking=blocking):
            p, self.pending = self.pending, None
            p["stall"] += time.perf_counter() - start
            self.report(p["step"], p["path"], p["stall"], time.perf_counter() - p["start"])
        else:
            self.pending["stall"] += time.perf_counter() - start

    def wait(self) -> None:
        self.poll(blocking=True)

    def close(self, abort: bool = False) -> None:
        """Publish what is in flight (``abort``: leave it unpublished, as after an error)."""
        if self.queue is not None:
            if not abort:
                self.wait()
            self.queue.close(abort=abort)


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _check_space(root: Path) -> None:
    """Refuse a save that cannot fit: the last checkpoint's size against the file system's free space."""
    done = complete_checkpoints(root)
    need, free = (_size(done[-1]) if done else 0), shutil.disk_usage(root).free
    if need > free:
        raise OSError(errno.ENOSPC, f"no space left for a checkpoint in {root}: {free / 2**20:,.1f} MiB free, and the "
                                    f"last one ({done[-1].name}) takes {need / 2**20:,.1f} MiB. Free space there (or lower "
                                    "checkpoint.keep_last) and rerun: the run resumes from its last checkpoint")


def _disk_full(root: Path, err: BaseException) -> Optional[str]:
    """A message when the failed save ``err`` ran out of space (ENOSPC anywhere in its causes, or a file system
    left (nearly) full: torch's writer reports a short write as 'unexpected pos'), else None."""
    cause: Optional[BaseException] = err
    enospc = False
    while cause is not None:
        enospc |= isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT)
        cause = cause.__cause__ or cause.__context__
    usage = shutil.disk_usage(root)
    if not enospc and usage.free > max(64 * 2**20, usage.total // 100):
        return None
    return (f"no space left on the file system of {root} while saving a checkpoint ({usage.free / 2**20:,.1f} MiB free of "
            f"{usage.total / 2**20:,.1f} MiB; the writer said: {_last_line(err)}). Free space there (or lower "
            "checkpoint.keep_last) and rerun: the run resumes from its last checkpoint")


def _last_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]  # torch's carries each rank's traceback
    return lines[-1][:200] if lines else type(err).__name__


def _write_latest(root: Path, name: str) -> None:
    tmp = root / ".latest.tmp"
    tmp.write_text(name + "\n")
    os.replace(tmp, root / "latest")


def _step_of(path: Path) -> int:
    return int(path.name[len(_PREFIX):])


def complete_checkpoints(root: str | Path) -> list[Path]:
    """Published checkpoints, oldest first (``.tmp_*`` saves in progress are never listed)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.glob(f"{_PREFIX}*") if p.is_dir() and (p / "metadata.json").is_file()]
    return sorted(found, key=_step_of)


def _read_latest(root: Path) -> tuple[Optional[Path], Optional[str]]:
    """The checkpoint ``latest`` names, or None and why it cannot be used."""
    pointer = root / "latest"
    if not pointer.is_file():
        return None, None
    try:
        name = pointer.read_bytes().decode("utf-8").strip()
    except (OSError, UnicodeDecodeError) as err:
        return None, f"{pointer} is unreadable ({type(err).__name__}); ignoring it"
    named = root / name
    if not name or "/" in name or not name.startswith(_PREFIX) or not (named / "metadata.json").is_file():
        return None, f"{pointer} names {name[:80]!r}, which is not a complete checkpoint here; ignoring it"
    return named, None


def check(path: str | Path) -> Optional[str]:
    """What is wrong with the checkpoint at ``path`` (files missing, truncated, altered since the save,
    metadata unreadable), or None when it is intact."""
    path = Path(path)
    manifest = path / MANIFEST
    if not manifest.is_file():  # written before manifests existed: check what dist_checkpointing needs
        missing = [n for n in ("metadata.json", "common.pt") if not (path / n).is_file()]
        return f"{', '.join(missing)} missing" if missing else None
    try:
        files = json.loads(manifest.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"{MANIFEST} is unreadable ({err})"
    for name, entry in files.items():
        f = path / name
        if not f.is_file():
            return f"{name} is missing"
        size = f.stat().st_size
        if size != entry["size"]:
            return f"{name} is {size} bytes, {entry['size']} when saved (truncated or overwritten)"
        if "sha256" in entry:
            with open(f, "rb") as fh:
                if hashlib.file_digest(fh, "sha256").hexdigest() != entry["sha256"]:
                    return f"{name} has changed since it was saved (SHA-256 differs)"
    try:
        json.loads((path / "metadata.json").read_text())
    except ValueError as err:
        return f"metadata.json is unreadable ({err})"
    return None


def find_resumable(root: str | Path) -> tuple[Optional[Path], list[str]]:
    """The checkpoint to resume from: what ``latest`` names if intact, else the newest intact one.
    Also returns a message for each damaged checkpoint passed over (and an unreadable ``latest``)."""
    root = Path(root)
    named, problem = _read_latest(root)
    problems = [problem] if problem else []
    published = [p for p in root.glob(f"{_PREFIX}*") if p.is_dir() and p.name[len(_PREFIX):].isdigit()]
    published.sort(key=_step_of, reverse=True)
    for candidate in ([named] if named is not None else []) + [p for p in published if p != named]:
        damage = check(candidate)
        if damage is None:
            return candidate, problems
        problems.append(f"checkpoint {candidate} is damaged: {damage}")
    return None, problems


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
    """A checkpoint directory from a path to one, or to a checkpoints root (its newest intact one;
    damaged ones are passed over with a warning), verified to load without running code."""
    path = Path(path).expanduser()
    if (path / "metadata.json").is_file():
        verify_checkpoint(path)
        return path
    found, problems = find_resumable(path)
    for problem in problems:
        log.warning(problem)
    if found is None:
        raise FileNotFoundError(
            f"{path} is neither a checkpoint (no metadata.json) nor a directory of intact checkpoints"
            + (f" ({'; '.join(problems)})" if problems else "")
        )
    verify_checkpoint(found)
    return found


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


def progress(path: str | Path) -> dict:
    """A checkpoint's progress record (step, consumed samples, sample horizon...) without loading its tensors."""
    return dist_checkpointing.load_common_state_dict(str(path))["progress"]


def sample_horizon(path: str | Path) -> Optional[int]:
    """The size of the training index the run of checkpoint ``path`` read (:func:`qwenpt.data.sample_horizon`):
    recorded with its progress; for checkpoints saved before that, ``train.steps x train.global_batch_size``
    of its ``run_config.yaml``, which is what the index was built for then (None if unknown)."""
    recorded = progress(path).get("sample_horizon")
    if recorded is not None:
        return int(recorded)
    config = Path(path) / "run_config.yaml"
    if not config.is_file():
        return None
    train = (yaml.safe_load(config.read_text()) or {}).get("train", {})
    if "steps" not in train or "global_batch_size" not in train:
        return None
    return int(train["steps"]) * int(train["global_batch_size"])


@torch.no_grad()  # state is copied in place into parameters (and, for fp32, views of them)
def load(path: str | Path, model: list, optimizer: Any, scheduler: Any) -> dict:
    """Restore model, optimizer, scheduler and RNG from ``path``; returns its progress record."""
    path = Path(path)
    verify_checkpoint(path)
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


def validate_config(c: CheckpointConfig, world_size: int, check_files: bool = True) -> None:
    """The checkpoint section in the user's terms (``check_files=False``: not the paths; the HF source of
    ``init_from_hf`` is checked against the model by :func:`qwenpt.convert.hf_io.check_init_from_hf`)."""
    errors.check(c.save_interval >= 0, f"checkpoint.save_interval must be a number of steps, or 0 for no periodic saves "
                                f"(the last step is saved either way), got {c.save_interval}")
    errors.check(c.keep_last >= 0, f"checkpoint.keep_last must be a number of checkpoints, or 0 to keep all, got {c.keep_last}")
    if c.create_seed:
        errors.check(
            world_size == 1,
            f"checkpoint.create_seed initialises the whole model in one process; run it without torchrun "
            f"(world size is {world_size})",
        )
    if c.init_from_hf is not None:
        errors.check(c.init_from is None, "set checkpoint.init_from or checkpoint.init_from_hf, not both")
    # checkpoint.init_optimizer / previous_stage (a context-extension stage, qwenpt/training/extend.py)
    if c.init_optimizer:
        errors.check(c.init_from is not None, "checkpoint.init_optimizer=true takes the optimizer state of checkpoint.init_from; "
                                       "set checkpoint.init_from (init_from_hf checkpoints hold no optimizer state)")
    if c.previous_stage is not None:
        errors.check(c.init_from is not None, "checkpoint.previous_stage is the run that writes checkpoint.init_from; set "
                                       "checkpoint.init_from to its checkpoints directory")
    if c.init_from is not None and c.previous_stage is None and check_files:
        src = Path(c.init_from).expanduser()
        errors.check(
            (src / "metadata.json").is_file() or (src / "latest").is_file() or any(src.glob("step_*/metadata.json")),
            f"checkpoint.init_from: {src} is neither a checkpoint (no metadata.json) nor a directory of checkpoints",
        )
