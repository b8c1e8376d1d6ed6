"""The data pipeline against Megatron-LM's preprocessing and the bare fastest exact tokenizer.

    python bench/data_pipeline_throughput.py [--copies N] [--corpus FILE_OR_DIR] [--repeats 3]
        [--megatron-lm PATH [--megatron-python PY]] [--with-hf] [--out NAME]

Corpus: by default the bundled sample (qwenpt/assets/sample, 10 languages, 0.63 MB) repeated
``--copies`` times (default 44: 27.6 MB) into one plain JSONL file on a temporary disk; every
record has a ``lang`` field. ``--corpus`` takes your own JSONL (.gz/.zst) file or folder instead
(``--copies`` default 1). Same tokenizer (Qwen2, built offline) and cores for every tool; runs
alternate and the median is kept. A corpus repeated many times flatters every tokenizer (its
cache of merged words is warm after the first copy); docs/data-pipeline.md#throughput gives both kinds.

- ``bare``: the fastest exact engine (``TextTokenizer('qwen2').encode_flat``) over every text
  already decoded and NFC-normalised in memory, batches of ``--batch`` documents: the floor of any
  pipeline with this tokenizer.
- ``bare_hf`` (``--with-hf``): HF ``tokenizers`` ``encode_batch_fast`` the same way.
- ``prepare``: ``python -m data_pipeline prepare`` as a user runs it (read, NFC, control
  characters, tokenize, write .bin/.idx, merge, manifest; cleaning in a thread, as the default
  chooses for light cleaning, NFC and control characters settled from the ids after tokenizing);
  ``prepare_processes``: the same cleaning in one worker process per core (``--workers``), all of
  it before tokenizing; ``prepare_detect``: with the language detected (``--lang-field ''``), which
  by default cleans in one process per core; ``prepare_detect_thread``: detected in a thread
  (``--workers 1``).
- ``megatron_lm`` / ``megatron_lm_fast``: ``tools/preprocess_data.py`` (``--workers`` = cores) and
  ``tools/preprocess_data_fast.py`` (gigatoken) from the Megatron-LM source tree at
  ``--megatron-lm``, with the same tokenizer directory (HuggingFaceTokenizer, ``--use-gigatoken``
  for the fast one), appending end-of-document, run by ``--peer-python`` (the fast tool needs
  Python >= 3.12, gigatoken and triton); a peer that cannot run here is reported with its error and
  skipped.

Whole: wall time of the process from spawn to exit, and its CPU time (user + system, all threads
and reaped child processes). Work: without start-up — what ``prepare --json`` reports (after
imports and tokenizer load), the in-process timing of the bare runs, for ``preprocess_data.py`` the
whole time less its printed "Time to startup", for ``preprocess_data_fast.py`` its printed "Elapsed
time" (after imports, tokenizer load included); work CPU seconds for qwenpt's runs, which other
users of the cores disturb far less than wall time. Peak RSS: of the largest process (``wait4``).
The 1-minute load average is sampled after every run: run it on a quiet machine.
Prints a table and writes bench/results/data_pipeline_throughput.json.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SAMPLE = ROOT / "qwenpt" / "assets" / "sample"


def build_corpus(copies: int, out: Path) -> Path:
    """The bundled sample repeated ``copies`` times as one plain JSONL file (what every tool reads)."""
    lines = b"".join(gzip.open(f).read() for f in sorted(SAMPLE.glob("*.jsonl.gz")))
    with open(out, "wb") as f:
        for _ in range(copies):
            f.write(lines)
    return out


def user_corpus(path: Path, copies: int, out: Path) -> Path:
    """A user's JSONL file or folder, ``copies`` times, as one plain JSONL file (Megatron-LM reads
    one uncompressed file)."""
    from data_pipeline.readers import _open_binary, expand_inputs

    with open(out, "wb") as f:
        for _ in range(copies):
            for src in expand_inputs([path]):
                with _open_binary(src) as g:
                    shutil.copyfileobj(g, f)
    return out


def texts_of(corpus: Path) -> list[str]:
    import unicodedata

    with open(corpus, "rb") as f:
        return [unicodedata.normalize("NFC", json.loads(line)["text"]) for line in f if line.strip()]


def child_bare(corpus: Path, batch: int, hf: bool) -> dict:
    from data_pipeline.tokenizer import TextTokenizer

    texts = texts_of(corpus)
    tok = TextTokenizer("qwen2", engine="tokenizers" if hf else "auto")
    t0, cpu0 = time.perf_counter(), time.process_time()
    tokens = 0
    for i in range(0, len(texts), batch):
        tokens += int(tok.encode_flat(texts[i : i + batch])[1].sum()) + len(texts[i : i + batch])
    return {"work_s": time.perf_counter() - t0, "work_cpu_s": time.process_time() - cpu0, "tokens": tokens,
            "documents": len(texts), "engine": tok.engine}


def run(cmd: list[str], cwd: Path, env: dict | None = None) -> tuple[float, float, float, str, int]:
    """(wall seconds, CPU seconds, peak RSS MiB, output, return code) of one process. CPU: user + system
    of the process and every child it waited for (worker processes), all threads; peak
    RSS: of its largest process."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        log.seek(0)
        out = log.read().decode(errors="replace")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, out, os.waitstatus_to_exitcode(status)


def tokens_in(prefix: Path) -> int:
    from data_pipeline.indexed import read_index

    return int(read_index(prefix)[1].sum())


def measure(mode: str, args: argparse.Namespace, corpus: Path, tok_dir: Path, work: Path) -> dict:
    out = work / f"out-{mode}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    py = sys.executable
    if mode in ("bare", "bare_hf"):
        wall, cpu, rss, log, rc = run([py, __file__, "--child", mode, "--corpus", str(corpus), "--batch", str(args.batch)], ROOT)
        result = json.loads(log.strip().splitlines()[-1]) if rc == 0 else {}
    elif mode.startswith("prepare"):
        cmd = [py, "-m", "data_pipeline", "prepare", str(corpus), "-o", str(out), "--tokenizer", "qwen2",
               "--no-progress", "--json", "--batch-docs", str(args.batch)]
        if mode.startswith("prepare_detect"):
            cmd += ["--lang-field", ""]
        if mode == "prepare_processes":
            cmd += ["--workers", str(os.cpu_count())]
        if mode == "prepare_detect_thread":
            cmd += ["--workers", "1"]
        wall, cpu, rss, log, rc = run(cmd, ROOT)
        if rc == 0:
            summary = json.loads(log.strip().splitlines()[-1])
            result = {"work_s": summary["seconds"], "work_cpu_s": summary["cpu_seconds"], "tokens": summary["tokens"],
                      "documents": summary["documents"], "engine": summary["engine"]}
    else:
        script = "preprocess_data.py" if mode == "megatron_lm" else "preprocess_data_fast.py"
        cmd = [args.megatron_python, f"tools/{script}", "--input", str(corpus), "--output-prefix", str(out / "mlm"),
               "--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", str(tok_dir), "--append-eod"]
        cmd += ["--workers", str(os.cpu_count())] if mode == "megatron_lm" else ["--use-gigatoken"]
        env = dict(os.environ, PYTHONPATH=str(args.megatron_lm))
        wall, cpu, rss, log, rc = run(cmd, args.megatron_lm, env)
        if rc == 0:
            # preprocess_data.py: whole less its "Time to startup"; preprocess_data_fast.py: its "Elapsed
            # time" (main() after imports: loading the tokenizer, tokenizing, writing)
            startup = re.search(r"Time to startup:\s*([\d.]+)", log)
            elapsed = re.search(r"Elapsed time:\s*([\d.]+)", log)
            work = wall - float(startup.group(1)) if startup else float(elapsed.group(1)) if elapsed else None
            prefix = next(out.glob("mlm*.idx")).with_suffix("")
            result = {"work_s": work, "tokens": tokens_in(prefix)}
    if rc != 0:
        return {"error": log.strip().splitlines()[-1][:300] if log.strip() else f"exit {rc}"}
    shutil.rmtree(out, ignore_errors=True)
    return {**result, "whole_s": wall, "whole_cpu_s": cpu, "peak_rss_mib": rss}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, help="repeats of the corpus (default: 44 of the bundled sample, 27.6 MB; 1 of --corpus)")
    parser.add_argument("--corpus", type=Path, help="your JSONL file or folder instead of the bundled sample")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=256, help="documents per tokenizer call, every qwenpt run")
    parser.add_argument("--megatron-lm", type=Path, help="a Megatron-LM source tree (tools/preprocess_data*.py)")
    parser.add_argument("--megatron-python", "--peer-python", default=sys.executable,
                        help="interpreter for Megatron-LM's tools (preprocess_data_fast.py needs Python >= 3.12, "
                             "gigatoken and triton)")
    parser.add_argument("--with-hf", action="store_true", help="also the bare HF tokenizers engine (slow)")
    parser.add_argument("--out", default="data_pipeline_throughput", help="bench/results/NAME.json (default %(default)s)")
    parser.add_argument("--child", choices=("bare", "bare_hf"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child_bare(args.corpus, args.batch, args.child == "bare_hf")))
        return

    from data_pipeline.qwen import resolve

    tok_dir = resolve("qwen2")
    args.copies = args.copies or (1 if args.corpus else 44)
    modes = ["bare", *(["bare_hf"] if args.with_hf else []), "prepare", "prepare_processes", "prepare_detect",
             "prepare_detect_thread"]
    if args.megatron_lm:
        modes += ["megatron_lm", "megatron_lm_fast"]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        corpus = user_corpus(args.corpus, args.copies, work / "corpus.jsonl") if args.corpus else build_corpus(args.copies, work / "corpus.jsonl")
        mb = corpus.stat().st_size / 1e6
        text_mb = sum(len(t.encode()) for t in texts_of(corpus)) / 1e6
        runs: dict[str, list[dict]] = {m: [] for m in modes}
        loads = [os.getloadavg()[0]]
        for _ in range(args.repeats):  # alternate, so load from other users of the cores hits every tool alike
            for m in modes:
                if runs[m] and "error" in runs[m][-1]:
                    continue
                runs[m].append(measure(m, args, corpus, tok_dir, work))
                loads.append(os.getloadavg()[0])
    summary = {}
    for m in modes:
        ok = [r for r in runs[m] if "error" not in r]
        if not ok:
            summary[m] = {"error": runs[m][0]["error"]}
            continue
        med = {k: statistics.median(r[k] for r in ok) for k in ("whole_s", "whole_cpu_s", "peak_rss_mib")}
        works = [r["work_s"] for r in ok if r.get("work_s") is not None]
        med["work_s"] = statistics.median(works) if works else None
        cpus = [r["work_cpu_s"] for r in ok if r.get("work_cpu_s") is not None]
        med["work_cpu_s"] = statistics.median(cpus) if cpus else None  # robust to other users of the cores
        tokens = ok[0]["tokens"]
        summary[m] = {
            **med, "runs": len(ok), "tokens": tokens, "engine": ok[0].get("engine"),
            "whole_mb_per_s": text_mb / med["whole_s"], "whole_tokens_per_s": tokens / med["whole_s"],
            "work_mb_per_s": text_mb / med["work_s"] if med["work_s"] else None,
            "work_tokens_per_s": tokens / med["work_s"] if med["work_s"] else None,
            "work_mb_per_cpu_s": text_mb / med["work_cpu_s"] if med["work_cpu_s"] else None,
        }
    base = summary["bare"].get("work_mb_per_s")
    name = f"{'bundled sample' if not args.corpus else args.corpus.name} x {args.copies}"  # no machine paths in results
    print(f"corpus {name}: {text_mb:.1f} MB of text "
          f"({mb:.1f} MB JSONL), Qwen2 tokenizer, {os.cpu_count()} cores, median of {args.repeats} alternating runs; "
          f"1-min load average during the runs: median {statistics.median(loads):.1f}, max {max(loads):.1f}")
    print(f"{'':18s} {'whole s':>8s} {'MB/s':>7s} {'tok/s':>11s} {'cpu s':>6s} {'work s':>7s} {'MB/s':>7s} {'tok/s':>11s} {'cpu s':>6s} {'RSS MiB':>8s} {'vs bare':>8s}")
    for m, s in summary.items():
        if "error" in s:
            print(f"{m:18s} skipped: {s['error']}")
            continue
        w = s["work_mb_per_s"]
        print(f"{m:18s} {s['whole_s']:8.2f} {s['whole_mb_per_s']:7.1f} {s['whole_tokens_per_s']:11,.0f} {s['whole_cpu_s']:6.2f} "
              f"{s['work_s'] or float('nan'):7.2f} {w or float('nan'):7.1f} {s['work_tokens_per_s'] or float('nan'):11,.0f} "
              f"{s['work_cpu_s'] or float('nan'):6.2f} {s['peak_rss_mib']:8.0f} {(w / base) if w and base else float('nan'):8.2f}")
    ratios = {}
    for peer in ("megatron_lm", "megatron_lm_fast"):
        if "whole_s" in summary.get(peer, {}) and "whole_s" in summary["prepare"]:
            ratios[f"prepare_vs_{peer}_whole"] = summary[peer]["whole_s"] / summary["prepare"]["whole_s"]
            ratios[f"prepare_vs_{peer}_whole_cpu"] = summary[peer]["whole_cpu_s"] / summary["prepare"]["whole_cpu_s"]
            print(f"prepare is {ratios[f'prepare_vs_{peer}_whole']:.1f}x faster than {peer} (whole process; "
                  f"{ratios[f'prepare_vs_{peer}_whole_cpu']:.1f}x less CPU time)")
    if base and summary["prepare"].get("work_mb_per_s"):
        ratios["prepare_work_vs_bare"] = summary["prepare"]["work_mb_per_s"] / base
    tokens = {m: s["tokens"] for m, s in summary.items() if "tokens" in s}
    if len(set(tokens.values())) > 1:
        print(f"note: token totals differ: {tokens}")
    result = {
        "corpus": name, "text_mb": text_mb,
        "cores": os.cpu_count(), "repeats": args.repeats, "batch_docs": args.batch, "python": platform.python_version(),
        "machine": platform.machine(), "load_average_1min": {"median": statistics.median(loads), "max": max(loads)},
        **summary, **ratios,
    }
    out = ROOT / "bench" / "results" / f"{args.out}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
