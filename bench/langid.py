"""Language identification for records without a language field: speed and accuracy of detectors.

    python bench/langid.py [--corpus DIR] [--chars 2000]

Corpus: a folder of ``<lang>.jsonl(.gz)`` files whose records carry a ``lang`` field (default: the
bundled sample, 10 languages); each detector sees the first ``--chars`` characters of every
document, as ``prepare`` does. Accuracy counts a detection right when it names the language of the
label (``zh-cn`` and ``zh-tw`` are ``zh``). Detectors: py3langid (what ``prepare`` uses; its model
ships in the package), and lingua-language-detector when installed (low- and high-accuracy mode;
a 96 MB wheel of models). Packaged fastText models are not measured: the PyPI wrappers download
the model at run time. Prints a table and writes bench/results/langid.json.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def documents(corpus: Path, chars: int) -> list[tuple[str, str]]:
    docs = []
    for f in sorted(corpus.glob("*.jsonl*")):
        opener = gzip.open if f.suffix == ".gz" else open
        with opener(f, "rt", encoding="utf-8") as fh:
            docs += [(r["lang"].split("-")[0], r["text"][:chars]) for r in map(json.loads, fh)]
    return docs


def detectors() -> dict:
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    ident = LanguageIdentifier.from_model_file(MODEL_FILE)
    out = {"py3langid": lambda t: ident.classify(t)[0]}
    try:
        from lingua import LanguageDetectorBuilder
    except ImportError:
        return out
    for name, builder in (("lingua (low accuracy)", lambda b: b.with_low_accuracy_mode()), ("lingua", lambda b: b)):
        det = builder(LanguageDetectorBuilder.from_all_languages()).build()

        def detect(t: str, det=det) -> str:
            lang = det.detect_language_of(t)
            return lang.iso_code_639_1.name.lower() if lang else "unknown"

        out[name] = detect
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=ROOT / "qwenpt" / "assets" / "sample")
    parser.add_argument("--chars", type=int, default=2000)
    args = parser.parse_args()
    docs = documents(args.corpus, args.chars)
    mb = sum(len(t.encode()) for _, t in docs) / 1e6
    results = {}
    for name, detect in detectors().items():
        detect(docs[0][1])  # load the model outside the timing
        t0 = time.perf_counter()
        guesses = [detect(t) for _, t in docs]
        dt = time.perf_counter() - t0
        right = sum(g == lang for g, (lang, _) in zip(guesses, docs))
        results[name] = {"accuracy": right / len(docs), "docs_per_s": len(docs) / dt, "mb_per_s": mb / dt}
    print(f"{len(docs)} documents, first {args.chars} characters ({mb:.2f} MB), 1 thread")
    print(f"{'detector':24s} {'accuracy':>9s} {'docs/s':>9s} {'MB/s':>7s}")
    for name, r in results.items():
        print(f"{name:24s} {r['accuracy']:9.4f} {r['docs_per_s']:9.0f} {r['mb_per_s']:7.2f}")
    out = ROOT / "bench" / "results" / "langid.json"
    corpus = os.path.relpath(args.corpus, ROOT) if args.corpus.is_relative_to(ROOT) else args.corpus.name
    out.write_text(json.dumps({"corpus": str(corpus), "documents": len(docs), "chars": args.chars, **results}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
