"""Which checkpoint a run resumes from, and what a changed config means for it.

The checkpoint: the newest intact one (:func:`qwenpt.checkpoint.find_resumable`); damaged ones are
named with what is wrong and passed over. Rank 0 decides and tells the others, before any model or
dataset exists.

The config: the resumed run's config is compared with the checkpoint's ``run_config.yaml``.

- model architecture differs: refused (a checkpoint resumes only into its own architecture;
  ``checkpoint.init_from`` starts another run from its weights);
- LR schedule differs (``train.steps``, ``optim.lr/min_lr/schedule/warmup_steps/wsd_*/weight_decay``):
  refused, naming ``checkpoint.override_schedule``; with it the schedule is rebuilt from the new
  config at the checkpoint's step (e.g. raising ``train.steps`` re-stretches the decay over the new
  total, so the LR rises again from min_lr);
- data or batch differs (``train.global_batch_size``, ``data.*`` blend, weights, split, sequence
  length, tokenizer, ``train.seed``): refused, since a run is one job on one data stream (e.g.
  ``data=my_mix`` meant as a new run must not continue another's), naming ``train.run_dir=<new>`` (with
  ``checkpoint.init_from`` to keep the weights) and ``checkpoint.override_data``; with it the run goes on
  with a warning: the data position (consumed samples) is kept, but the run no longer sees the data an
  uninterrupted one would;
- parallel layout differs: allowed (dist_checkpointing reshards), logged;
- ``data.document_mask`` (on by default for new runs): a resumed run keeps its checkpoint's setting, off for
  checkpoints saved before the option existed; a different value in the new config is noted and not applied
  (start a new run from the weights, ``checkpoint.init_from``, to change it).
"""

from __future__ import annotations

import logging
from pathlib import Path
from functools import reduce
from typing import Any, Optional

import torch.distributed as dist
import yaml
from qwenpt.config import Config, to_container

from qwenpt import checkpoint
from qwenpt.errors import ConfigError
from qwenpt.safe_load import UnsafeCheckpoint, verify_checkpoint

log = logging.getLogger("qwenpt")

SCHEDULE = ("train.steps", "optim.lr", "optim.min_lr", "optim.schedule", "optim.warmup_steps",
            "optim.wsd_decay_fraction", "optim.wsd_decay_style", "optim.weight_decay")
DATA = ("train.global_batch_size", "train.seed", "data.blend", "data.sample_weights", "data.split",
        "data.seq_length", "data.tokenizer")
# what a resumed run keeps from its checkpoint, and the value for checkpoints saved before the key existed
KEPT = {"data.document_mask": False}


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix.rstrip("."): tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and not key.endswith("weights"):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_changes(saved: dict, now: dict) -> dict[str, list[str]]:
    """Differences that matter, by kind (model, schedule, data, layout): 'field old -> new'."""
    old, new = _flatten(saved), _flatten(now)
    kinds: dict[str, list[str]] = {"model": [], "schedule": [], "data": [], "layout": []}
    for key in sorted(set(old) & set(new)):
        if old[key] == new[key] or key == "model.name":
            continue
        kind = (
            "schedule" if key in SCHEDULE else "data" if key in DATA
            else "model" if key.startswith("model.") else "layout" if key.startswith("parallel.") else None
        )
        if kind is not None:
            kinds[kind].append(f"{key} {old[key]} -> {new[key]}")
    return kinds


def _kept(saved: dict, now: dict, name: str) -> tuple[dict, list[str]]:
    """The :data:`KEPT` settings of the checkpoint, and a note for each the new config would change."""
    old, new = _flatten(saved), _flatten(now)
    kept = {key: old.get(key, default) for key, default in KEPT.items()}
    notes = [f"{key}: {name} was trained with {value}, and the resumed run keeps it (the config says {new.get(key)}; "
             "start a new run with checkpoint.init_from to change it)" for key, value in kept.items() if new.get(key) != value]
    return kept, notes


def _decide(cfg: Config, ckpt_dir: Path) -> tuple[Optional[str], list[str], Optional[str], dict]:
    """(checkpoint path or None, warnings, error, settings kept from the checkpoint): rank 0's decision."""
    path, problems = checkpoint.find_resumable(ckpt_dir)
    if path is None:
        if problems:
            return None, [], (
                f"checkpoint.resume: no intact checkpoint in {ckpt_dir}: " + "; ".join(problems)
                + ". Move the damaged ones out of that folder to resume from an older one, or start a new run in another "
                "folder (train.run_dir=<new>, with checkpoint.init_from=<a checkpoint> to keep its weights)."
            ), {}
        return None, [], None, {}
    try:
        verify_checkpoint(path)
    except UnsafeCheckpoint as err:
        return None, [], f"checkpoint.resume: {err}", {}
    notes = [p + (f"; resuming from {path.name} instead" if "damaged" in p else "") for p in problems]
    saved_file = path / "run_config.yaml"
    if not saved_file.is_file():
        return str(path), notes, None, {}
    saved = yaml.safe_load(saved_file.read_text())
    now = to_container(cfg)
    changes = config_changes(saved, now)
    kept, kept_notes = _kept(saved, now, path.name)
    notes += kept_notes
    if changes["model"]:
        return None, notes, (
            f"checkpoint {path} holds another model ({'; '.join(changes['model'])}); a run resumes only "
            "into its own architecture. Use a new train.run_dir, with checkpoint.init_from to start from its weights."
        ), {}
    if changes["schedule"]:
        diff = "; ".join(changes["schedule"])
        if not cfg.checkpoint.override_schedule:
            return None, notes, (
                f"resuming {path} with a different LR schedule than it was saved with ({diff}). Set "
                "checkpoint.override_schedule=true to rebuild the schedule from the new config at the checkpoint's "
                "step, or restore the saved values (its run_config.yaml)."
            ), {}
        notes.append(f"LR schedule rebuilt from the new config at the checkpoint's step ({diff}; checkpoint.override_schedule=true)")
    if changes["data"]:
        diff = "; ".join(changes["data"])
        if not cfg.checkpoint.override_data:
            return None, notes, (
                f"resuming {path} with other data or batch than it was trained with ({diff}); a run is one job on "
                "one data stream. For a new run pass train.run_dir=<new folder> (with checkpoint.init_from="
                f"{path} to keep its weights); to change this run's data on purpose set "
                "checkpoint.override_data=true; or restore the saved values (its run_config.yaml)."
            ), {}
        notes.append(
            f"data or batch changed since {path.name} ({diff}; checkpoint.override_data=true): the data position is "
            "kept, but this run no longer sees the data an uninterrupted run would"
        )
    if changes["layout"]:
        notes.append(f"parallel layout changed since {path.name} ({'; '.join(changes['layout'])}): resharding on load")
    return str(path), notes, None, kept


def select_checkpoint(cfg: Config, ckpt_dir: Path, is_main: bool) -> Optional[Path]:
    """The checkpoint to resume from (None: start fresh), the same on every rank; raises
    :class:`ConfigError` when resuming cannot be right. Sets in ``cfg`` the settings the resumed run keeps."""
    if not cfg.checkpoint.resume:
        return None
    decision = [_decide(cfg, ckpt_dir) if is_main else None]
    dist.broadcast_object_list(decision, src=0)
    path, notes, error, kept = decision[0]
    if error is not None:
        raise ConfigError(error)
    for key, value in kept.items():
        section, _, name = key.rpartition(".")
        setattr(reduce(getattr, section.split("."), cfg), name, value)
    for note in notes if is_main else ():
        log.warning(note)
    return Path(path) if path is not None else None
