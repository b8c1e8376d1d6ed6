"""Write megatron indexed datasets (``.bin``/``.idx``) atomically, without importing megatron-core.

The files are byte for byte what megatron-core's ``IndexedDatasetBuilder`` writes (a test builds
the same documents both ways and compares every byte), so megatron-core and Megatron-LM read them
as their own. Importing megatron-core would cost seconds of start-up (torch, ...) for a format
this small:

    .idx  b"MMIDIDX\\x00\\x00", version <Q 1, dtype code <B, sequence count <Q N,
          document count <Q N+1, lengths int32[N], byte pointers int64[N], document indices int64[N+1]
    .bin  the token ids, one document after another

Memory stays flat: document lengths go to a side file while tokens stream to ``.bin``, and the
index is written from it in chunks. A dataset is built under temporary names and renamed into
place when complete, ``.bin`` first and ``.idx`` last, so a reader that finds the ``.idx`` always
finds a whole dataset and a crash leaves nothing under the final names.
"""

from __future__ import annotations

import os
import shutil
import struct
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

HEADER = b"MMIDIDX\x00\x00"
# megatron.core.datasets.indexed_dataset.DType codes
DTYPE_CODES = {np.uint8: 1, np.int8: 2, np.int16: 3, np.int32: 4, np.int64: 5, np.float64: 6, np.float32: 7, np.uint16: 8}
_CHUNK = 1 << 20  # index entries per write


def token_dtype(vocab_size: int) -> type[np.number]:
    """The smallest dtype holding every token id, as Megatron-LM's preprocess_data chooses."""
    return np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.int32


def is_complete(prefix: str | Path) -> bool:
    return Path(f"{prefix}.idx").is_file() and Path(f"{prefix}.bin").is_file()


_HEAD = len(HEADER) + 8 + 1 + 16  # magic, version, dtype code, sequence count, document-index entries


def read_header(prefix: str | Path) -> tuple[type[np.number], int, int]:
    """(token dtype, sequence count, document-index entries) from ``prefix.idx``'s header."""
    path = f"{prefix}.idx"
    with open(path, "rb") as f:
        head = f.read(_HEAD)
    if len(head) < _HEAD or head[: len(HEADER)] != HEADER:
        raise ValueError(f"{path}: not a megatron indexed dataset index (bad or truncated header)")
    version, code, n, docs = struct.unpack("<QBQQ", head[len(HEADER) :])
    dtype = next((d for d, c in DTYPE_CODES.items() if c == code), None)
    if version != 1 or dtype is None:
        raise ValueError(f"{path}: unsupported index (version {version}, dtype code {code})")
    return dtype, n, docs


def read_index(prefix: str | Path) -> tuple[type[np.number], np.ndarray]:
    """(token dtype, per-document lengths) of a dataset with one sequence per document, as this
    module and Megatron-LM's preprocess_data write them; the lengths are memory-mapped."""
    path = f"{prefix}.idx"
    dtype, n, docs = read_header(prefix)
    if docs != n + 1:
        raise ValueError(f"{path}: unsupported index ({n} sequences, {docs - 1} documents)")
    lengths = np.memmap(path, dtype=np.int32, mode="r", offset=_HEAD, shape=(n,)) if n else np.zeros(0, np.int32)
    return dtype, lengths


def check_sizes(prefix: str | Path) -> int:
    """The sequence count of ``prefix``, after checking that ``.idx`` is as long as its header says and
    ``.bin`` as long as the index says (sum of sequence lengths x token size): a truncated file would
    otherwise pass every check and crash at its first read mid-run, naming no file. ValueError names
    the file and both sizes."""
    dtype, n, docs = read_header(prefix)
    idx, bin_ = Path(f"{prefix}.idx"), Path(f"{prefix}.bin")
    need = _HEAD + n * (4 + 8) + docs * 8  # lengths int32, pointers int64, document index int64
    have = idx.stat().st_size
    if have < need:
        raise ValueError(f"{idx} is {have:,} bytes, but its header describes {n:,} sequences ({need:,} bytes): "
                         "it is truncated")
    lengths = np.memmap(idx, dtype=np.int32, mode="r", offset=_HEAD, shape=(n,)) if n else np.zeros(0, np.int32)
    need = int(lengths.sum(dtype=np.int64)) * np.dtype(dtype).itemsize
    del lengths
    have = bin_.stat().st_size
    if have != need:
        raise ValueError(f"{bin_} is {have:,} bytes, but {idx.name} describes {need:,} bytes of tokens "
                         f"({'truncated' if have < need else 'not the tokens this index describes'})")
    return n


class IndexedWriter:
    """One indexed dataset written under a temporary name; :meth:`commit` renames it into place,
    :meth:`abort` removes it."""

    def __init__(self, prefix: str | Path, dtype: type[np.number]) -> None:
        if dtype not in DTYPE_CODES:
            raise ValueError(f"token dtype {dtype} is not one megatron-core can read")
        self.prefix, self.dtype = Path(prefix), dtype
        self.prefix.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.prefix.with_name(f".{self.prefix.name}.tmp{os.getpid()}")
        self.bin = open(f"{self.tmp}.bin", "wb")
        self.lengths = open(f"{self.tmp}.len", "wb")
        self.documents = self.tokens = 0

    def add(self, ids: Sequence[int] | np.ndarray) -> None:
        """One document."""
        self.add_batch(np.asarray(ids), np.array([len(ids)], dtype=np.int64))

    def add_batch(self, ids: np.ndarray, lengths: np.ndarray) -> None:
        """Documents given as their ids back to back (``ids``) and the length of each."""
        ids = np.asarray(ids)
        same_width = ids.dtype.kind in "iu" and ids.dtype.itemsize == np.dtype(self.dtype).itemsize
        ids = ids.view(self.dtype) if same_width and ids.flags.c_contiguous else ids.astype(self.dtype)  # ids < 2^31
        self.bin.write(memoryview(ids).cast("B"))
        self.lengths.write(np.asarray(lengths, dtype=np.int32).tobytes())
        self.documents += len(lengths)
        self.tokens += int(len(ids))

    def append_dataset(self, prefix: str | Path) -> None:
        """Append a whole existing dataset: its lengths, then its ``.bin`` as one file copy."""
        dtype, lengths = read_index(prefix)
        if dtype != self.dtype:
            raise ValueError(f"{prefix}.idx holds {np.dtype(dtype).name} tokens, not {np.dtype(self.dtype).name}")
        for i in range(0, len(lengths), _CHUNK):
            self.lengths.write(np.asarray(lengths[i : i + _CHUNK]).tobytes())
        self.documents += len(lengths)
        self.tokens += int(lengths.sum(dtype=np.int64))
        del lengths
        with open(f"{prefix}.bin", "rb") as f:
            _append_file(f, self.bin)

    def commit(self) -> Path:
        self.bin.close()
        self.lengths.close()
        self._write_index(f"{self.tmp}.idx")
        os.replace(f"{self.tmp}.bin", f"{self.prefix}.bin")
        os.replace(f"{self.tmp}.idx", f"{self.prefix}.idx")
        os.unlink(f"{self.tmp}.len")
        return self.prefix

    def abort(self) -> None:
        self.bin.close()
        self.lengths.close()
        for ext in (".bin", ".len", ".idx"):
            Path(f"{self.tmp}{ext}").unlink(missing_ok=True)

    def _write_index(self, path: str) -> None:
        n = self.documents
        itemsize = np.dtype(self.dtype).itemsize
        lengths = np.memmap(f"{self.tmp}.len", dtype=np.int32, mode="r", shape=(n,)) if n else np.zeros(0, np.int32)
        with open(path, "wb") as f:
            f.write(HEADER + struct.pack("<QBQQ", 1, DTYPE_CODES[self.dtype], n, n + 1))
            for i in range(0, n, _CHUNK):
                f.write(np.asarray(lengths[i : i + _CHUNK]).tobytes())
            pointer = 0
            for i in range(0, n, _CHUNK):
                sizes = lengths[i : i + _CHUNK].astype(np.int64) * itemsize
                ends = np.cumsum(sizes) + pointer
                f.write((ends - sizes).tobytes())
                pointer = int(ends[-1])
            for i in range(0, n + 1, _CHUNK):
                f.write(np.arange(i, min(i + _CHUNK, n + 1), dtype=np.int64).tobytes())
        del lengths


def write_indexed_dataset(
    prefix: str | Path, documents: Iterable[Sequence[int]], vocab_size: int
) -> tuple[int, int]:
    """Write one document per item to ``prefix.bin/.idx``; return (documents, tokens) written."""
    writer = IndexedWriter(prefix, token_dtype(vocab_size))
    try:
        for ids in documents:
            writer.add(ids)
    except BaseException:
        writer.abort()
        raise
    writer.commit()
    return writer.documents, writer.tokens


def _append_file(src, dst) -> None:
    """Append file ``src`` to ``dst`` in the kernel (``copy_file_range``) where it can, else by chunks."""
    dst.flush()
    try:
        size = os.fstat(src.fileno()).st_size
        while size > 0:
            copied = os.copy_file_range(src.fileno(), dst.fileno(), size)
            if copied == 0:
                break
            size -= copied
        if size == 0:
            return
    except (AttributeError, OSError):  # no copy_file_range here: copy what is left by chunks
        pass
    shutil.copyfileobj(src, dst, 1 << 22)


def merge_indexed_datasets(prefix: str | Path, parts: Sequence[str | Path], dtype: type[np.number]) -> Path:
    """Concatenate ``parts`` (in order) into one dataset at ``prefix``, atomically. A single part
    is hard-linked (its files are never modified in place: a redone shard is written anew)."""
    if len(parts) == 1 and read_index(parts[0])[0] == dtype:
        prefix = Path(prefix)
        tmp = prefix.with_name(f".{prefix.name}.tmp{os.getpid()}")
        try:
            for ext in (".bin", ".idx"):
                Path(f"{tmp}{ext}").unlink(missing_ok=True)
                os.link(f"{parts[0]}{ext}", f"{tmp}{ext}")
            for ext in (".bin", ".idx"):
                os.replace(f"{tmp}{ext}", f"{prefix}{ext}")
                # rename() does nothing when both names are links to one file (a rerun that kept this
                # shard): the temporary name would stay behind, one dataset's size on every rerun
                Path(f"{tmp}{ext}").unlink(missing_ok=True)
            return prefix
        except OSError:  # no hard links on this file system: copy below
            for ext in (".bin", ".idx"):
                Path(f"{tmp}{ext}").unlink(missing_ok=True)
    writer = IndexedWriter(prefix, dtype)
    try:
        for part in parts:
            writer.append_dataset(part)
    except BaseException:
        writer.abort()
        raise
    return writer.commit()
