"""The Parquet manifest of a prepared corpus: one row per language × source.

Columns: ``lang`` (null for records rejected before a language was known), ``source``, ``group``
(the dataset the row's documents went to), ``prefix`` (that dataset, relative to the manifest's
folder), ``documents``, ``bytes`` (UTF-8, after cleaning), ``tokens`` (incl. one end-of-document
per document), ``bytes_per_token``, ``dropped``, ``drops`` (reason → count), ``shards``.
Schema metadata: tokenizer path, vocab size, token dtype, grouping, settings and run fingerprints.
"""

from __future__ import annotations

import os
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA = pa.schema(
    [
        ("lang", pa.string()),
        ("source", pa.string()),
        ("group", pa.string()),
        ("prefix", pa.string()),
        ("documents", pa.int64()),
        ("bytes", pa.int64()),
        ("tokens", pa.int64()),
        ("bytes_per_token", pa.float64()),
        ("dropped", pa.int64()),
        ("drops", pa.map_(pa.string(), pa.int64())),
        ("shards", pa.list_(pa.string())),
    ]
)
def group_filename(name: str) -> str:
    """A language or source name as a dataset file name (``zh-cn`` stays, ``a/b c`` → ``a_b_c``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip(".") or "_"


META_KEYS = ("tokenizer", "vocab_size", "dtype", "group_by", "settings", "run_fingerprint")


@dataclass
class Manifest:
    table: pa.Table
    meta: dict[str, str]
    path: Path | None = None  # where it was read from or written to; prefixes are relative to its folder

    @property
    def run_fingerprint(self) -> str:
        return self.meta.get("run_fingerprint", "")

    @property
    def tokenizer(self) -> str:
        return self.meta["tokenizer"]

    @classmethod
    def from_shards(cls, shards: list[tuple[str, dict]], group_by: str, **meta: Any) -> "Manifest":
        """Aggregate shard stats (prepare.py's ``stats.json``) into rows, sorted by language and source."""
        rows: dict[tuple[str | None, str], dict] = defaultdict(
            lambda: {"documents": 0, "bytes": 0, "tokens": 0, "drops": Counter(), "shards": []}
        )
        for rel, stats in shards:
            for lang, source, s in stats["rows"]:
                row = rows[(lang, source)]
                for k in ("documents", "bytes", "tokens"):
                    row[k] += s[k]
                group = lang if group_by == "lang" else source
                row["shards"].append(f"{rel}/{group_filename(group)}")
            for lang, source, reason, n in stats["rejects"]:
                rows[(lang or None, source)]["drops"][reason] += n
        records = []
        for (lang, source), r in sorted(rows.items(), key=lambda kv: (kv[0][0] or "", kv[0][1])):
            group = (lang if group_by == "lang" else source) if r["documents"] else None
            records.append(
                {
                    "lang": lang,
                    "source": source,
                    "group": group,
                    "prefix": group_filename(group) if group else None,
                    "documents": r["documents"],
                    "bytes": r["bytes"],
                    "tokens": r["tokens"],
                    "bytes_per_token": r["bytes"] / r["tokens"] if r["tokens"] else None,
                    "dropped": sum(r["drops"].values()),
                    "drops": sorted(r["drops"].items()),
                    "shards": r["shards"],
                }
            )
        meta["group_by"] = group_by
        return cls(pa.Table.from_pylist(records, schema=SCHEMA), {k: str(v) for k, v in meta.items()})

    @classmethod
    def read(cls, path: str | os.PathLike) -> "Manifest":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"manifest {path} does not exist; build it with `python -m data_pipeline prepare`")
        table = pq.read_table(path)
        raw = table.schema.metadata or {}
        meta = {k.decode(): v.decode() for k, v in raw.items() if k.decode() in META_KEYS}
        return cls(table.replace_schema_metadata(None), meta, path)

    def prefixes(self) -> list[str]:
        """Dataset prefixes (relative to the manifest's folder), one per group."""
        return sorted({p for p in self.table.column("prefix").to_pylist() if p})

    def total(self, column: str) -> int:
        return int(sum(v or 0 for v in self.table.column(column).to_pylist()))

    def groups(self) -> dict[str, dict[str, int]]:
        """Per dataset group: documents, bytes, tokens and dropped (rows without a group are left out)."""
        out: dict[str, dict[str, int]] = {}
        for row in self.table.to_pylist():
            if row["group"] is None:
                continue
            g = out.setdefault(row["group"], {"documents": 0, "bytes": 0, "tokens": 0, "dropped": 0, "prefix": row["prefix"]})
            for k in ("documents", "bytes", "tokens", "dropped"):
                g[k] += row[k]
        return dict(sorted(out.items()))

    def drops_by_reason(self) -> dict[str, int]:
        out: Counter = Counter()
        for drops in self.table.column("drops").to_pylist():
            out.update(dict(drops))
        return dict(sorted(out.items()))

    def summary(self) -> dict:
        """Machine-readable summary (the CLI's ``--json``)."""
        return {
            "documents": self.total("documents"),
            "bytes": self.total("bytes"),
            "tokens": self.total("tokens"),
            "dropped": self.total("dropped"),
            "drops": self.drops_by_reason(),
            "groups": self.groups(),
            **{k: self.meta.get(k) for k in ("tokenizer", "dtype", "group_by")},
        }


def write_manifest(manifest: Manifest, path: str | os.PathLike) -> Path:
    """Write atomically (temporary name, then rename); metadata goes in the Parquet schema."""
    path = Path(path)
    table = manifest.table.replace_schema_metadata({k: v for k, v in manifest.meta.items()})
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    pq.write_table(table, tmp)
    os.replace(tmp, path)
    manifest.path = path
    return path


def print_summary(manifest: Manifest, console: Any = None) -> None:
    """A table per dataset group: documents, MB, tokens, bytes/token, dropped; then drops by reason."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    groups = manifest.groups()
    title = f"{manifest.path or 'manifest'} (grouped by {manifest.meta.get('group_by', 'lang')})"
    table = Table(title=title)
    for name in ("group", "documents", "MB", "tokens", "bytes/token", "dropped"):
        table.add_column(name, justify="left" if name == "group" else "right")
    for name, g in groups.items():
        bpt = g["bytes"] / g["tokens"] if g["tokens"] else float("nan")
        table.add_row(name, f"{g['documents']:,}", f"{g['bytes'] / 1e6:,.2f}", f"{g['tokens']:,}", f"{bpt:.2f}", f"{g['dropped']:,}")
    total_tokens = manifest.total("tokens")
    table.add_row(
        "total", f"{manifest.total('documents'):,}", f"{manifest.total('bytes') / 1e6:,.2f}", f"{total_tokens:,}",
        f"{manifest.total('bytes') / total_tokens:.2f}" if total_tokens else "nan", f"{manifest.total('dropped'):,}",
        style="bold",
    )
    console.print(table)
    drops = manifest.drops_by_reason()
    console.print("dropped by reason: " + (", ".join(f"{k} {v:,}" for k, v in drops.items()) or "none"))
    console.print(f"tokenizer {manifest.meta.get('tokenizer')}, token dtype {manifest.meta.get('dtype')}")
