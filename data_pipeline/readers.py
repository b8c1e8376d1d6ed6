"""Stream documents out of JSONL files (optionally gzip), counting bad records instead of failing."""

from __future__ import annotations

import gzip
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Iterator


@dataclass
class ReadStats:
    documents: int = 0
    rejects: Counter = field(default_factory=Counter)  # reason -> count
    samples: list = field(default_factory=list)  # (file, line, reason) of the first rejects

    def reject(self, path: Path, line: int, reason: str, keep: int = 20) -> None:
        self.rejects[reason] += 1
        if len(self.samples) < keep:
            self.samples.append((str(path), line, reason))


def _open_text(path: Path) -> IO[bytes]:
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def read_jsonl(path: str | Path, text_field: str = "text", stats: ReadStats | None = None) -> Iterator[str]:
    """Yield the text field of each line; malformed lines are counted in ``stats`` and skipped."""
    path = Path(path)
    stats = stats if stats is not None else ReadStats()
    with _open_text(path) as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                record = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                stats.reject(path, lineno, "invalid_utf8")
                continue
            except json.JSONDecodeError:
                stats.reject(path, lineno, "malformed_json")
                continue
            text = record.get(text_field) if isinstance(record, dict) else None
            if not isinstance(text, str):
                stats.reject(path, lineno, "missing_text_field")
                continue
            if not text.strip():
                stats.reject(path, lineno, "empty_document")
                continue
            stats.documents += 1
            yield text
