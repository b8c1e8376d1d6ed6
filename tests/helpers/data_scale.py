"""Shared by tests/unit/test_data_scale.py and tests/integration/test_data_scale.py."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from data_pipeline.clean import CleanConfig
from data_pipeline.prepare import PrepareConfig
from qwenpt.data import BUNDLED_TOKENIZER, SAMPLE_DIR


def sample(lang: str) -> list[dict]:
    with gzip.open(SAMPLE_DIR / f"{lang}.jsonl.gz", "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def _corpus(src: Path) -> list[Path]:
    """Six files with duplicates and near-duplicates within and across them; e.jsonl is task 1's second."""
    src.mkdir()
    en, de, zh, ja, fr = (sample(x) for x in ("en", "de", "zh-cn", "ja", "fr"))
    boiler = lambda d: dict(d, text=d["text"] + "\n\nShare this page with your friends.")  # noqa: E731
    files = {
        "a.jsonl": en[:6] + zh[:4],
        "b.jsonl": de[:5] + [boiler(en[0]), en[1]],  # near-dup of a, exact dup of a
        "c.jsonl": ja[:5] + [zh[2], de[0], de[0]],  # dup of a, of b, and inside c
        "d.jsonl": fr[:4] + [boiler(ja[1])],
        "e.jsonl": fr[4:8] + [boiler(fr[0]), en[6]],
        "f.jsonl": en[7:9] + [boiler(en[1])],  # near-dup of a document that is itself a duplicate
    }
    return [write_jsonl(src / name, [{"text": r["text"], "lang": r["lang"]} for r in recs]) for name, recs in files.items()]


def _config(inputs: list[Path], out: Path, **kw) -> PrepareConfig:
    kw.setdefault("clean", CleanConfig(dedup=True))
    return PrepareConfig(inputs=tuple(map(str, inputs)), output=str(out), tokenizer=str(BUNDLED_TOKENIZER),
                         progress=False, batch_docs=4, **kw)
