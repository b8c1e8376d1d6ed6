"""What a prepare run leaves in its output folder, and how a rerun recognises what is already done.

The tree is drawn in prepare.py's docstring. Here: the name of each input file's shard, the
fingerprint of a run's inputs and settings, a shard's done marker (``stats.json``, written last)
and the loading of a finished shard, the manifest of a finished run, the merge of the shards into
the final datasets + manifest, the folder's lock and atomic writes. prepare.py (one machine) and
tasks.py (Slurm array tasks, then merge) both write and read the folder through these, so the two
ways give byte-identical outputs and each resumes the other's work.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Iterator

import numpy as np

from data_pipeline.indexed import is_complete, merge_indexed_datasets
from data_pipeline.manifest import Manifest, group_filename, write_manifest
from data_pipeline.readers import source_name
from data_pipeline.run_config import PrepareConfig
from data_pipeline.tokenizer import TextTokenizer

# Prepare's logger: these messages are a prepare (or merge) run's, and name it as they did when
# they lived in prepare.py (log lines and filters by logger name unchanged).
log = logging.getLogger("data_pipeline.prepare")


class ShardResult:
    """What one input file produced: per (lang, source) stats, rejects, groups, dedup hashes."""

    def __init__(self, stats: dict, rejects_log: list, hashes: np.ndarray) -> None:
        self.stats, self.rejects_log, self.hashes = stats, rejects_log, hashes

    @property
    def groups(self) -> list[str]:
        return sorted(self.stats["groups"])


def shard_name(path: Path) -> str:
    """OUT/shards/<this>: the input file's name and a hash of its full path, so two files of the
    same name in different folders get two shards."""
    return f"{group_filename(source_name(path))}-{hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:8]}"


def file_identity(path: Path) -> dict:
    """What says an input file is unchanged since its shard was written: path, size, mtime."""
    st = path.stat()
    return {"input": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def run_fingerprint(files: list[Path], settings: str) -> str:
    """Identifies a run's inputs (path, size, mtime of each, in order) and settings."""
    items = [[shard_name(f), file_identity(f)] for f in files]
    return hashlib.sha256(json.dumps([items, settings]).encode()).hexdigest()[:16]


def finished_manifest(out: Path, fingerprint: str) -> Manifest | None:
    """The manifest of a finished run with these exact inputs and settings, if its datasets are all there."""
    path = out / "manifest.parquet"
    if not path.is_file():
        return None
    manifest = Manifest.read(path)
    if manifest.run_fingerprint != fingerprint or not all(is_complete(out / p) for p in manifest.prefixes()):
        return None
    return manifest


def finished_shard(shard_dir: Path, path: Path, settings: str) -> ShardResult | None:
    """The finished shard for ``path``, or None when it must be (re)done."""
    marker = shard_dir / "stats.json"
    if not marker.is_file():
        return None
    stats = json.loads(marker.read_text())
    if stats.get("settings") != settings or stats.get("file") != file_identity(path):
        log.info("shard %s is stale (input or settings changed); redoing it", shard_dir.name)
        return None
    if not all(is_complete(shard_dir / group_filename(g)) for g in stats["groups"]):
        return None
    rejects_log = [json.loads(line) for line in (shard_dir / "rejects.jsonl").read_text().splitlines()]
    hashes = np.load(shard_dir / "hashes.npy") if (shard_dir / "hashes.npy").is_file() else np.zeros(0, np.uint64)
    return ShardResult(stats, rejects_log, hashes)


def write_atomic(path: Path, text: str) -> None:
    """Write ``path`` whole or not at all (a temporary file, then renamed): an interrupted run never
    leaves a half-written marker, log or plan that a rerun would trust."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def merge_and_write(
    out: Path, results: list[tuple[str, ShardResult]], dtype: type[np.number], tokenizer: TextTokenizer,
    settings: str, fingerprint: str, config: PrepareConfig,
) -> Manifest:
    """Concatenate each group's shards into OUT/<group>, remove the datasets of the previous manifest that
    this run has none of, then write rejects.jsonl and the manifest (last). A run of 0 documents fails
    (ValueError) after writing rejects.jsonl, without a manifest."""
    parts: dict[str, list[Path]] = defaultdict(list)
    for rel, result in results:
        for group in result.groups:
            parts[group].append(out / rel / group_filename(group))
    write_atomic(
        out / "rejects.jsonl",
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for _, result in results for r in result.rejects_log),
    )
    if not parts:
        drops: dict[str, int] = defaultdict(int)
        for _, result in results:
            for _, _, reason, n in result.stats["rejects"]:
                drops[reason] += n
        why = ", ".join(f"{k} {v:,}" for k, v in sorted(drops.items())) or "no records were read"
        raise ValueError(
            f"the {len(results)} input file(s) gave 0 documents (dropped: {why}; see {out / 'rejects.jsonl'}), so "
            f"there is no dataset to write and {out / 'manifest.parquet'} was not written; check the inputs and "
            "--text-field, --format, --languages and the cleaning options"
        )
    for group, shard_prefixes in sorted(parts.items()):
        merge_indexed_datasets(out / group_filename(group), shard_prefixes, dtype)
    _remove_stale_datasets(out, {group_filename(g) for g in parts})
    manifest = Manifest.from_shards(
        [(rel, r.stats) for rel, r in results],
        group_by=config.group_by,
        tokenizer=tokenizer.name or str(tokenizer.path.resolve()),
        vocab_size=tokenizer.vocab_size,
        dtype=np.dtype(dtype).name,
        settings=settings,
        run_fingerprint=fingerprint,
    )
    write_manifest(manifest, out / "manifest.parquet")
    if not config.keep_shards:
        shutil.rmtree(out / "shards")
    return manifest


def _remove_stale_datasets(out: Path, keep: set[str]) -> None:
    """Remove the datasets that this folder's previous manifest (qwenpt's own record of what it wrote) lists
    and this run has no documents for, e.g. the other languages after a rerun with ``--languages en``: left
    there, they look like part of the corpus. Nothing the previous manifest does not name is touched."""
    path = out / "manifest.parquet"
    if not path.is_file():
        return
    try:
        previous = Manifest.read(path).prefixes()
    except (OSError, ValueError, KeyError) as err:  # unreadable (pyarrow's errors are OSError/ValueError)
        log.warning("%s is unreadable (%s); datasets of an earlier run, if any, are left in place", path, err)
        return
    for prefix in previous:
        if prefix in keep or prefix != group_filename(prefix):  # only plain names, as this module writes them
            continue
        removed = [f"{prefix}{ext}" for ext in (".idx", ".bin") if (out / f"{prefix}{ext}").is_file()]
        for name in removed:  # the index first: a reader that finds it finds a whole dataset
            (out / name).unlink()
        if removed:
            log.info("removed %s from %s: the previous run's manifest listed it, this run has no documents for it",
                     " and ".join(removed), out)


# --- the folder's lock: one writing run at a time ------------------------------------------------

class OutputLocked(RuntimeError):
    """Another run holds the output folder."""


def lock_name(config: PrepareConfig) -> str:
    """The lock file a run holds: ``.lock``, or ``.lock-task-I`` for task I of several (they write
    different shards; merge takes ``.lock``)."""
    return f".lock-task-{config.tasks.task_index}" if config.tasks.num_tasks > 1 else ".lock"


@contextlib.contextmanager
def output_lock(out: Path, name: str = ".lock", wait: bool = False) -> Iterator[None]:
    """Hold ``out/<name>`` for this run; a second run on the same folder fails at once, naming the holder
    (``wait``: waits for it instead, saying so)."""
    path = out / name
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:  # a POSIX record lock: unlike flock's, not inherited by forked worker processes
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            if not wait:
                raise OutputLocked(
                    f"output folder {out} is in use by another prepare run (PID {holder}); wait for it to finish, "
                    "or pass another --output"
                ) from None
            log.warning("output folder %s is being prepared by another process (PID %s); waiting for it", out, holder)
            fcntl.lockf(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
        os.ftruncate(fd, 0)  # a finished run leaves an empty lock file: reruns end byte-identical
    finally:
        os.close(fd)  # releases the lock
