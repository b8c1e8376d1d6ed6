"""A prepare run's settings: :class:`PrepareConfig`, and :class:`TaskSplit`, its part of a Slurm array.

Below everything that reads them: prepare.py runs a config, tasks.py rebuilds one from a staged run's
plan for merge, run_layout.py names the files a config leaves on disk.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from typing import Mapping

from data_pipeline.clean import CleanConfig
from data_pipeline.neardedup import NearDedupConfig
from data_pipeline.tokenizer import TextTokenizer


@dataclass(frozen=True)
class TaskSplit:
    num_tasks: int = 1
    task_index: int = 0

    def __post_init__(self) -> None:
        if self.num_tasks < 1 or not 0 <= self.task_index < self.num_tasks:
            raise ValueError(f"--task-index {self.task_index} is not in 0..{self.num_tasks - 1} (--num-tasks {self.num_tasks})")

    @classmethod
    def from_env(cls, num_tasks: int | None = None, task_index: int | None = None,
                 env: Mapping[str, str] = os.environ) -> "TaskSplit":
        """Explicit values, else a Slurm job array's (``SLURM_ARRAY_TASK_COUNT``, ``SLURM_ARRAY_TASK_ID``:
        submit ``--array=0-(N-1)``; to rerun some tasks, ``--array=3,7`` with ``--num-tasks N``), else one task."""
        if num_tasks is None:
            num_tasks = int(env.get("SLURM_ARRAY_TASK_COUNT", 1))
        if task_index is None:
            task_index = int(env.get("SLURM_ARRAY_TASK_ID", 0))
        return cls(num_tasks, task_index)

    def mine(self, i: int) -> bool:
        return i % self.num_tasks == self.task_index


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
    tasks: TaskSplit = field(default_factory=TaskSplit)  # this run's part of a Slurm array

    def settings_fingerprint(self, tokenizer: TextTokenizer) -> str:
        """What decides a shard's bytes: the tokenizer file and every reading/cleaning setting."""
        ignored = ("inputs", "output", "tokenizer", "progress", "keep_shards", "batch_docs", "workers", "engine", "tasks")
        settings = {k: v for k, v in asdict(self).items() if k not in ignored}
        settings["tokenizer_sha256"] = tokenizer.sha256
        return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]
