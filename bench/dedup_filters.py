"""Near-dedup and quality-filter stages: MB/s on this machine's cores, and memory per million documents.

    python bench/dedup_filters.py [--docs 1000000] [--repeat 3]

1. Speed, on the bundled sample (10 languages, 0.6 MB, repeated ``--repeat`` times): the signatures
   stage (shingling + one-permutation MinHash, what ``prepare --near-dedup`` adds per batch), the
   MinHash libraries considered (datasketch, rensa: when installed) and each quality filter, in MB
   of cleaned text per second. CPU time of the one thread doing the work, so
   the figure holds on a machine others share; wall time too.
2. Scale, on ``--docs`` generated small documents (50-100 words from a 20k-word vocabulary; one in
   ten a copy of another with one word changed): signatures written as 10 shards of ``sig.npy``
   (as ``prepare`` does), then the buckets stage (all bands) and the clusters stage, each in its own
   process: wall time, MB/s of the text behind them, and peak memory allocated (tracemalloc, which
   sees numpy's arrays; the memory-mapped signatures are page cache, not counted), per million
   documents. Disk: bytes per document of ``sig.npy`` and ``docs.npz``.

3. End to end: ``prepare`` on the sample x8 (copies with 1 % of words changed), plain, with
   ``--near-dedup``, ``--quality all`` and both.

Prints a table and writes bench/results/dedup_filters.json (``--sections`` reruns some parts and
keeps the others).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from data_pipeline import neardedup, quality  # noqa: E402


def sample_docs() -> list[tuple[str, str]]:
    docs = []
    for f in sorted((ROOT / "qwenpt" / "assets" / "sample").glob("*.jsonl.gz")):
        with gzip.open(f, "rt", encoding="utf-8") as fh:
            docs += [(r["text"], r["lang"]) for r in map(json.loads, fh)]
    return docs


def timed(fn) -> tuple[float, float]:
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def speed(repeat: int) -> dict:
    docs = sample_docs() * repeat
    texts, langs = [t for t, _ in docs], [lang for _, lang in docs]
    mb = sum(len(t.encode()) for t in texts) / 1e6
    neardedup.word_chars()  # built once per process (~0.3 s), not counted
    config = neardedup.NearDedupConfig()
    out = {"text_mb": round(mb, 2), "documents": len(docs)}

    def sig():
        for i in range(0, len(texts), 256):
            neardedup.signatures(texts[i : i + 256], langs[i : i + 256], config)

    stages = {"signatures (near-dedup)": sig}
    stages.update(_libraries(texts))
    for name in (*quality.FILTERS, "all"):
        qc = quality.QualityConfig(quality.FILTERS if name == "all" else (name,))
        stages[f"quality: {name}"] = lambda qc=qc: [quality.apply(qc, t, lang) for t, lang in docs]
    for name, fn in stages.items():
        wall, cpu = timed(fn)
        out[name] = {"mb_per_s_cpu": round(mb / cpu, 1), "mb_per_s_wall": round(mb / wall, 1)}
    return out


def _libraries(texts: list[str]) -> dict:
    """The MinHash libraries considered, when installed, on word 5-gram shingles built in Python (what
    they take: strings or bytes; no CJK handling), 128 permutations: for the choice in
    docs/data-pipeline.md#near-duplicates-quality-filters-slurm-arrays."""
    import re

    words = re.compile(r"\w+")

    def shingles(t: str) -> list[str]:
        w = words.findall(t.lower())
        return [" ".join(w[i : i + 5]) for i in range(max(1, len(w) - 4))]

    out = {}
    try:
        import datasketch

        def run_datasketch():
            for t in texts:
                m = datasketch.MinHash(num_perm=128)
                m.update_batch([s.encode() for s in shingles(t)])
        out["datasketch 2 MinHash (+shingling)"] = run_datasketch
    except ImportError:
        pass
    try:
        import rensa

        def run_rensa():
            for t in texts:
                rensa.RMinHash(num_perm=128, seed=0).update(shingles(t))
        out["rensa RMinHash (+shingling)"] = run_rensa
    except ImportError:
        pass
    return out


def _generate(n: int, shards: int, folder: Path, seed: int = 0) -> float:
    """Signatures of n generated documents in ``shards`` sig.npy files; returns MB of text."""
    rng = np.random.default_rng(seed)
    vocab = np.array(["".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), rng.integers(2, 10))) for _ in range(20000)])
    config = neardedup.NearDedupConfig()
    total = 0
    per = n // shards
    for s in range(shards):
        sigs = []
        for start in range(0, per, 4096):
            m = min(4096, per - start)
            lengths = rng.integers(50, 101, m)
            words = rng.integers(0, len(vocab), lengths.sum())
            texts = [" ".join(vocab[w]) for w in np.split(words, np.cumsum(lengths)[:-1])]
            copies = rng.random(m) < 0.1  # a tenth: an earlier document of the batch with one word changed
            for i in np.flatnonzero(copies):
                if i:
                    src = texts[rng.integers(0, i)].split(" ")
                    src[rng.integers(0, len(src))] = "changed"
                    texts[i] = " ".join(src)
            total += sum(len(t) for t in texts)
            sigs.append(neardedup.signatures(texts, ["en"] * m, config))
        np.save(folder / f"sig-{s:02d}.npy", np.concatenate(sigs))
    return total / 1e6


STAGE = r"""
import sys, time, tracemalloc, numpy as np
from pathlib import Path
sys.path.insert(0, {root!r})
from data_pipeline import neardedup
folder, stage = Path({folder!r}), {stage!r}
tracemalloc.start()  # numpy's arrays are traced; memory-mapped signature pages (page cache) are not
config = neardedup.NearDedupConfig()
paths = sorted(folder.glob("sig-*.npy"))
t0 = time.perf_counter()
if stage == "buckets":
    neardedup.run_buckets(folder, paths, config, "bench", range(config.bands[0]))
    extra = {{}}
else:
    n = sum(len(np.load(p, mmap_mode="r")) for p in paths)
    label = neardedup.cluster_labels(folder, n, config, "bench")
    extra = {{"near_duplicates": int((label != np.arange(n)).sum())}}
dt = time.perf_counter() - t0
print({{"seconds": dt, "peak_mb": tracemalloc.get_traced_memory()[1] / 2**20, **extra}})
"""


def scale(n: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        mb = _generate(n, 10, folder)
        out = {"documents": n, "text_mb": round(mb, 1), "generate_and_sign_s": round(time.perf_counter() - t0, 1)}
        for stage in ("buckets", "clusters"):
            code = STAGE.format(root=str(ROOT), folder=str(folder), stage=stage)
            res = eval(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip())
            out[stage] = {"seconds": round(res["seconds"], 2), "mb_per_s": round(mb / res["seconds"], 1),
                          "peak_mb_per_million_docs": round(res["peak_mb"] * 1e6 / n, 1),
                          **{k: v for k, v in res.items() if k == "near_duplicates"}}
        out["disk_bytes_per_doc"] = {"sig.npy": 4 * neardedup.NearDedupConfig().num_perm, "docs.npz": 5 * 8}
    return out


def end_to_end(repeat: int) -> dict:
    """``prepare`` on the sample written ``repeat`` times (each copy with 1 % of its words changed, so
    near-dedup has work), plain and with the stages on: seconds and CPU seconds of the run's work
    (after start-up), as ``prepare --json`` reports them."""
    import random

    rng = random.Random(0)
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        docs = sample_docs()
        for r in range(repeat):
            lines = []
            for text, lang in docs:
                words = text.split(" ")
                for i in rng.sample(range(len(words)), max(1, len(words) // 100)) if r else ():
                    words[i] = "changed"
                lines.append(json.dumps({"text": " ".join(words), "lang": lang}, ensure_ascii=False))
            (src / f"part-{r:02d}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        mb = sum(f.stat().st_size for f in src.iterdir()) / 1e6
        out["input_mb"] = round(mb, 2)
        tok = str(ROOT / "qwenpt" / "assets" / "tokenizer")
        for name, flags in (("plain", []), ("--near-dedup", ["--near-dedup"]), ("--quality all", ["--quality", "all"]),
                            ("--near-dedup --quality all", ["--near-dedup", "--quality", "all"])):
            cmd = [sys.executable, "-m", "data_pipeline", "prepare", str(src), "-o", f"{tmp}/out-{len(out)}", "--tokenizer", tok,
                   "--no-progress", "--json", *flags]  # default workers: a thread when plain, one process per core with a stage on
            res = json.loads(subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])
            out[name] = {"seconds": res["seconds"], "cpu_seconds": res["cpu_seconds"], "documents": res["documents"],
                         "drops": res["drops"], "mb_per_s": round(mb / res["seconds"], 2)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "dedup_filters.json"))
    ap.add_argument("--sections", default="speed,scale,e2e", help="which parts to run (others kept from --out)")
    args = ap.parse_args()
    sections = set(args.sections.split(","))
    result = json.loads(Path(args.out).read_text()) if Path(args.out).is_file() else {}
    result.update(cores=os.cpu_count(), load_avg_1m=round(os.getloadavg()[0], 1))
    if "speed" in sections:
        result["speed"] = speed(args.repeat)
    if "scale" in sections:
        result["scale"] = scale(args.docs)
    if "e2e" in sections:
        result["end_to_end"] = end_to_end(8)
    result["load_avg_1m_after"] = round(os.getloadavg()[0], 1)
    _print(result, args.repeat)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


def _print(result: dict, repeat: int) -> None:
    sp = result.get("speed", {"text_mb": 0, "documents": 0})
    print(f"\nstage speed on the sample x{repeat} ({sp['text_mb']} MB, {sp['documents']} docs), one thread:")
    print(f"{'stage':36s} {'MB/s (CPU)':>11s} {'MB/s (wall)':>12s}")
    for k, v in sp.items():
        if isinstance(v, dict):
            print(f"{k:36s} {v['mb_per_s_cpu']:11.1f} {v['mb_per_s_wall']:12.1f}")
    sc = result.get("scale")
    if sc is None:
        return
    print(f"\n{sc['documents']:,} generated documents ({sc['text_mb']} MB), signed in {sc['generate_and_sign_s']} s:")
    for stage in ("buckets", "clusters"):
        v = sc[stage]
        print(f"{stage:10s} {v['seconds']:8.2f} s  {v['mb_per_s']:8.1f} MB/s  peak {v['peak_mb_per_million_docs']:.1f} MB per million documents"
              + (f"  ({v['near_duplicates']:,} near-duplicates)" if "near_duplicates" in v else ""))
    print(f"disk per document: {sc['disk_bytes_per_doc']}  (load average {result['load_avg_1m']} -> {result['load_avg_1m_after']})")
    e2e = result.get("end_to_end")
    if e2e:
        print(f"\nprepare end to end, {e2e['input_mb']} MB (the sample x8, 1 % of words changed per copy), default --workers:")
        for k, v in e2e.items():
            if isinstance(v, dict):
                print(f"{k:28s} {v['seconds']:7.2f} s  {v['cpu_seconds']:7.2f} CPU s  {v['mb_per_s']:6.2f} MB/s  drops {v['drops']}")


if __name__ == "__main__":
    main()
