"""Where the per-record work runs: parsing and cleaning in this process or in worker processes,
tokenizing here, on the engine's own threads.

A file's raw records (:meth:`Reader.units`: JSONL lines, text documents, Parquet rows) are cut into
tasks of ``batch_docs`` records or :data:`TASK_BYTES` of input. A :class:`TaskCleaner` parses and
cleans a task (and hashes it for dedup, MinHash for near-dedup); the result comes back in input
order for exact dedup (the one step that needs the run's history) and tokenizing. Tokenizing stays
in the parent: the engines release the GIL and run their own threads over one shared cache of
merged words, which separate processes would each rebuild (+58 % tokenizer CPU on the Debian
benchmark corpus). So the parent's cleaning thread (:func:`background`) and the tokenizer overlap.

With light cleaning in a thread and a byte-level BPE that applies NFC itself (Qwen's, the bundled
one), NFC and control characters are settled after tokenizing (:attr:`Cleaner.defer`,
:func:`settle`, bytelevel.py): the engine normalises anyway, the ids give each document's UTF-8
length and flag the few documents that hold a control character, which alone are cleaned in full
and tokenized again. That takes three passes per document off the cleaning thread; tokenizing and
settling then run in a thread of their own while this one writes.

Cleaning runs in one thread of this process (``workers`` = 1), or, when it is heavy (language
detection, quality filters), in ``workers`` processes, a bounded number of tasks in flight (memory
stays flat); outputs never depend on the number. On Linux the workers are forked; elsewhere
spawned. A worker exits with its parent, even a parent killed with SIGKILL; a
worker that dies (out of memory) stops the run with an error, never a hang.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import signal
import sys
import threading
import time
import warnings
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, TypeVar

import numpy as np

from data_pipeline import bytelevel
from data_pipeline.clean import CleanConfig, Cleaner, content_hash
from data_pipeline.neardedup import NearDedupConfig, signatures
from data_pipeline.readers import Drops, Reader, Record
from data_pipeline.tokenizer import TextTokenizer

T = TypeVar("T")
TASK_BYTES = 1 << 20  # raw input per task at most: ~5-10 ms of work, far above the hand-off's cost
FORK = sys.platform.startswith("linux")  # fork is safe there; macOS's system libraries are not


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def heavy_cleaning(clean: CleanConfig, lang_field: str | None) -> list[str]:
    """The cleaning steps that cost ~10x more per byte than parsing, NFC and control characters,
    in Python code that holds the GIL. (Near-dedup's MinHash is numpy, which releases it: in a
    thread it already overlaps the tokenizer, and worker processes measured no faster.)"""
    return [why for why, on in (("language detection", lang_field is None and clean.detect_language),
                                ("quality filters", clean.quality is not None and bool(clean.quality.filters))) if on]


def auto_workers(clean: CleanConfig, lang_field: str | None) -> tuple[int, str]:
    """How many processes clean when the user did not say, and why. Light cleaning (NFC, control
    characters, a language field) costs less than the hand-off to another process: one thread here
    (82-96 MB/s vs 68-82 with 2 processes on 2 cores, bench/data_pipeline_throughput.py). Language
    detection or quality filters: one process per core (17-20 MB/s vs 13-14 with detection in a
    thread; 1.6x with --quality all)."""
    heavy = heavy_cleaning(clean, lang_field)
    if heavy:
        return usable_cores(), f"one per core, as {' and '.join(heavy)} make{'s' if len(heavy) == 1 else ''} cleaning heavy"
    return 1, "light cleaning costs less than handing it to other processes; --workers N changes it"


def task_bytes(heavy: bool) -> int:
    """Input per task: :data:`TASK_BYTES`, or an eighth of it when cleaning is heavy (about as much
    work), so that a file of a few MB still spreads over every worker."""
    return TASK_BYTES // 8 if heavy else TASK_BYTES


@dataclass
class Task:
    file: str
    units: list  # (line, raw record) pairs of Reader.units
    damage: Drops | None = None  # the file's damage, found while framing it: after these records (last task)
    last: bool = False  # the file's end: no records; its Cleaned tells the parent the file is done


@dataclass
class Cleaned:
    """One task's kept documents, in input order, and what it dropped. Between processes the texts
    travel as one UTF-8 buffer: cleaning computed each text's UTF-8 anyway, and pickling the
    strings would encode them again."""

    texts: list[str]
    nbytes: list[int]  # UTF-8 bytes of each text (cleaning deferred: 0 until settle() counts them from the ids)
    lines: list[int]
    langs: list[str]
    sources: list[str]
    hashes: np.ndarray | None  # uint64 content hashes (exact dedup, staged runs)
    sigs: np.ndarray | None  # MinHash signatures (near-dedup)
    drops: Drops  # rejects, in order
    utf8: list[bytes] | None = None  # each text in UTF-8, where cleaning made them
    file: str = ""  # the input file
    last: bool = False  # the file's end marker (no documents): every batch of the file came before

    def __getstate__(self) -> dict:
        state = {**vars(self), "texts": None, "utf8": None}
        state["blob"] = b"".join(self.utf8 if self.utf8 is not None else (t.encode() for t in self.texts))
        return state

    def __setstate__(self, state: dict) -> None:
        blob = memoryview(state.pop("blob"))
        vars(self).update(state)
        self.texts, start = [], 0
        for n in self.nbytes:
            self.texts.append(str(blob[start : start + n], "utf-8"))
            start += n

    def select(self, keep: list[bool]) -> "Cleaned":
        """The documents where ``keep`` is true; drops unchanged."""
        pick = lambda xs: [x for x, k in zip(xs, keep) if k]  # noqa: E731
        mask = np.asarray(keep, bool)
        return Cleaned(
            pick(self.texts), pick(self.nbytes), pick(self.lines), pick(self.langs), pick(self.sources),
            None if self.hashes is None else self.hashes[mask], None if self.sigs is None else self.sigs[mask], self.drops,
            file=self.file, last=self.last,
        )


class TaskCleaner:
    """The per-record chain a worker runs on one task: parse, clean, hash (and MinHash). Built in
    the parent; runs in each worker (or in the parent itself with one worker)."""

    def __init__(self, reader: Reader, clean: CleanConfig, hashes: bool, near_dedup: NearDedupConfig | None) -> None:
        self.reader, self.cleaner = reader, Cleaner(clean)
        self.hashes, self.near_dedup = hashes or clean.dedup, near_dedup

    def __call__(self, task: Task) -> Cleaned:
        drops = Drops()
        texts, utf8, lines, langs, sources = [], [], [], [], []
        for record in self.reader.parse(Path(task.file), task.units, drops):
            cleaned = self.cleaner.clean(record)
            if isinstance(cleaned, tuple):
                drops.add(*cleaned)
                continue
            texts.append(cleaned.text)
            utf8.append(cleaned.utf8)
            lines.append(cleaned.line)
            langs.append(cleaned.lang)
            sources.append(cleaned.source)
        drops.extend(task.damage or ())
        return Cleaned(
            texts, [len(b) for b in utf8], lines, langs, sources,
            np.fromiter(map(content_hash, texts), np.uint64, len(texts)) if self.hashes else None,
            signatures(texts, langs, self.near_dedup) if self.near_dedup is not None else None,
            drops, utf8, task.file, task.last,
        )


def tokenize(tokenizer: TextTokenizer, texts: list[str], batch_docs: int) -> tuple[np.ndarray, np.ndarray]:
    """Ids of ``texts`` back to back and each one's length."""
    parts = [tokenizer.encode_flat(texts[i : i + batch_docs]) for i in range(0, len(texts), batch_docs)]
    if not parts:
        return np.zeros(0, np.uint32), np.zeros(0, np.int64)
    if len(parts) == 1:
        return parts[0]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def with_eod(ids: np.ndarray, lengths: np.ndarray, eod: int) -> tuple[np.ndarray, np.ndarray]:
    """Each document followed by end-of-document, and the lengths with it."""
    return np.insert(ids, np.cumsum(lengths), eod), lengths + 1


def encoded(
    batches: Iterator[Cleaned], tokenizer: TextTokenizer, batch_docs: int
) -> Iterator[tuple[Cleaned, np.ndarray | None, np.ndarray | None]]:
    """Each batch with its ids and lengths, or None for both where the engine refused a text (a lone
    surrogate such as "\\ud800", which only json's fallback parser lets through): :func:`settle`
    cleans that batch in full first."""
    for batch in batches:
        try:
            yield batch, *tokenize(tokenizer, batch.texts, batch_docs)
        except (UnicodeEncodeError, TypeError):  # fastokens / HF tokenizers on a lone surrogate
            yield batch, None, None


def settle(
    batch: Cleaned, ids: np.ndarray | None, lengths: np.ndarray | None, table: np.ndarray, cleaner: Cleaner,
    tokenizer: TextTokenizer, batch_docs: int,
) -> tuple[Cleaned, np.ndarray, np.ndarray]:
    """Finish the cleaning that :attr:`Cleaner.defer` left to after tokenizing, from the ids: each
    document's UTF-8 length (bytelevel.scan), and those whose ids may hold a control character
    cleaned in full, then tokenized again where that changed them, or dropped (added to the batch's
    drops, in line order). The result equals cleaning every document first (tested)."""
    if ids is None or lengths is None:
        suspects: Iterable[int] = range(len(batch.texts))
    else:
        nbytes, found = bytelevel.scan(table, ids, lengths)
        batch.nbytes = nbytes.tolist()
        if not len(found):
            return batch, ids, lengths
        suspects = found.tolist()
    keep = [True] * len(batch.texts)
    changed: set[int] = set()
    for i in suspects:
        record = Record(batch.texts[i], batch.langs[i], batch.sources[i], batch.file, batch.lines[i])
        cleaned = cleaner.clean_fully(record)
        if isinstance(cleaned, tuple):
            batch.drops.add(*cleaned)
            keep[i] = False
            continue
        batch.nbytes[i] = len(cleaned.utf8)
        if cleaned.text != batch.texts[i]:
            batch.texts[i] = cleaned.text
            changed.add(i)
    if not all(keep):
        batch.drops.sort(key=lambda drop: drop[2])  # by line, as cleaning first would have listed them
    if ids is None or lengths is None:  # nothing was tokenized: all of it now
        batch = batch.select(keep)
        return batch, *tokenize(tokenizer, batch.texts, batch_docs)
    if not changed and all(keep):
        return batch, ids, lengths
    order = sorted(changed)
    new_ids, new_lengths = tokenize(tokenizer, [batch.texts[i] for i in order], batch_docs)
    new = dict(zip(order, np.split(new_ids, np.cumsum(new_lengths)[:-1]))) if order else {}
    ends = np.cumsum(lengths).tolist()
    parts = [new[i] if i in new else ids[e - n : e] for i, (e, n) in enumerate(zip(ends, lengths.tolist())) if keep[i]]
    lengths = np.array([len(p) for p in parts], np.int64)
    return batch.select(keep), np.concatenate(parts) if parts else ids[:0], lengths


def tasks_of(reader: Reader, path: Path, batch_docs: int, max_bytes: int = TASK_BYTES) -> Iterator[Task]:
    """``path``'s raw records in tasks of ``batch_docs`` records or ``max_bytes`` of input; damage to
    the file travels with the last task, so every reject reaches the parent in order, on one thread."""
    units: list = []
    size = 0
    damage = Drops()
    for unit in reader.units(path, damage):
        units.append(unit)
        raw = unit[1]
        size += len(raw) if isinstance(raw, bytes) else sum(len(v) for v in raw.values() if isinstance(v, str))
        if len(units) >= batch_docs or size >= max_bytes:
            yield Task(str(path), units)
            units, size = [], 0
    if units or damage:
        yield Task(str(path), units, damage)


def tasks_of_files(reader: Reader, paths: list[Path], batch_docs: int, max_bytes: int = TASK_BYTES) -> Iterator[Task]:
    """:func:`tasks_of` each of ``paths`` in turn, each file closed by a ``last`` task: one stream for
    the whole run, so parsing and tokenizing the next file overlap writing this one."""
    for path in paths:
        yield from tasks_of(reader, path, batch_docs, max_bytes)
        yield Task(str(path), [], last=True)


def background(items: Iterator[T], depth: int = 4, name: str = "clean") -> Iterator[T]:
    """``items`` produced by a thread, a bounded number ahead of the caller; its exception is
    raised here, and a caller that stops early stops it. The engines release the GIL while they
    encode, so the producer's Python work (parsing, cleaning, collecting results) overlaps the
    caller's tokenizing."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(item: object) -> None:
        while not stop.is_set():
            try:
                return q.put(item, timeout=0.1)
            except queue.Full:
                continue

    def produce() -> None:
        try:
            for item in items:
                put(item)
                if stop.is_set():
                    return
            put(done)
        except BaseException as err:  # handed to the consumer, which re-raises it
            put(err)

    thread = threading.Thread(target=produce, name=name, daemon=True)
    thread.start()
    item = None
    try:
        while (item := q.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=None if item is done else 5.0)  # after an error, not forever on a read that blocks


_cleaner: TaskCleaner | None = None


def _init_worker(cleaner: TaskCleaner, parent: int) -> None:
    """Worker start: keep the cleaner; die with the parent (so no worker outlives a killed run)."""
    global _cleaner
    _cleaner = cleaner
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the parent stops the run and shuts workers down
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()


def _watch_parent(parent: int) -> None:
    """Exit within 0.5 s of the parent's death (prctl's PR_SET_PDEATHSIG would fire when the
    *thread* that forked the worker ends, which here is a per-file one)."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


def _clean_in_worker(task: Task) -> Cleaned:
    assert _cleaner is not None, "_init_worker was not run"
    return _cleaner(task)


class Workers:
    """``n`` worker processes running a :class:`TaskCleaner`, started on first use and kept for the
    whole run (every file); one worker: the chain runs in this process, no pool."""

    def __init__(self, cleaner: TaskCleaner, n: int) -> None:
        self.cleaner, self.n = cleaner, max(1, n)
        self.pool: ProcessPoolExecutor | None = None

    def map(self, tasks: Iterator[Task]) -> Iterator[Cleaned]:
        """Results of ``tasks`` in order, at most 2 per worker in flight; each one as soon as it and
        all before it are done."""
        if self.n == 1:
            yield from map(self.cleaner, tasks)
            return
        # Reading and submitting in a thread of their own: a read that blocks (a pipe, a slow disk)
        # never holds back results already done. Its queue bounds the tasks in flight.
        for future in background((self._submit(task) for task in tasks), max(1, 2 * self.n - 2), "read"):
            yield self._result(future)

    def _submit(self, task: Task) -> Future:
        if self.pool is None:
            ctx = multiprocessing.get_context("fork" if FORK else "spawn")
            self.pool = ProcessPoolExecutor(self.n, ctx, initializer=_init_worker, initargs=(self.cleaner, os.getpid()))
        with warnings.catch_warnings():  # Python >= 3.12 warns of fork with threads; the workers only parse and clean
            warnings.filterwarnings("ignore", ".*multi-threaded.*fork", DeprecationWarning)
            return self.pool.submit(_clean_in_worker, task)

    @staticmethod
    def _result(future: Future) -> Cleaned:
        try:
            return future.result()
        except BrokenProcessPool:
            raise RuntimeError(
                "a worker process ended unexpectedly (killed, or out of memory: lower --workers); "
                "rerun to resume from the last finished file"
            ) from None

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None

    def __enter__(self) -> "Workers":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
