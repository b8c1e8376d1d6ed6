"""Wall time of the scaling-law ``fit`` example in docs/scaling-laws.md#scaling-laws, for one or two source trees in the same run.

    python bench/scaling_fit.py [--bootstrap 200] [--src OLD_TREE ...] [--data epoch olmo]
        [--out bench/results/scaling_fit.json]

Runs ``python -m qwenpt.scaling fit --law chinchilla --data points.csv --n-col N --d-col D
--loss-col loss --bootstrap 200 --budgets 1e21,1e23`` (docs/scaling-laws.md#scaling-laws) as a subprocess on
points.csv files written here: ``epoch``, Epoch AI's refit of Chinchilla on an IsoFLOP design (5
budgets x 7 sizes) with 0.3% noise, as tests/{unit,integration}/test_scaling.py draws it; ``olmo``, the 20 fully
decayed OLMo 2 ladder runs kept in analysis/data/published/. Each ``--src`` (a tree holding
``qwenpt/``, e.g. ``git archive HEAD qwenpt | tar -x -C /tmp/old``) is timed on the same data, one
after the other, so on a busy machine compare the ratio, not the seconds; CPU seconds (all
processes of the fit) are less sensitive to the load. Also records whether the
point estimates agree between trees (they must) and the bootstrap intervals.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OLMO = ROOT / "analysis" / "data" / "published" / "olmo-ladder" / "peteish-moreeval"
OLMO_N = {"190M": 190354176, "370M": 371262464, "760M": 758220288, "1B": 1279395840}


def epoch_points() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Chinchilla as refitted by Epoch AI, on 5 IsoFLOP budgets x 7 sizes, 0.3% log-normal noise."""
    E, A, B, alpha, beta = 1.82, 482.01, 2085.43, 0.3478, 0.3658
    G = (alpha * A / (beta * B)) ** (1 / (alpha + beta))
    N, D = [], []
    for C in (1e18, 1e19, 1e20, 1e21, 1e22):
        n_opt = G * (C / 6) ** (beta / (alpha + beta))
        for f in np.geomspace(1 / 8, 8, 7):
            N.append(n_opt * f)
            D.append(C / (6 * n_opt * f))
    N, D = np.array(N), np.array(D)
    L = (E + A / N**alpha + B / D**beta) * np.exp(np.random.default_rng(0).normal(0, 0.003, len(N)))
    return N, D, L


def olmo_points() -> tuple[list, list, list]:
    """Final C4 loss of the OLMo 2 ladder's 20 runs (190M-1.3B x 0.5-10xC)."""
    N, D, L = [], [], []
    for size, n in OLMO_N.items():
        for k in ("0.5xC", "1xC", "2xC", "5xC", "10xC"):
            last = list(csv.DictReader(gzip.open(OLMO / f"{size}-{k}.csv.gz", "rt")))[-1]
            N.append(n)
            D.append(float(last["throughput/total_tokens"]))
            L.append(float(last["eval/c4_en-validation/CrossEntropyLoss"]))
    return N, D, L


DATA = {"epoch": epoch_points, "olmo": olmo_points}


def run_fit(src: Path, points: Path, bootstrap: int) -> dict:
    cmd = [sys.executable, "-m", "qwenpt.scaling", "fit", "--law", "chinchilla", "--data", str(points),
           "--n-col", "N", "--d-col", "D", "--loss-col", "loss", "--bootstrap", str(bootstrap), "--budgets", "1e21,1e23"]
    env = {**os.environ, "PYTHONPATH": str(src)}
    before, t = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    r = subprocess.run(cmd, cwd=src, env=env, capture_output=True, text=True)
    seconds, after = time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    if r.returncode:
        raise RuntimeError(f"{src}: {r.stderr[-2000:]}")
    out = json.loads(r.stdout.strip().splitlines()[-1])
    return {"src": "." if src == ROOT.resolve() else src.name,  # no machine paths in committed results
            "seconds": round(seconds, 2), "cpu_seconds": round(cpu, 2), "stderr_lines": len(r.stderr.splitlines()),
            **{k: out[k] for k in ("E", "A", "B", "alpha", "beta", "objective", "intervals")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap", type=int, default=200, help="docs/scaling-laws.md's example uses 200")
    parser.add_argument("--src", nargs="+", default=[str(ROOT)], help="source trees to time (default: this one)")
    parser.add_argument("--data", nargs="+", default=["epoch"], choices=sorted(DATA))
    parser.add_argument("--out", help="write the results as JSON")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.data:
            points = Path(tmp) / f"{name}.csv"
            N, D, L = DATA[name]()
            points.write_text("N,D,loss\n" + "".join(f"{float(n)!r},{float(d)!r},{float(l)!r}\n" for n, d, l in zip(N, D, L)))
            runs = [run_fit(Path(src).resolve(), points, args.bootstrap) for src in args.src]
            for run in runs:
                print(f"{name}: {run['src']}: {run['seconds']:.1f} s ({run['cpu_seconds']:.1f} s CPU), alpha={run['alpha']:.6g} interval {run['intervals']['alpha']}", flush=True)
            same_point = all(all(r[k] == runs[0][k] for k in ("E", "A", "B", "alpha", "beta")) for r in runs)
            results.append({"data": name, "points": len(N), "bootstrap": args.bootstrap, "runs": runs,
                            "point_estimates_identical": same_point,
                            "speedup_vs_first": [round(runs[0]["seconds"] / r["seconds"], 2) for r in runs]})
    report = {"cpus": os.cpu_count(), "load_avg_at_end": os.getloadavg(), "results": results}
    print(json.dumps(report, indent=1))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
