"""Preparation spread over Slurm array tasks, and the merge that makes it one corpus again.

A *staged* run (``--near-dedup``, or ``--num-tasks`` > 1) makes every shard depend on its input file
alone: exact duplicates are dropped within a file while it is read, and everything that needs all
files (exact duplicates across files, near-duplicates) is decided at the merge. So:

    prepare --num-tasks N --task-index I   the files i with i % N == I -> their shards; per document,
                                           OUT/shards/<file>/docs.npz (+ sig.npy with --near-dedup);
                                           OUT/tasks/plan.json: the run's settings, for merge
    buckets OUT [--num-tasks/--task-index] near-dedup bands b with b % N == I -> OUT/neardedup/band-*.npy
    merge OUT                              checks every shard, drops duplicates across files and
                                           near-duplicates, writes datasets, rejects.jsonl, manifest

A single-machine staged run (``--num-tasks 1``) does the three itself, through the same code, so N
tasks + merge and one machine write byte-identical outputs whatever N is. A task that dies leaves
its unfinished shard without ``stats.json``; rerunning that task redoes that file only, and merge
names the tasks whose files are missing. Each task holds its own lock (``OUT/.lock-task-I``).

This module reads and writes the output folder through run_layout.py, as prepare.py does; prepare.py
calls it for a staged run and the CLI for buckets, merge and plan: it imports neither of them.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import numpy as np

from data_pipeline import neardedup
from data_pipeline.clean import CleanConfig
from data_pipeline.indexed import IndexedWriter, read_index, token_dtype
from data_pipeline.manifest import Manifest, group_filename
from data_pipeline.quality import QualityConfig, Thresholds
from data_pipeline.readers import expand_inputs
from data_pipeline.run_config import PrepareConfig, TaskSplit
from data_pipeline.run_layout import (
    ShardResult, finished_manifest, finished_shard, merge_and_write, output_lock, run_fingerprint, shard_name,
    write_atomic,
)
from data_pipeline.tokenizer import TextTokenizer

log = logging.getLogger(__name__)


def is_staged(config: PrepareConfig) -> bool:
    """Whether ``config`` runs in stages: near-dedup or several tasks."""
    return config.near_dedup is not None or config.tasks.num_tasks > 1


def task_files(files: list[Path], config: PrepareConfig) -> list[Path]:
    """The files this task prepares: every one unless several tasks share the run."""
    return [f for i, f in enumerate(files) if config.tasks.mine(i)] if is_staged(config) else files


class ShardDocs:
    """Per kept document of one shard, in the order written: its (lang, source, group), line, bytes,
    tokens, content hash and (near-dedup) MinHash signature. Saved beside the shard before its
    ``stats.json``."""

    def __init__(self, near_dedup: neardedup.NearDedupConfig | None) -> None:
        self.near_dedup = near_dedup
        self.keys: dict[tuple[str, str, str], int] = {}
        self.cols: dict[str, list] = {"key": [], "line": [], "bytes": [], "tokens": [], "hash": []}
        self.sigs: list[np.ndarray] = []
        self.file = ""

    def add(self, batch, lengths: np.ndarray, groups: list[str], file: str) -> None:
        """The kept documents of one :class:`~data_pipeline.workers.Cleaned` batch (hashes and
        signatures come computed by the workers) and their tokens."""
        for lang, source, g in zip(batch.langs, batch.sources, groups):
            self.cols["key"].append(self.keys.setdefault((lang, source, g), len(self.keys)))
        self.cols["line"] += batch.lines
        self.cols["bytes"] += batch.nbytes
        self.cols["tokens"] += lengths.tolist()
        self.cols["hash"] += batch.hashes.tolist()
        self.file = file
        if self.near_dedup is not None:
            self.sigs.append(batch.sigs)

    def save(self, shard_dir: Path) -> None:
        arrays = {k: np.asarray(v, dtype=np.uint64 if k == "hash" else np.int64) for k, v in self.cols.items()}
        meta = json.dumps({"file": self.file, "keys": [list(k) for k in self.keys]}, ensure_ascii=False)
        np.savez(shard_dir / "docs.npz", meta=np.array(meta), **arrays)
        if self.near_dedup is not None:
            p = self.near_dedup.num_perm
            np.save(shard_dir / "sig.npy", np.concatenate(self.sigs) if self.sigs else np.zeros((0, p), np.uint32))


def shard_docs(config: PrepareConfig) -> ShardDocs | None:
    return ShardDocs(config.near_dedup) if is_staged(config) else None


# --- the plan: what merge needs to rebuild the run's config ---------------------------------------

def write_plan(out: Path, config: PrepareConfig, files: Sequence[Path]) -> None:
    d = asdict(config)
    d.pop("tasks")
    plan = {"config": d, "num_tasks": config.tasks.num_tasks, "cwd": os.getcwd(), "files": [str(f) for f in files]}
    path = out / "tasks" / "plan.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(plan, indent=1, ensure_ascii=False))


def read_plan(out: Path) -> tuple[PrepareConfig, list[Path]]:
    """(PrepareConfig, files) of the run prepared into ``out``."""
    path = out / "tasks" / "plan.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: run `python -m data_pipeline prepare ... --output {out} "
                                "--num-tasks N --task-index I` (or --near-dedup) first")
    plan = json.loads(path.read_text(encoding="utf-8"))  # write_atomic writes UTF-8
    c = dict(plan["config"])
    clean = dict(c["clean"])
    if clean.get("quality") is not None:
        q = clean["quality"]
        t = {k: (tuple(tuple(x) for x in v) if isinstance(v, list) else v) for k, v in q["thresholds"].items()}
        clean["quality"] = QualityConfig(filters=tuple(q["filters"]), thresholds=Thresholds(**t))
    clean["languages"] = tuple(clean["languages"])
    c["clean"] = CleanConfig(**clean)
    c["inputs"] = tuple(c["inputs"])
    c["near_dedup"] = neardedup.NearDedupConfig(**c["near_dedup"]) if c.get("near_dedup") else None
    c["tasks"] = TaskSplit(plan["num_tasks"], 0)
    c["workers"] = c.pop("clean_workers", c.get("workers", 0))  # plans written before workers replaced clean_workers
    cwd = Path(plan["cwd"])
    files = [Path(f) if Path(f).is_absolute() else cwd / f for f in plan["files"]]
    return PrepareConfig(**c), files


# --- buckets: the near-dedup bands, spread over tasks ----------------------------------------------

def buckets(out: Path, split: TaskSplit, tokenizer: TextTokenizer | None = None) -> list[Path]:
    """The buckets stage for this task's bands (all shards must be done)."""
    config, files, run = _load_run(out, tokenizer)
    if config.near_dedup is None:
        return []
    shards = _done_shards(out, config, files, run["settings"])
    bands, _ = config.near_dedup.bands
    return neardedup.run_buckets(out, [out / rel / "sig.npy" for rel, _ in shards], config.near_dedup,
                                 run["fingerprint"], [b for b in range(bands) if split.mine(b)])


def _load_run(out: Path, tokenizer=None):
    config, files = read_plan(out)
    tokenizer = tokenizer or TextTokenizer(config.tokenizer, engine=config.engine)
    settings = config.settings_fingerprint(tokenizer)
    return config, files, {"settings": settings, "fingerprint": run_fingerprint(files, settings), "tokenizer": tokenizer}


def _done_shards(out: Path, config, files: list[Path], settings: str):
    shards, missing = [], []
    for i, f in enumerate(files):
        shard_dir = out / "shards" / shard_name(f)
        result = finished_shard(shard_dir, f, settings) if f.exists() else None
        if result is None or not (shard_dir / "docs.npz").is_file():
            missing.append(i)
        shards.append((shard_dir.relative_to(out).as_posix(), result))
    if missing:
        n = config.tasks.num_tasks
        redo = sorted({i % n for i in missing})
        names = ", ".join(str(files[i]) for i in missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise RuntimeError(
            f"{len(missing)} of {len(files)} input files are not prepared (or their shards are stale): {names}; "
            f"rerun task(s) {redo} of {n} (prepare ... --num-tasks {n} --task-index I), then merge again"
        )
    return shards


# --- merge ----------------------------------------------------------------------------------------

def merge(out: Path, tokenizer: TextTokenizer | None = None) -> Manifest:
    """Check every shard, resolve duplicates across files and near-duplicates, write the outputs
    (datasets, rejects.jsonl, manifest.parquet) as a single-machine run does. Idempotent."""
    out = Path(out)
    config, files, run = _load_run(out, tokenizer)
    with output_lock(out):
        return _merge_locked(out, config, files, run)


def _merge_locked(out: Path, config, files: list[Path], run: dict):
    done = finished_manifest(out, run["fingerprint"])
    if done is not None:
        log.info("%s is up to date; nothing to merge", out / "manifest.parquet")
        return done
    shards = _done_shards(out, config, files, run["settings"])
    docs = [np.load(out / rel / "docs.npz") for rel, _ in shards]
    offsets = np.cumsum([0] + [len(d["line"]) for d in docs])
    n = int(offsets[-1])
    reason = np.zeros(n, dtype=np.int8)  # 0 kept, 1 duplicate (of another file's document), 2 near_duplicate
    ref = np.arange(n, dtype=np.int64)  # the kept document a dropped one duplicates
    if config.clean.dedup and n:
        _, first, inverse = np.unique(np.concatenate([d["hash"] for d in docs]), return_index=True, return_inverse=True)
        ref = first[inverse.reshape(-1)]
        reason[ref != np.arange(n)] = 1
    if config.near_dedup is not None:
        bands, _ = config.near_dedup.bands
        sig_paths = [out / rel / "sig.npy" for rel, _ in shards]
        neardedup.run_buckets(out, sig_paths, config.near_dedup, run["fingerprint"], range(bands))
        label = neardedup.cluster_labels(out, n, config.near_dedup, run["fingerprint"])
        near = (label != np.arange(n)) & (reason == 0)
        reason[near], ref[near] = 2, label[near]
    dtype = token_dtype(run["tokenizer"].vocab_size)
    files_of = [json.loads(str(d["meta"]))["file"] for d in docs]
    lines = np.concatenate([d["line"] for d in docs]) if docs else np.zeros(0, np.int64)
    ref_of = [f"{files_of[s]} line {lines[j]}" for s, j in
              zip((np.searchsorted(offsets, ref, side="right") - 1).tolist(), ref.tolist())] if reason.any() else []
    results = [_filtered(out, rel, result, d, reason[a:b], ref_of[a:b] if ref_of else [], config, dtype)
               for (rel, result), d, a, b in zip(shards, docs, offsets[:-1], offsets[1:])]
    manifest = merge_and_write(out, results, dtype, run["tokenizer"], run["settings"], run["fingerprint"], config)
    for stale in (out / "neardedup").glob("band-*.npy"):
        if not stale.name.endswith(f"-{run['fingerprint']}.npy"):
            stale.unlink()
    log.info("merged %d shards: %d duplicates across files, %d near-duplicates dropped", len(shards),
             int((reason == 1).sum()), int((reason == 2).sum()))
    return manifest


REASONS = {1: "duplicate", 2: "near_duplicate"}


def _filtered(out: Path, rel: str, result, d, reason: np.ndarray, ref_of: list[str], config, dtype):
    """The shard with its dropped documents taken out: datasets under ``<shard>/dedup/`` (hard links
    where nothing was dropped), stats and rejects log adjusted."""
    target = out / rel / "dedup"
    if target.exists():
        shutil.rmtree(target)  # an earlier merge's
    if not reason.any():
        return rel, result
    d = {k: d[k] for k in ("meta", "key", "line", "bytes", "tokens")}  # an NpzFile reads an array again at every d[k]
    meta = json.loads(str(d["meta"]))
    keys = [tuple(k) for k in meta["keys"]]
    key = d["key"]
    stats = json.loads(json.dumps(result.stats))
    rows = {(lang, source): s for lang, source, s in stats["rows"]}
    drops: Counter = Counter({(lang, source, r): n for lang, source, r, n in stats["rejects"]})
    log_entries = list(result.rejects_log)
    logged = Counter((e["file"], e["reason"]) for e in log_entries)
    for i in np.flatnonzero(reason).tolist():
        lang, source, _ = keys[key[i]]
        row, why = rows[(lang, source)], REASONS[int(reason[i])]
        row["documents"] -= 1
        row["bytes"] -= int(d["bytes"][i])
        row["tokens"] -= int(d["tokens"][i])
        drops[(lang, source, why)] += 1
        if logged[(meta["file"], why)] < config.rejects_log_limit:
            logged[(meta["file"], why)] += 1
            what = "same text as" if why == "duplicate" else "near-duplicate of"
            log_entries.append({"file": meta["file"], "line": int(d["line"][i]), "reason": why, "sample": f"{what} {ref_of[i]}"})
    log_entries.sort(key=lambda e: (e["line"], e["reason"]))
    stats["rows"] = [[lang, source, s] for (lang, source), s in sorted(rows.items())]
    stats["rejects"] = [[lang, source, r, n] for (lang, source, r), n in sorted(drops.items())]
    target.mkdir(parents=True)
    group_of = np.array([k[2] for k in keys], dtype=object)[key]
    groups: dict[str, dict] = {}
    for g in result.groups:
        src, dst = out / rel / group_filename(g), target / group_filename(g)
        keep = reason[group_of == g] == 0
        _, lengths = read_index(src)
        lengths = np.asarray(lengths, dtype=np.int64)
        if keep.all():
            for ext in (".bin", ".idx"):
                os.link(f"{src}{ext}", f"{dst}{ext}")
        else:
            _copy_documents(src, dst, lengths, np.flatnonzero(keep), dtype, IndexedWriter)
        groups[g] = {"documents": int(keep.sum()), "tokens": int(lengths[keep].sum())}
    stats["groups"] = groups
    return f"{rel}/dedup", ShardResult(stats, log_entries, result.hashes)


def _copy_documents(src: Path, dst: Path, lengths: np.ndarray, keep: np.ndarray, dtype, writer_cls, chunk: int = 4096) -> None:
    """The documents ``keep`` of dataset ``src`` into a new dataset ``dst``, a chunk at a time."""
    bin_ = np.memmap(f"{src}.bin", dtype=dtype, mode="r") if lengths.sum() else np.zeros(0, dtype)
    ends = np.cumsum(lengths)
    writer = writer_cls(dst, dtype)
    try:
        for c in range(0, len(keep), chunk):
            part = keep[c : c + chunk].tolist()
            spans = [np.asarray(bin_[ends[j] - lengths[j] : ends[j]]) for j in part]
            writer.add_batch(np.concatenate(spans) if spans else np.zeros(0, dtype), lengths[part])
    except BaseException:
        writer.abort()
        raise
    writer.commit()


def finish(out: Path, config: PrepareConfig, files: list[Path], tokenizer: TextTokenizer,
           results: list[tuple[str, ShardResult]]) -> Manifest:
    """After a staged prepare: one task merges at once; one of several writes the plan and returns
    the manifest of its own shards (not written), for the summary."""
    write_plan(out, config, files)
    if config.tasks.num_tasks == 1:  # this process holds OUT/.lock already
        settings = config.settings_fingerprint(tokenizer)
        run = {"settings": settings, "fingerprint": run_fingerprint(files, settings), "tokenizer": tokenizer}
        return _merge_locked(out, config, files, run)
    log.info("task %d of %d done (%d files); run `python -m data_pipeline merge %s` once every task is",
             config.tasks.task_index, config.tasks.num_tasks, len(results), out)
    return Manifest.from_shards([(rel, r.stats) for rel, r in results], group_by=config.group_by,
                                tokenizer=tokenizer.name or str(tokenizer.path), vocab_size=tokenizer.vocab_size)


def print_plan(num_tasks: int, inputs: Sequence[str], output: str, near_dedup_threshold: float | None) -> None:
    """For slurm/prepare_data.sh (``python -m data_pipeline plan``, which has checked ``prepare``'s arguments):
    print the files and MB each task gets, then ``output: OUT`` and ``near_dedup: 0|1`` for the script.
    ``near_dedup_threshold``: None without ``--near-dedup``."""
    files = expand_inputs(inputs)
    split = TaskSplit(num_tasks, 0)  # validates num_tasks
    near_dedup = near_dedup_threshold is not None
    print(f"plan: {len(files)} input files, {sum(f.stat().st_size for f in files) / 1e6:,.1f} MB, {num_tasks} prepare tasks"
          f"{', near-dedup threshold ' + str(near_dedup_threshold) if near_dedup else ''}")
    for t in range(split.num_tasks):
        mine = [f for i, f in enumerate(files) if i % num_tasks == t]
        names = ", ".join(f.name for f in mine[:3]) + (f", ... ({len(mine)} files)" if len(mine) > 3 else "")
        print(f"task {t}: {len(mine)} files, {sum(f.stat().st_size for f in mine) / 1e6:,.1f} MB: {names or '(none)'}")
    print(f"output: {output}")
    print(f"near_dedup: {int(near_dedup)}")
