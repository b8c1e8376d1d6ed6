"""Checkpoint files are read without running code from them.

torch's distributed checkpoint reads ``.metadata`` with ``pickle.load`` and each byte object (RNG states,
layer extra states) with ``torch.load(weights_only=False)``; either runs whatever a crafted file asks.
:func:`verify_checkpoint` reads them first with unpicklers that build only the types a megatron-core
checkpoint holds, and refuses the checkpoint, naming the file and the type, before torch or megatron-core
opens it. ``common.pt`` is read by megatron-core with ``torch.load``'s default, ``weights_only`` since torch 2.6
(the floor in pyproject.toml); it is checked the same way here so that the message names the file.
"""

from __future__ import annotations

import dataclasses
import enum
import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qwenpt.errors import ConfigError

_CHECKPOINT_MODULES = (
    "torch.distributed.checkpoint.metadata",
    "torch.distributed.checkpoint.planner",
    "torch.distributed.checkpoint.filesystem",
    "megatron.core.dist_checkpointing.",
)
# torch's writer records a checkpoint_id that may be a path object (imports written before qwenpt_output.json)
_NAMED = {("torch", "Size"), ("torch.serialization", "_get_layout"), ("collections", "OrderedDict"),
          ("pathlib", "PosixPath"), ("pathlib", "PurePosixPath")}
_multiarray = getattr(np, "_core", None) or np.core  # numpy 2 / 1
# what a pickled numpy RNG state (np.random.get_state()) is made of
NUMPY_STATE_GLOBALS = [_multiarray.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


class UnsafeCheckpoint(ConfigError):
    """A checkpoint file would run code, or build a type no checkpoint holds, when loaded."""


class _MetadataUnpickler(pickle.Unpickler):
    """Builds torch dtypes and sizes and the plain data classes (dataclasses, enums) of torch's and
    megatron-core's checkpoint metadata; anything else (a function, a module) is refused."""

    def find_class(self, module: str, name: str) -> Any:
        if "." not in name:
            if (module, name) in _NAMED:
                return super().find_class(module, name)
            if module == "torch" and isinstance(getattr(torch, name, None), (torch.dtype, torch.layout, torch.memory_format)):
                return getattr(torch, name)
            if module in _CHECKPOINT_MODULES[:3] or module.startswith(_CHECKPOINT_MODULES[3]):
                obj = super().find_class(module, name)
                if isinstance(obj, type) and obj.__module__ == module and (
                        dataclasses.is_dataclass(obj) or issubclass(obj, enum.Enum)):
                    return obj
                if isinstance(obj, enum.Enum):  # e.g. the memory-format encoding table's members
                    return obj
                if isinstance(obj, dict) and name.startswith("_") and all(isinstance(k, enum.Enum) for k in obj):
                    return obj
        raise UnsafeCheckpoint(f"{module}.{name}")


def _refuse(path: Path, what: str) -> UnsafeCheckpoint:
    return UnsafeCheckpoint(
        f"{path} would run code or build {what} when loaded, which no checkpoint written by qwenpt or megatron-core "
        "holds; it was not loaded. Use a checkpoint from a source you trust (docs/trust.md)"
    )


def read_metadata(path: Path) -> Any:
    """The torch distributed checkpoint metadata in ``path/.metadata``, built with the restricted unpickler."""
    file = path / ".metadata"
    try:
        with open(file, "rb") as fh:
            return _MetadataUnpickler(fh).load()
    except UnsafeCheckpoint as err:
        raise _refuse(file, f"the object {err}") from None
    except (pickle.UnpicklingError, EOFError, AttributeError, TypeError, ValueError, ImportError) as err:
        raise UnsafeCheckpoint(f"{file} is not a readable checkpoint metadata file ({type(err).__name__}: {err})") from None


def _weights_only(data: bytes | Path, where: str) -> None:
    """Load with torch's weights-only unpickler (plus numpy's RNG-state types); refuse what it rejects."""
    source = io.BytesIO(data) if isinstance(data, bytes) else data
    try:
        with torch.serialization.safe_globals(NUMPY_STATE_GLOBALS):
            torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).split("\n")[0] if "GLOBAL" not in str(err) else str(err).split("GLOBAL ")[-1].split(" ")[0]
        raise _refuse(Path(where), f"a type outside torch's weights-only set ({first})") from None
    except (RuntimeError, EOFError, ValueError) as err:
        raise UnsafeCheckpoint(f"{where} is unreadable ({type(err).__name__}: {str(err)[:200]})") from None


def verify_checkpoint(path: str | Path) -> None:
    """Raise :class:`UnsafeCheckpoint` unless every pickle-bearing file of the checkpoint at ``path``
    (``.metadata``, its byte objects, ``common.pt``) loads without code: call before torch reads it."""
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata

    path = Path(path)
    metadata = read_metadata(path)
    storage = getattr(metadata, "storage_data", None) or {}
    for index, info in storage.items():
        if not isinstance(metadata.state_dict_metadata.get(index.fqn), BytesStorageMetadata):
            continue
        where = f"{path / info.relative_path} (object {index.fqn!r})"
        if getattr(info, "transform_descriptors", None):
            raise UnsafeCheckpoint(f"{where} is stored with transforms {info.transform_descriptors}, which qwenpt does not read")
        with open(path / info.relative_path, "rb") as fh:
            fh.seek(info.offset)
            data = fh.read(info.length)
        _weights_only(data, where)
    if (path / "common.pt").is_file():
        _weights_only(path / "common.pt", str(path / "common.pt"))
