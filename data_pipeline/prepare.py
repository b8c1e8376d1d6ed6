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

The settings are run_config.py's; shard names, done markers, fingerprints, the final merge and the
lock are run_layout.py's, shared with tasks.py (a staged run, which this module hands over to).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from tqdm import tqdm

from data_pipeline.clean import Cleaner, hashes_to_array
from data_pipeline.indexed import IndexedWriter, token_dtype
from data_pipeline.manifest import Manifest, group_filename
from data_pipeline.readers import Reader, Rejects, expand_inputs
from data_pipeline.run_config import PrepareConfig
from data_pipeline.run_layout import (
    OutputLocked, ShardResult, file_identity, finished_manifest, finished_shard, lock_name, merge_and_write,
    output_lock, run_fingerprint, shard_name, write_atomic,
)
from data_pipeline.tokenizer import TextTokenizer
from data_pipeline import tasks  # issue 17: staged runs (near-dedup, Slurm array tasks), see tasks.py
from data_pipeline.workers import (
    Cleaned, TaskCleaner, Workers, auto_workers, background, encoded, heavy_cleaning, settle, task_bytes,
    tasks_of_files, tokenize, with_eod,
)

# What callers import from here (qwenpt.data, tests): the run and, re-exported, its config and the
# folder's lock (at home in run_config.py and run_layout.py).
__all__ = ["OutputLocked", "PrepareConfig", "output_lock", "prepare"]

log = logging.getLogger(__name__)
GROUP_BY = ("lang", "source")


@dataclass
class GroupStats:
    documents: int = 0
    bytes: int = 0
    tokens: int = 0


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
    done = finished_manifest(out, run_fingerprint(files, config.settings_fingerprint(tokenizer)))
    if done is not None:  # written whole (the manifest is published last): nothing to lock for
        log.info("%s is up to date with its %d inputs and settings; nothing to do", out / "manifest.parquet", len(files))
        return done
    out.mkdir(parents=True, exist_ok=True)
    with output_lock(out, lock_name(config), wait=wait):
        return _prepare_locked(config, files, tokenizer, out)


def _prepare_locked(config: PrepareConfig, files: list[Path], tokenizer: TextTokenizer, out: Path) -> Manifest:
    settings = config.settings_fingerprint(tokenizer)
    reader = Reader(config.text_field, config.lang_field, config.source_field, config.text_unit, config.format)
    cleaner = Cleaner(config.clean)
    dtype = token_dtype(tokenizer.vocab_size)
    fingerprint = run_fingerprint(files, settings)
    done = finished_manifest(out, fingerprint)
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
        result = None if redo_rest else finished_shard(shard_dir, path, settings)
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
    manifest = merge_and_write(out, results, dtype, tokenizer, settings, fingerprint, config)
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
        "file": file_identity(path),
        "settings": settings,
        "groups": {g: {"documents": w.documents, "tokens": w.tokens} for g, w in sorted(writers.items())},
        "rows": [[lang, source, asdict(s)] for (lang, source), s in sorted(by_key.items())],
        "rejects": [[lang, source, reason, n] for (lang, source, reason), n in sorted(rejects.counts.items())],
    }
    rejects.log.sort(key=lambda r: (r["line"], r["reason"]))  # line order, whichever step dropped a record
    write_atomic(shard_dir / "rejects.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rejects.log))
    if config.clean.dedup:
        np.save(shard_dir / "hashes.npy", hashes_to_array(hashes))
    if per_doc is not None:
        per_doc.save(shard_dir)
    write_atomic(shard_dir / "stats.json", json.dumps(stats, indent=1, ensure_ascii=False))  # last: shard done
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
