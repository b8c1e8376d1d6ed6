"""Raw text → cleaned, tagged, tokenized → megatron indexed datasets + Parquet manifest.

Work is cut into shards, one per input file, processed in input order:

    OUT/shards/<file>-<hash>/<group>.bin/.idx   one dataset per language (or source) of that file
    OUT/shards/<file>-<hash>/stats.json          written last: the shard is done
    OUT/<group>.bin/.idx                         the shards of a group concatenated, in order
    OUT/manifest.parquet                         per language × source statistics (see manifest.py)
    OUT/rejects.jsonl                            file, line, reason and sample of dropped records

A rerun skips every shard whose ``stats.json`` matches the input file (size, mtime) and the
settings, so an interrupted run resumes where it stopped and ends byte-identical to an uninterrupted
one. With dedup on, hashes of finished shards are reloaded in order; a shard after a redone one is
redone too, so duplicates are judged against the same history either way.

Raw records (decompressed, framed by line) of every file to (re)do flow as one stream of tasks,
each file closed by an end marker, so the next file is read while this one's shard is written. They
are parsed and cleaned by a thread of this process or by worker processes, deduplicated in input
order, and tokenized while the next tasks are cleaned (workers.py; with a byte-level BPE that
applies NFC, NFC and control characters are settled from the ids after tokenizing, bytelevel.py);
each task's ids go out in one write per dataset. Outputs do not depend on the number of workers or
on where cleaning was settled.
One run at a time per output folder: ``OUT/.lock`` (an advisory lock, released when the process
ends, however it ends) names the holder's PID.
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
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
from tqdm import tqdm

from data_pipeline.clean import CleanConfig, Cleaner, hashes_to_array
from data_pipeline.indexed import IndexedWriter, is_complete, merge_indexed_datasets, token_dtype
from data_pipeline.manifest import Manifest, group_filename, write_manifest
from data_pipeline.readers import Reader, Rejects, expand_inputs, source_name
from data_pipeline.tokenizer import TextTokenizer
from data_pipeline import tasks  # issue 17: staged runs (near-dedup, Slurm array tasks), see tasks.py
from data_pipeline.neardedup import NearDedupConfig
from data_pipeline.workers import (
    Cleaned, TaskCleaner, Workers, auto_workers, background, encoded, heavy_cleaning, settle, task_bytes,
    tasks_of_files, tokenize, with_eod,
)

log = logging.getLogger(__name__)
GROUP_BY = ("lang", "source")


@dataclass(frozen=True)
class PrepareConfig:
    inputs: tuple[str, ...]
    output: str
    tokenizer: str
    text_field: str = "text"
    lang_field: str | None = "lang"
    source_field: str | None = "source"
    text_unit: str = "paragraph"  # plain text: paragraph | line | file
    format: str | None = None  # jsonl | parquet | text; None: from each file's extension
    clean: CleanConfig = field(default_factory=CleanConfig)
    group_by: str = "lang"
    batch_docs: int = 256  # records per task (a worker's unit of work, at most workers.TASK_BYTES of input)
    engine: str = "auto"  # tokenizer engine: auto (fastest proven exact) | fastokens | gigatoken | tokenizers
    workers: int = 0  # processes that parse and clean; 0: auto (workers.auto_workers); 1: a thread of this process
    rejects_log_limit: int = 1000  # logged rejects per (file, reason); all are counted
    keep_shards: bool = True  # False: delete OUT/shards once merged (a later change of inputs redoes every file)
    progress: bool = True
    near_dedup: NearDedupConfig | None = None  # MinHash LSH near-duplicate removal (tasks.py, neardedup.py)
    tasks: tasks.TaskSplit = field(default_factory=tasks.TaskSplit)  # this run's part of a Slurm array

    def settings_fingerprint(self, tokenizer: TextTokenizer) -> str:
        """What decides a shard's bytes: the tokenizer file and every reading/cleaning setting."""
        ignored = ("inputs", "output", "tokenizer", "progress", "keep_shards", "batch_docs", "workers", "engine", "tasks")
        settings = {k: v for k, v in asdict(self).items() if k not in ignored}
        settings["tokenizer_sha256"] = tokenizer.sha256
        return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class GroupStats:
    documents: int = 0
    bytes: int = 0
    tokens: int = 0


class ShardResult:
    """What one input file produced: per (lang, source) stats, rejects, groups, dedup hashes."""

    def __init__(self, stats: dict, rejects_log: list, hashes: np.ndarray) -> None:
        self.stats, self.rejects_log, self.hashes = stats, rejects_log, hashes

    @property
    def groups(self) -> list[str]:
        return sorted(self.stats["groups"])


def prepare(config: PrepareConfig, tokenizer: TextTokenizer | None = None, wait: bool = False) -> Manifest:
    """Run the whole pipeline (resuming finished shards) and return the manifest it wrote;
    ``tokenizer``: ``config.tokenizer`` already loaded. An output already up to date with these inputs
    and settings is read without taking the folder's lock (any number of readers at once); ``wait``:
    while another run holds the lock, wait for it (saying so) instead of failing."""
    files = expand_inputs(config.inputs)  # fails now on a missing path
    tokenizer = tokenizer or TextTokenizer(config.tokenizer, engine=config.engine)  # fails now if unreadable
    if config.group_by not in GROUP_BY:
        raise ValueError(f"group_by {config.group_by!r} is not one of {GROUP_BY}")
    if config.workers < 0 or config.batch_docs < 1:
        raise ValueError(f"--workers must be >= 0 (0: chosen by how heavy cleaning is; got {config.workers}) and "
                         f"--batch-docs >= 1 (got {config.batch_docs})")
    out = Path(config.output).expanduser()
    done = _finished_manifest(out, _run_fingerprint(files, config.settings_fingerprint(tokenizer)))
    if done is not None:  # written whole (the manifest is published last): nothing to lock for
        log.info("%s is up to date with its %d inputs and settings; nothing to do", out / "manifest.parquet", len(files))
        return done
    out.mkdir(parents=True, exist_ok=True)
    with output_lock(out, tasks.lock_name(config), wait=wait):
        return _prepare_locked(config, files, tokenizer, out)


class OutputLocked(RuntimeError):
    """Another run holds the output folder."""


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


def _prepare_locked(config: PrepareConfig, files: list[Path], tokenizer: TextTokenizer, out: Path) -> Manifest:
    settings = config.settings_fingerprint(tokenizer)
    reader = Reader(config.text_field, config.lang_field, config.source_field, config.text_unit, config.format)
    cleaner = Cleaner(config.clean)
    dtype = token_dtype(tokenizer.vocab_size)
    fingerprint = _run_fingerprint(files, settings)
    done = _finished_manifest(out, fingerprint)
    if done is not None:
        log.info("%s is up to date with its %d inputs and settings; nothing to do", out / "manifest.parquet", len(files))
        return done

    results: list[tuple[str, ShardResult]] = []
    progress = _Progress(len(files), enabled=config.progress)
    t0 = time.perf_counter()
    staged = tasks.is_staged(config)  # issue 17: each shard depends on its file alone; merge decides the rest
    n_workers, why = (config.workers, "--workers") if config.workers else auto_workers(config.clean, config.lang_field)
    where = f"{n_workers} worker processes" if n_workers > 1 else "a thread of this process"
    log.info("parsing and cleaning in %s (%s); tokenizing here with %s", where, why, tokenizer.engine)
    task_cleaner = TaskCleaner(reader, config.clean, staged, config.near_dedup)
    # NFC and control characters settled from the ids after tokenizing, where that gives the same
    # output (bytelevel.py): light cleaning in this process and a byte-level BPE that applies NFC.
    defer = n_workers == 1 and not staged and config.near_dedup is None and cleaner.deferrable()
    table = tokenizer.byte_table if defer else None
    task_cleaner.cleaner.defer = table is not None
    if table is not None:
        log.info("NFC and control characters: checked from the token ids (the tokenizer applies NFC itself)")
    # Which shards to (re)do, decided now: a finished shard is kept unless dedup redid one before it
    # (its duplicates depend on every earlier shard).
    plan: list[tuple[Path, Path, ShardResult | None]] = []
    redo_rest = False
    for path in tasks.task_files(files, config):
        shard_dir = out / "shards" / shard_name(path)
        result = None if redo_rest else _load_done(shard_dir, path, settings)
        redo_rest = redo_rest or (result is None and config.clean.dedup and not staged)
        plan.append((path, shard_dir, result))
    heavy = bool(heavy_cleaning(config.clean, config.lang_field))
    with Workers(task_cleaner, n_workers) as workers:
        todo = [path for path, _, result in plan if result is None]
        stream = _batches(workers.map(tasks_of_files(reader, todo, config.batch_docs, task_bytes(heavy))), table,
                          cleaner, tokenizer, config.batch_docs)
        try:
            for i, (path, shard_dir, result) in enumerate(plan):
                progress.file(i, path, resumed=result is not None)
                if result is None:
                    if staged:
                        cleaner.seen = set()
                    result = _process_file(
                        path, shard_dir, settings, cleaner, tokenizer, stream, dtype, config, progress
                    )
                elif config.clean.dedup:
                    cleaner.seen.update(int(h) for h in result.hashes)
                if not result.stats["rows"] and not result.stats["rejects"]:
                    log.warning("%s holds no records (0 read, 0 dropped): nothing of it is in the output; an empty "
                                "file, or one in another format (--format, --text-unit)?", path)
                elif not result.stats["rows"]:
                    _warn_missing_text_field(path, reader, result)
                results.append((shard_dir.relative_to(out).as_posix(), result))
        finally:
            stream.close()  # stops the parsing and tokenizing threads, after an error too
        progress.close()

    if staged:
        return tasks.finish(out, config, files, tokenizer, results)
    manifest = _merge_and_write(out, results, dtype, tokenizer, settings, fingerprint, config)
    elapsed = time.perf_counter() - t0
    log.info(
        "prepared %d files in %.1f s: %d documents, %d tokens, %d dropped -> %s",
        len(files), elapsed, manifest.total("documents"), manifest.total("tokens"), manifest.total("dropped"), out,
    )
    return manifest


def _warn_missing_text_field(path: Path, reader: Reader, result: ShardResult) -> None:
    """A file none of whose records has the text field is otherwise only a missing_text_field count:
    name the fields its records have and the option that picks one (the longest text, as the example)."""
    missing = sum(n for _, _, reason, n in result.stats["rejects"] if reason == "missing_text_field")
    fields = reader.field_names(path) if missing else {}
    if not fields or reader.text_field in fields:
        return
    best = max(fields, key=lambda name: fields[name])
    log.warning(
        "%s: no record has the text field %r (%d dropped as missing_text_field); its records have the fields "
        "%s: pass the one that holds the text, e.g. --text-field %s",
        path, reader.text_field, missing, ", ".join(fields), best if fields[best] else "FIELD",
    )


def shard_name(path: Path) -> str:
    return f"{group_filename(source_name(path))}-{hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:8]}"


def _run_fingerprint(files: list[Path], settings: str) -> str:
    """Identifies a run's inputs (path, size, mtime of each, in order) and settings."""
    items = [[shard_name(f), _file_identity(f)] for f in files]
    return hashlib.sha256(json.dumps([items, settings]).encode()).hexdigest()[:16]


def _finished_manifest(out: Path, fingerprint: str) -> Manifest | None:
    """The manifest of a finished run with these exact inputs and settings, if its datasets are all there."""
    path = out / "manifest.parquet"
    if not path.is_file():
        return None
    manifest = Manifest.read(path)
    if manifest.run_fingerprint != fingerprint or not all(is_complete(out / p) for p in manifest.prefixes()):
        return None
    return manifest


def _file_identity(path: Path) -> dict:
    st = path.stat()
    return {"input": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _load_done(shard_dir: Path, path: Path, settings: str) -> ShardResult | None:
    """The finished shard for ``path``, or None when it must be (re)done."""
    marker = shard_dir / "stats.json"
    if not marker.is_file():
        return None
    stats = json.loads(marker.read_text())
    if stats.get("settings") != settings or stats.get("file") != _file_identity(path):
        log.info("shard %s is stale (input or settings changed); redoing it", shard_dir.name)
        return None
    if not all(is_complete(shard_dir / group_filename(g)) for g in stats["groups"]):
        return None
    rejects_log = [json.loads(line) for line in (shard_dir / "rejects.jsonl").read_text().splitlines()]
    hashes = np.load(shard_dir / "hashes.npy") if (shard_dir / "hashes.npy").is_file() else np.zeros(0, np.uint64)
    return ShardResult(stats, rejects_log, hashes)


def _process_file(
    path: Path,
    shard_dir: Path,
    settings: str,
    cleaner: Cleaner,
    tokenizer: TextTokenizer,
    stream: Iterator[tuple[Cleaned, np.ndarray | None, np.ndarray | None]],
    dtype: type[np.number],
    config: PrepareConfig,
    progress: "_Progress",
) -> ShardResult:
    """Write one input file's batches, taken from the run's ``stream`` (:func:`_batches`) up to the
    file's end marker, into ``shard_dir``."""
    if shard_dir.exists():
        shutil.rmtree(shard_dir)  # leftovers of an interrupted or stale run
    shard_dir.mkdir(parents=True)
    rejects = Rejects(log_limit=config.rejects_log_limit)
    hashes: list[int] = []
    by_key: dict[tuple[str, str], GroupStats] = defaultdict(GroupStats)
    writers: dict[str, IndexedWriter] = {}
    per_doc = tasks.shard_docs(config)  # issue 17: per-document records (+ MinHash) of a staged run; else None
    try:
        for batch, ids, lengths in stream:
            if batch.file != str(path):
                raise RuntimeError(f"internal error: a batch of {batch.file} arrived while writing {path}")
            last = batch.last
            if (kept := _kept(batch, cleaner, rejects, hashes, str(path))) is not None:
                _write_batch(
                    kept, ids, lengths, tokenizer, config, shard_dir, dtype, writers, by_key, per_doc, progress
                )
            if last:
                break
        else:
            raise RuntimeError(f"internal error: the batches ended before the end of {path}")
        for writer in writers.values():
            writer.commit()
    except BaseException:
        for writer in writers.values():
            writer.abort()
        raise
    stats = {
        "file": _file_identity(path),
        "settings": settings,
        "groups": {g: {"documents": w.documents, "tokens": w.tokens} for g, w in sorted(writers.items())},
        "rows": [[lang, source, asdict(s)] for (lang, source), s in sorted(by_key.items())],
        "rejects": [[lang, source, reason, n] for (lang, source, reason), n in sorted(rejects.counts.items())],
    }
    rejects.log.sort(key=lambda r: (r["line"], r["reason"]))  # line order, whichever step dropped a record
    _write_atomic(shard_dir / "rejects.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rejects.log))
    if config.clean.dedup:
        np.save(shard_dir / "hashes.npy", hashes_to_array(hashes))
    if per_doc is not None:
        per_doc.save(shard_dir)
    _write_atomic(shard_dir / "stats.json", json.dumps(stats, indent=1, ensure_ascii=False))  # last: shard done
    progress.rejects(rejects.total)
    return ShardResult(stats, rejects.log, hashes_to_array(hashes))


def _batches(
    cleaned: Iterator[Cleaned], table: np.ndarray | None, cleaner: Cleaner, tokenizer: TextTokenizer, batch_docs: int
) -> Iterator[tuple[Cleaned, np.ndarray | None, np.ndarray | None]]:
    """The run's batches, file after file, parsed and cleaned a few tasks ahead in a thread (or by
    the worker processes). Cleaning deferred (``table``): also tokenized and settled in a thread of
    their own (the engine releases the GIL), so writing batch n overlaps tokenizing batch n+1, across
    files too; else ids None: duplicates go first, then tokenizing, on the caller's thread."""
    parsed = background(cleaned)
    if table is None:
        try:
            for batch in parsed:
                yield batch, None, None
        finally:
            parsed.close()
        return

    def settled() -> Iterator[tuple[Cleaned, np.ndarray, np.ndarray]]:
        for batch, ids, lengths in encoded(parsed, tokenizer, batch_docs):
            yield settle(batch, ids, lengths, table, cleaner, tokenizer, batch_docs)

    yield from background(settled(), name="tokenize")  # closing it stops both threads


def _write_batch(
    batch: Cleaned, ids: np.ndarray | None, lengths: np.ndarray | None, tokenizer: TextTokenizer, config: PrepareConfig,
    shard_dir: Path, dtype: type[np.number], writers: dict[str, IndexedWriter],
    by_key: dict[tuple[str, str], GroupStats], per_doc: tasks.ShardDocs | None, progress: "_Progress",
) -> None:
    """Tokenize (unless done) and write one batch of kept documents; count them."""
    if ids is None or lengths is None:
        ids, lengths = tokenize(tokenizer, batch.texts, config.batch_docs)
    ids, lengths = with_eod(ids, lengths, tokenizer.eod)
    groups = batch.langs if config.group_by == "lang" else batch.sources
    for group, docs in _runs(groups):
        writer = writers.get(group)
        if writer is None:
            writer = writers[group] = IndexedWriter(shard_dir / group_filename(group), dtype)
        if docs is None:
            writer.add_batch(ids, lengths)
        else:
            writer.add_batch(ids[np.repeat(docs, lengths)], lengths[docs])
    nbytes = batch.nbytes
    if per_doc is not None:
        per_doc.add(batch, lengths, groups, batch.file)
    n_bytes, n_tokens = sum(nbytes), int(lengths.sum())
    if _uniform(batch.langs) and _uniform(batch.sources):  # the usual batch: one pass less per document
        s = by_key[(batch.langs[0], batch.sources[0])]
        s.documents, s.bytes, s.tokens = s.documents + len(nbytes), s.bytes + n_bytes, s.tokens + n_tokens
    else:
        for lang, source, b, n in zip(batch.langs, batch.sources, nbytes, lengths.tolist()):
            s = by_key[(lang, source)]
            s.documents, s.bytes, s.tokens = s.documents + 1, s.bytes + b, s.tokens + n
    progress.update(n_bytes, n_tokens, len(batch.lines))


def _kept(batch: Cleaned, cleaner: Cleaner, rejects: Rejects, hashes: list[int], file: str) -> Cleaned | None:
    """The batch after counting its drops and (with dedup) removing the documents seen before in
    this run, counted as ``duplicate``; None when nothing is left. In input order, on this thread,
    whatever the number of workers."""
    for drop in batch.drops:
        rejects.add(*drop)
    if cleaner.config.dedup:
        keep = [cleaner.dedup(h, hashes) for h in batch.hashes.tolist()]
        if not all(keep):
            for i, k in enumerate(keep):
                if not k:
                    rejects.add("duplicate", file, batch.lines[i], batch.texts[i], batch.langs[i], batch.sources[i])
            batch = batch.select(keep)
    return batch if batch.lines else None


def _runs(groups: list[str]) -> list[tuple[str, np.ndarray | None]]:
    """Each distinct group of a batch with a mask of its documents (None: the whole batch)."""
    if _uniform(groups):
        return [(groups[0], None)]
    out: dict[str, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        out[g].append(i)
    masks = []
    for g, idx in out.items():
        mask = np.zeros(len(groups), bool)
        mask[idx] = True
        masks.append((g, mask))
    return masks


def _uniform(values: list[str]) -> bool:
    return values.count(values[0]) == len(values)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _merge_and_write(
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
    _write_atomic(
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


class _Progress:
    """One bar for the run: raw text MB, MB/s and tokens/s; the file being read in the description."""

    def __init__(self, n_files: int, enabled: bool) -> None:
        self.n_files = n_files
        self.bar = tqdm(unit="B", unit_scale=True, unit_divisor=1024, disable=not enabled, dynamic_ncols=True)
        self.t0 = time.perf_counter()
        self.tokens = self.documents = self.rejected = 0

    def file(self, i: int, path: Path, resumed: bool) -> None:
        self.bar.set_description(f"file {i + 1}/{self.n_files} {path.name}{' (done, skipped)' if resumed else ''}")

    def update(self, n_bytes: int, n_tokens: int, n_docs: int) -> None:
        self.tokens += n_tokens
        self.documents += n_docs
        dt = max(time.perf_counter() - self.t0, 1e-9)
        self.bar.set_postfix_str(f"{self.tokens / dt:,.0f} tok/s, {self.documents:,} docs, {self.rejected:,} dropped", refresh=False)
        self.bar.update(n_bytes)

    def rejects(self, n: int) -> None:
        self.rejected += n

    def close(self) -> None:
        self.bar.close()
