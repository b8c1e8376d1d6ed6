"""The data pipeline's throughput against the bare tokenizer on the same texts and cores.

    python bench/data_pipeline_throughput.py [--corpus ../shared/corpus/debian-reference] [--repeats 3]

Bare: ``tokenizers.Tokenizer.encode_batch`` over every document already decoded in memory (the
floor of any pipeline using this tokenizer: no reading, decompression, JSON, cleaning or writing),
in batches of the pipeline's size, on all cores. Pipeline: ``python -m data_pipeline prepare``'s
work end to end — read gzip JSONL, NFC + control stripping, tag, dedup, tokenize, write .bin/.idx
shards, merge per language, manifest — into a fresh folder. Each run is its own process, timed
around the work (interpreter start-up and imports excluded) and reporting its peak RSS; runs
alternate and the median is kept. Prints a table and writes bench/results/data_pipeline_throughput.json.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TOKENIZER = ROOT / "qwenpt" / "assets" / "tokenizer" / "tokenizer.json"


def corpus_files(corpus: Path) -> list[Path]:
    files = sorted(corpus.glob("*.jsonl.gz"))
    if not files:
        raise SystemExit(f"no *.jsonl.gz under {corpus}; pass --corpus")
    return files


def run_bare(corpus: Path, batch: int, fast: bool) -> dict:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(TOKENIZER))
    texts = [json.loads(line)["text"] for f in corpus_files(corpus) for line in gzip.open(f, "rt", encoding="utf-8")]
    encode = tok.encode_batch_fast if fast else tok.encode_batch
    t0 = time.perf_counter()
    tokens = 0
    for i in range(0, len(texts), batch):
        tokens += sum(len(e.ids) + 1 for e in encode(texts[i : i + batch], add_special_tokens=False))
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "bytes": sum(len(t.encode()) for t in texts), "tokens": tokens, "documents": len(texts)}


def run_pipeline(corpus: Path, batch: int) -> dict:
    from data_pipeline.clean import CleanConfig
    from data_pipeline.prepare import PrepareConfig, prepare

    with tempfile.TemporaryDirectory() as out:
        config = PrepareConfig(
            inputs=(str(corpus / "*.jsonl.gz"),), output=out, tokenizer=str(TOKENIZER), batch_docs=batch,
            progress=False, clean=CleanConfig(dedup=True),
        )
        t0 = time.perf_counter()
        manifest = prepare(config)
        seconds = time.perf_counter() - t0
    return {"seconds": seconds, "bytes": manifest.total("bytes"), "tokens": manifest.total("tokens"), "documents": manifest.total("documents")}


def child(mode: str, corpus: Path, batch: int) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--corpus", str(corpus), "--batch", str(batch)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=ROOT.parent / "shared" / "corpus" / "debian-reference")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=256, help="documents per tokenizer call, both sides")
    parser.add_argument("--child", choices=("bare", "bare_fast", "pipeline"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = run_pipeline(args.corpus, args.batch) if args.child == "pipeline" else run_bare(args.corpus, args.batch, args.child == "bare_fast")
        result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
        return

    modes = ("bare", "bare_fast", "pipeline")
    runs: dict[str, list[dict]] = {m: [] for m in modes}
    for _ in range(args.repeats):
        for m in modes:
            runs[m].append(child(m, args.corpus, args.batch))
    summary = {}
    for m in modes:
        best = {k: statistics.median(r[k] for r in runs[m]) for k in ("seconds", "peak_rss_mib")}
        r0 = runs[m][0]
        summary[m] = {
            "seconds": best["seconds"], "documents": r0["documents"], "tokens": r0["tokens"],
            "mb_per_s": r0["bytes"] / 1e6 / best["seconds"], "tokens_per_s": r0["tokens"] / best["seconds"],
            "peak_rss_mib": best["peak_rss_mib"],
        }
    ratio = summary["pipeline"]["mb_per_s"] / summary["bare"]["mb_per_s"]
    ratio_fast = summary["pipeline"]["mb_per_s"] / summary["bare_fast"]["mb_per_s"]
    labels = {"bare": "bare Tokenizer.encode_batch", "bare_fast": "bare Tokenizer.encode_batch_fast", "pipeline": "data_pipeline prepare"}
    print(f"corpus {os.path.relpath(args.corpus, ROOT)} ({summary['bare']['documents']} documents, {runs['bare'][0]['bytes'] / 1e6:.2f} MB), "
          f"{os.cpu_count()} cores, median of {args.repeats}")
    print(f"{'':34s} {'seconds':>8s} {'MB/s':>7s} {'tokens/s':>10s} {'peak RSS MiB':>13s}")
    for m in modes:
        s = summary[m]
        print(f"{labels[m]:34s} {s['seconds']:8.2f} {s['mb_per_s']:7.2f} {s['tokens_per_s']:10,.0f} {s['peak_rss_mib']:13.0f}")
    print(f"ratio pipeline / bare encode_batch: {ratio:.3f} (target >= 0.85); / bare encode_batch_fast: {ratio_fast:.3f}")
    if summary["pipeline"]["tokens"] != summary["bare"]["tokens"]:
        print(f"note: token totals differ (pipeline {summary['pipeline']['tokens']:,}, bare {summary['bare']['tokens']:,}): "
              "cleaning or dedup changed the text")
    result = {
        "corpus": os.path.relpath(args.corpus, ROOT), "cores": os.cpu_count(), "repeats": args.repeats, "batch_docs": args.batch,
        "python": platform.python_version(), "machine": platform.machine(), **summary,
        "ratio_vs_encode_batch": ratio, "ratio_vs_encode_batch_fast": ratio_fast,
    }
    out = ROOT / "bench" / "results" / "data_pipeline_throughput.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
