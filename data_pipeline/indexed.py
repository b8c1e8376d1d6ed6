"""Write megatron-core indexed datasets (``.bin``/``.idx``) atomically.

The pair is built under temporary names and renamed into place only when complete, ``.bin``
first and ``.idx`` last, so a reader that finds the ``.idx`` always finds a whole dataset and
a crash leaves nothing under the final names.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder


def token_dtype(vocab_size: int) -> type[np.number]:
    """The smallest dtype holding every token id, as Megatron-LM's preprocess_data chooses."""
    return np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.int32


def is_complete(prefix: str | Path) -> bool:
    return Path(f"{prefix}.idx").is_file() and Path(f"{prefix}.bin").is_file()


def write_indexed_dataset(
    prefix: str | Path, documents: Iterable[Sequence[int]], vocab_size: int
) -> tuple[int, int]:
    """Write one document per item to ``prefix.bin/.idx``; return (documents, tokens) written."""
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    tmp = prefix.with_name(f".{prefix.name}.tmp{os.getpid()}")
    builder = IndexedDatasetBuilder(f"{tmp}.bin", dtype=token_dtype(vocab_size))
    n_docs = n_tokens = 0
    try:
        for ids in documents:
            builder.add_document(np.asarray(ids), [len(ids)])
            n_docs += 1
            n_tokens += len(ids)
        builder.finalize(f"{tmp}.idx")
    except BaseException:
        builder.data_file.close()
        for ext in (".bin", ".idx"):
            Path(f"{tmp}{ext}").unlink(missing_ok=True)
        raise
    os.replace(f"{tmp}.bin", f"{prefix}.bin")
    os.replace(f"{tmp}.idx", f"{prefix}.idx")
    return n_docs, n_tokens
