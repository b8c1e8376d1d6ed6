"""Shared by tests/unit/test_data_pipeline.py and tests/integration/test_data_pipeline.py."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import zstandard

from data_pipeline.manifest import Manifest
from data_pipeline.prepare import PrepareConfig, prepare
from qwenpt.data import BUNDLED_TOKENIZER, SAMPLE_DIR

CORPUS = SAMPLE_DIR  # 10 languages x 12 documents


def corpus_docs(lang: str, n: int) -> list[dict]:
    with gzip.open(CORPUS / f"{lang}.jsonl.gz", "rt", encoding="utf-8") as f:
        return [json.loads(line) for _, line in zip(range(n), f)]


def write_jsonl(path: Path, records: list, compress: str | None = None) -> Path:
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()
    if compress == "gz":
        data = gzip.compress(data)
    elif compress == "zst":
        data = zstandard.ZstdCompressor().compress(data)
    path.write_bytes(data)
    return path


def run_prepare(out: Path, *inputs: Path, **kw) -> Manifest:
    kw.setdefault("progress", False)
    kw.setdefault("tokenizer", str(BUNDLED_TOKENIZER))
    return prepare(PrepareConfig(inputs=tuple(map(str, inputs)), output=str(out), **kw))


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
