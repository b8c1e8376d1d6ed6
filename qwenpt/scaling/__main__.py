"""``python -m qwenpt.scaling fit --law chinchilla|isoflop|envelope|mix --data FILE ...``

Prints the fitted parameters with intervals (and, for size laws, the compute-optimal exponents);
the last line of stdout is the same as one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def read_table(paths: list[str], join_on: str | None) -> dict[str, np.ndarray]:
    """CSV (optionally .gz) or Parquet files as columns; several files are joined on ``join_on``."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    tables = []
    for p in paths:
        if not Path(p).exists():
            raise FileNotFoundError(f"--data {p} does not exist")
        tables.append(pq.read_table(p) if p.endswith(".parquet") else pacsv.read_csv(p))
    table = tables[0]
    for other in tables[1:]:
        if not join_on:
            raise ValueError("several --data files need --join-on COLUMN (e.g. index)")
        table = table.join(other, join_on).sort_by(join_on)
    return {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}


def _columns(table: dict, spec: str, what: str) -> list[str]:
    """A comma list of names, or ``prefix*`` for every column starting with prefix."""
    if spec.endswith("*"):
        names = [c for c in table if c.startswith(spec[:-1])]
    else:
        names = [c.strip() for c in spec.split(",") if c.strip()]
    missing = [c for c in names if c not in table]
    if missing or not names:
        raise ValueError(f"{what} {spec!r}: no such column(s) {missing or spec}; the data has {sorted(table)}")
    return names


def _col(table: dict, name: str, flag: str) -> np.ndarray:
    if name not in table:
        raise ValueError(f"{flag} {name!r} is not a column of the data; it has {sorted(table)}")
    return np.asarray(table[name])


def _fmt_interval(fit: dict, name: str) -> str:
    iv = fit.get("intervals", {}).get(name)
    return f" [{iv[0]:.4g}, {iv[1]:.4g}]" if iv else ""


def fit_command(args: argparse.Namespace) -> dict:
    from qwenpt.scaling.frontier import fit_envelope, fit_isoflop
    from qwenpt.scaling.laws import fit_loss_law
    from qwenpt.scaling.mixing import best_mixture, fit_mixing_law, rank_agreement

    table = read_table(args.data, args.join_on)
    if args.law in ("chinchilla", "isoflop", "envelope"):
        N, D, L = (_col(table, c, f) .astype(float) for c, f in ((args.n_col, "--n-col"), (args.d_col, "--d-col"), (args.loss_col, "--loss-col")))
        if args.law == "chinchilla":
            fit = fit_loss_law(N, D, L, bootstrap=args.bootstrap, confidence=args.confidence, seed=args.seed)
            out = {"law": "chinchilla", **fit.as_dict()}
            print(f"L(N, D) = E + A/N^alpha + B/D^beta on {fit.n_points} points"
                  + (f", {args.confidence:.0%} bootstrap intervals ({args.bootstrap} resamples)" if args.bootstrap else ""))
            for k in ("E", "A", "B", "alpha", "beta", "a", "b"):
                print(f"  {k:6s} {out[k]:.6g}{_fmt_interval(out, k)}")
            if args.budgets:
                n_opt, d_opt = fit.compute_optimal(np.array(args.budgets), args.flops_per_param_token)
                out["compute_optimal"] = [{"C": c, "N_opt": float(n), "D_opt": float(d)} for c, n, d in zip(args.budgets, n_opt, d_opt)]
                for row in out["compute_optimal"]:
                    print(f"  C={row['C']:.3g}: N_opt={row['N_opt']:.4g}, D_opt={row['D_opt']:.4g}, D/N={row['D_opt'] / row['N_opt']:.1f}")
        else:
            kw = dict(flops_per_param_token=args.flops_per_param_token, bootstrap=args.bootstrap, confidence=args.confidence, seed=args.seed)
            if args.law == "isoflop":
                fit = fit_isoflop(N, D, L, **kw)
            else:
                fit = fit_envelope(_col(table, args.run_col, "--run-col"), N, D, L, **kw)
            out = {"law": args.law, **fit.as_dict()}
            print(f"{args.law}: N_opt ∝ C^a, D_opt ∝ C^b from {len(fit.budgets)} FLOP budgets")
            for k in ("a", "b"):
                print(f"  {k} {out[k]:.4f}{_fmt_interval(out, k)}")
        return out

    mix_cols = _columns(table, args.mix_cols, "--mix-cols")
    loss_cols = _columns(table, args.loss_cols, "--loss-cols")
    r = np.stack([np.asarray(table[c], float) for c in mix_cols], axis=1)
    law = fit_mixing_law(r, {c: np.asarray(table[c], float) for c in loss_cols}, mix_cols)
    out = {"law": "mix", **law.as_dict()}
    print(f"mixing law L_i(r) = c_i + k_i exp(t_i . r): {len(loss_cols)} domains over {len(mix_cols)} mixture columns, {len(r)} mixtures")
    for d, l in law.laws.items():
        print(f"  {d}: c={l.c:.4g} k={l.k:.4g} rmse={l.rmse:.4g}")
    if args.test:
        test = read_table(args.test, args.join_on)
        rt = np.stack([np.asarray(_col(test, c, "--test"), float) for c in mix_cols], axis=1)
        agreement = rank_agreement(law, rt, {c: np.asarray(_col(test, c, "--test"), float) for c in loss_cols})
        out["test"] = agreement
        print(f"held-out mixtures ({len(rt)}): Spearman rho and MAE per domain")
        for d, a in agreement.items():
            print(f"  {d}: rho={a['spearman']:.4f} mae={a['mae']:.4g}")
    if args.target:
        target = {k: float(v) for k, v in (item.split("=") for item in args.target.split(","))}
        caps = {c: float(r[:, j].max()) for j, c in enumerate(mix_cols)} if args.trust_region else None
        best, value = best_mixture(law, target, caps)
        out["best_mixture"] = {"mixture": best, "predicted": value, "trust_region": bool(args.trust_region)}
        print(f"best mixture for {target} (predicted {value:.4f}):")
        for c, share in sorted(best.items(), key=lambda kv: -kv[1]):
            if share > 1e-4:
                print(f"  {c}: {share:.4f}")
    return out


def collect_command(args: argparse.Namespace) -> dict:
    from qwenpt.scaling.runs import collect_runs

    table = collect_runs(args.runs)
    if args.out:
        import pyarrow.parquet as pq

        pq.write_table(table, args.out)
    from rich.console import Console
    from rich.table import Table

    shown = Table(title=f"{table.num_rows} evaluations")
    columns = [c for c in ("run", "model", "non_embedding_params", "tokens", "valid_loss", "final") if c in table.column_names]
    for c in columns:
        shown.add_column(c)
    for row in table.select(columns).to_pylist():
        shown.add_row(*(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row.values()))
    Console().print(shown)
    return {"rows": table.num_rows, "out": args.out}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m qwenpt.scaling", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("fit", help="fit a scaling or data-mixing law to a table")
    p.add_argument("--law", choices=("chinchilla", "isoflop", "envelope", "mix"), required=True,
                   help="chinchilla: L(N,D) Approach 3; isoflop: Approach 2; envelope: Approach 1 (training curves); mix: Ye et al. mixing law")
    p.add_argument("--data", nargs="+", required=True, help="CSV (.csv/.csv.gz) or Parquet; several are joined on --join-on")
    p.add_argument("--join-on", help="column joining several --data files (e.g. index)")
    p.add_argument("--n-col", default="N", help="parameters column (default N; non-embedding, as the Chinchilla fits use)")
    p.add_argument("--d-col", default="D", help="tokens column (default D)")
    p.add_argument("--loss-col", default="loss", help="loss column (default loss)")
    p.add_argument("--run-col", default="run", help="envelope: run id column (default run)")
    p.add_argument("--flops-per-param-token", type=float, default=6.0, help="C = k N D (default 6)")
    p.add_argument("--budgets", type=lambda s: [float(x) for x in s.split(",")], help="chinchilla: FLOP budgets for N_opt, D_opt, e.g. 1e21,1e23")
    p.add_argument("--bootstrap", type=int, default=0, help="bootstrap resamples for intervals (0: none)")
    p.add_argument("--confidence", type=float, default=0.8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mix-cols", default="r_*", help="mix: mixture share columns, a comma list or PREFIX* (default r_*)")
    p.add_argument("--loss-cols", default="loss_*", help="mix: per-domain loss columns, a comma list or PREFIX* (default loss_*)")
    p.add_argument("--test", nargs="+", help="mix: held-out table(s) with the same columns; prints Spearman rho per domain")
    p.add_argument("--target", help="mix: search the best mixture for DOMAIN=WEIGHT,... (e.g. loss_en=1)")
    p.add_argument("--trust-region", action="store_true", help="mix: cap each share at the largest seen in the data")
    p = sub.add_parser("collect", help="runs written by train.py -> one table")
    p.add_argument("runs", nargs="+", help="run directories, or folders holding them")
    p.add_argument("--out", help="write the table as Parquet")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        out = {"fit": fit_command, "collect": collect_command}[args.command](args)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(out, default=lambda x: x.tolist() if hasattr(x, "tolist") else str(x)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
