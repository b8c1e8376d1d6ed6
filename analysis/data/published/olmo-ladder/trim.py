"""How the files here were made from OLMo's originals: keep the LM-loss columns, drop downstream tasks.

    python trim.py ORIGINAL_DIR   # a checkout's scripts/scaling/data/peteish-moreeval (CSV or CSV.gz)

Writes ``peteish-moreeval/<name>.csv.gz`` (``gzip -n -9`` equivalent: no name, no mtime), every row
kept, values as the original text (no float round trip).
"""

from __future__ import annotations

import csv
import gzip
import io
import sys
from pathlib import Path

KEEP = ("_step", "throughput/total_tokens", "throughput/total_training_Gflops", "batch_size_in_tokens",
        "optim/learning_rate_group0", "learning_rate_peak")


def keep(column: str) -> bool:
    return column in KEEP or (column.startswith("eval/") and column.endswith("/CrossEntropyLoss")
                              and not column.startswith("eval/downstream"))


def main(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for path in sorted(src.glob("*.csv*")):
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", newline="") as f:
            rows = list(csv.reader(f))
        cols = [i for i, c in enumerate(rows[0]) if keep(c)]
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        for row in rows:
            writer.writerow([row[i] if i < len(row) else "" for i in cols])
        name = path.name.removesuffix(".gz")
        with open(dst / f"{name}.gz", "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=9, mtime=0, filename="") as gz:
            gz.write(out.getvalue().encode())


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(__file__).resolve().parent / "peteish-moreeval")
