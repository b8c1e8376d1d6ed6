"""``python -m data_pipeline {prepare,plan,buckets,merge,stats,mix,tokenizer,train-tokenizer} --help``.

The command line over the library: this module imports data_pipeline's modules, never the reverse."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import warnings
from pathlib import Path

DESCRIPTION = """\
Raw multilingual text -> tokens -> megatron indexed datasets, with statistics and mixtures.

  prepare          read, clean, tag, tokenize and write .bin/.idx per language + manifest.parquet
  plan             the input files and MB each of N `prepare --num-tasks N` tasks gets (slurm/prepare_data.sh)
  buckets, merge   the stages after `prepare --num-tasks N` (Slurm array tasks): near-dedup bands, final merge
  stats            print a manifest's per-language table (or --json)
  mix              blend weights for a token budget -> a data config train.py reads
  tokenizer        write the Qwen2 / Qwen2.5 / Qwen3 / Qwen3.5 tokenizer (HF directory), rebuilt offline
  train-tokenizer  train a small Qwen2-style byte-level BPE for offline use

Example:
  python -m data_pipeline prepare 'corpus/*.jsonl.gz' --output data/corpus --tokenizer qwen2
  python -m data_pipeline mix data/corpus/manifest.parquet --budget 20B --method unimax --max-epochs 4 \\
      --out conf/data/corpus_unimax.yaml
  python train.py model=qwen2_0.5b data=corpus_unimax   # the command mix prints: a model the tokenizer fits
"""


def _csv(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def _reader_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", help="files, directories (recursive) or quoted globs; .jsonl/.parquet/.txt, optionally .gz/.zst")
    p.add_argument("--format", choices=("jsonl", "parquet", "text"), help="record format (default: from each file's extension)")
    p.add_argument("--text-field", default="text", help="JSON field / Parquet column holding the text (default: text)")
    p.add_argument("--lang-field", default="lang", help="field with the language code; '' to always detect (default: lang)")
    p.add_argument("--source-field", default="source", help="field naming the source; absent: the file name (default: source)")
    p.add_argument("--text-unit", choices=("paragraph", "line", "file"), default="paragraph",
                   help="plain text: what one document is (default: paragraph, i.e. blank-line separated)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m data_pipeline", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare", help="raw text -> .bin/.idx per language + manifest.parquet",
                       description="Read, clean, tag, tokenize and write megatron indexed datasets (resumable).")
    _reader_args(p)
    p.add_argument("--output", "-o", required=True, help="output folder (datasets, manifest.parquet, rejects.jsonl, shards/)")
    p.add_argument("--tokenizer", required=True,
                   help="qwen2, qwen2.5, qwen3, qwen3.5 or qwen3.6 (built offline), a Hugging Face tokenizer.json, "
                        "or a folder holding one")
    p.add_argument("--engine", choices=("auto", "fastokens", "gigatoken", "tokenizers"), default="auto",
                   help="tokenizer engine (default auto: the fastest whose ids equal HF tokenizers' on a probe set)")
    p.add_argument("--group-by", choices=("lang", "source"), default="lang", help="one dataset per language or per source")
    p.add_argument("--no-nfc", action="store_true", help="skip Unicode NFC normalisation")
    p.add_argument("--keep-control", action="store_true", help="keep control characters (default: strip all but tab/newline)")
    p.add_argument("--no-detect", action="store_true", help="records without a language field get 'unknown' instead of detection")
    p.add_argument("--detect-chars", type=int, default=2000,
                   help="characters at the start of a document that language detection reads (default 2000; bench/langid.py measures the trade-off)")
    p.add_argument("--languages", type=_csv, default=(), help="keep only these languages, e.g. en,zh,de (others counted as language_filtered)")
    p.add_argument("--dedup", action="store_true", help="drop exact duplicates (64-bit content hash; ~70 B of memory per unique document)")
    p.add_argument("--min-chars", type=int, default=1, help="drop shorter documents (after cleaning)")
    p.add_argument("--max-chars", type=int, default=0, help="drop longer documents; 0: no limit")
    _scale_args(p)
    p.add_argument("--workers", type=int, default=0,
                   help="processes that parse and clean (default 0: one per core when detecting languages or filtering quality, "
                        "else a thread of this process beside the tokenizer)")
    p.add_argument("--clean-workers", type=int, dest="workers", help=argparse.SUPPRESS)  # its former name
    p.add_argument("--batch-docs", type=int, default=256,
                   help="records per task, a worker's unit of work (at most 1 MiB of input; default 256)")
    p.add_argument("--rejects-log-limit", type=int, default=1000, help="logged rejects per file and reason (all are counted)")
    p.add_argument("--delete-shards", action="store_true", help="delete OUT/shards after merging (a later change of inputs redoes every file)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON line instead of a table")

    p = sub.add_parser("plan", help="the input files and MB each of N prepare tasks gets",
                       description="Check prepare's arguments, then print the input files and MB each of NUM_TASKS "
                                   "`prepare --num-tasks NUM_TASKS` tasks gets, and `output: OUT`, `near_dedup: 0|1` "
                                   "(what slurm/prepare_data.sh submits).")
    p.add_argument("num_tasks", type=int, metavar="NUM_TASKS", help="tasks of the Slurm array")
    p.add_argument("prepare_args", nargs=argparse.REMAINDER, metavar="PREPARE_ARGS",
                   help="prepare's arguments, as the tasks will get them (inputs, --output, ...)")

    p = sub.add_parser("buckets", help="near-dedup buckets stage of a multi-task run (optional: merge does what is left)",
                       description="Hash this task's LSH bands of every shard's MinHash signatures into candidate pairs.")
    p.add_argument("output", help="the --output folder of the prepare tasks")
    _task_args(p)
    p = sub.add_parser("merge", help="merge the shards of all prepare tasks into the final datasets + manifest",
                       description="Check every task's shards, drop duplicates across files and near-duplicates, write "
                                   "the datasets, rejects.jsonl and manifest.parquet (byte-identical to a one-machine run).")
    p.add_argument("output", help="the --output folder of the prepare tasks")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("stats", help="print a manifest's table", description="Per-language statistics of a prepared corpus.")
    p.add_argument("manifest", help="OUT/manifest.parquet written by prepare")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("mix", help="blend weights for a token budget -> data config",
                       description="Blend weights over a manifest's datasets; writes the Hydra data config train.py reads.")
    p.add_argument("manifest", help="OUT/manifest.parquet written by prepare")
    p.add_argument("--budget", required=True, help="training tokens, e.g. 20B, 500M, 1e9")
    p.add_argument("--method", choices=("natural", "temperature", "unimax", "explicit"), default="natural")
    p.add_argument("--alpha", type=float, default=0.3, help="temperature: p ∝ n^alpha (default 0.3, as mT5)")
    p.add_argument("--max-epochs", type=float, default=4.0, help="unimax: cap on epochs per dataset (default 4)")
    p.add_argument("--weights", default=None, help="explicit: NAME=WEIGHT,... e.g. en=0.5,zh-cn=0.3,de=0.2")
    p.add_argument("--seq-length", type=int, default=None, help="also set data.seq_length")
    p.add_argument("--out", help="write the data config YAML here, e.g. conf/data/my_mix.yaml")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("tokenizer", help="write a Qwen tokenizer directory transformers loads",
                       description="Write tokenizer.json, vocab.json, merges.txt and tokenizer_config.json of a Qwen "
                                   "model, rebuilt from the bundled Qwen BPE ranks (no network).")
    p.add_argument("name", choices=("qwen2", "qwen2.5", "qwen3", "qwen3.5", "qwen3.6"),
                   help="qwen2: 151,646 ids; qwen2.5: 151,665; qwen3: 151,669; qwen3.5 (= qwen3.6): 248,077")
    p.add_argument("--output", "-o", required=True, help="folder to write")

    p = sub.add_parser("train-tokenizer", help="train a small Qwen2-style byte-level BPE",
                       description="Train a byte-level BPE with Qwen2's NFC normaliser, pre-tokenisation regex and special tokens.")
    _reader_args(p)
    p.add_argument("--output", "-o", required=True, help="folder for tokenizer.json")
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument("--max-docs", type=int, default=0, help="train on at most this many documents; 0: all")
    return parser


def _task_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--num-tasks", type=int, default=None, help="tasks sharing the run (default: $SLURM_ARRAY_TASK_COUNT, else 1)")
    p.add_argument("--task-index", type=int, default=None,
                   help="this task, 0..N-1 (default: $SLURM_ARRAY_TASK_ID, else 0)")


def _scale_args(p: argparse.ArgumentParser) -> None:
    """Issue 17: near-duplicates, quality filters, Slurm array tasks (neardedup.py, quality.py, tasks.py)."""
    from data_pipeline.neardedup import NearDedupConfig
    from data_pipeline.quality import FILTERS, Thresholds

    p.add_argument("--near-dedup", action="store_true",
                   help="drop near-duplicates (MinHash LSH over word/character 5-grams; the first in input order is kept)")
    p.add_argument("--near-dedup-threshold", type=float, default=NearDedupConfig.threshold,
                   help=f"estimated Jaccard similarity of near-duplicates (default {NearDedupConfig.threshold})")
    p.add_argument("--quality", type=_csv, default=(),
                   help=f"quality filters, comma-separated: {','.join(FILTERS)} or all (default: none)")
    p.add_argument("--max-non-letter", type=float, default=Thresholds.max_non_letter_frac,
                   help=f"non_letter filter: the largest fraction of non-letter characters (default {Thresholds.max_non_letter_frac}; "
                        "+0.1 for languages without spaces)")
    _task_args(p)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("megatron").setLevel(logging.WARNING)  # its per-file index loading chatter
    warnings.filterwarnings("ignore", message=".*Transformer Engine.*")
    warnings.filterwarnings("ignore", message=".*Apex is not installed.*")
    try:
        commands = {"prepare": _prepare, "plan": _plan, "buckets": _buckets, "merge": _merge, "stats": _stats, "mix": _mix, "tokenizer": _tokenizer, "train-tokenizer": _train_tokenizer}
        return commands[args.command](args)
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _prepare(args: argparse.Namespace) -> int:
    from data_pipeline.clean import CleanConfig
    from data_pipeline.manifest import print_summary
    from data_pipeline.neardedup import NearDedupConfig
    from data_pipeline.prepare import PrepareConfig, prepare
    from data_pipeline.quality import QualityConfig, Thresholds, parse_filters
    from data_pipeline.run_config import TaskSplit
    from data_pipeline.tokenizer import TextTokenizer

    config = PrepareConfig(
        inputs=tuple(args.inputs), output=args.output, tokenizer=args.tokenizer, text_field=args.text_field,
        lang_field=args.lang_field or None, source_field=args.source_field or None, text_unit=args.text_unit,
        format=args.format, group_by=args.group_by, batch_docs=args.batch_docs, workers=args.workers, engine=args.engine,
        rejects_log_limit=args.rejects_log_limit, keep_shards=not args.delete_shards, progress=not args.no_progress,
        clean=CleanConfig(
            normalize=None if args.no_nfc else "NFC", strip_control=not args.keep_control,
            detect_language=not args.no_detect, detect_chars=args.detect_chars, languages=args.languages, dedup=args.dedup,
            min_chars=args.min_chars, max_chars=args.max_chars,
            quality=QualityConfig(parse_filters(",".join(args.quality)), Thresholds(max_non_letter_frac=args.max_non_letter))
            if args.quality else None,
        ),
        near_dedup=NearDedupConfig(threshold=args.near_dedup_threshold) if args.near_dedup else None,
        tasks=TaskSplit.from_env(args.num_tasks, args.task_index),
    )
    tokenizer = TextTokenizer(config.tokenizer, engine=config.engine)
    t0, cpu0 = time.perf_counter(), sum(os.times()[:4])  # CPU of this process and its worker processes (reaped at the end of the run)
    manifest = prepare(config, tokenizer)
    dt = time.perf_counter() - t0  # the work: reading to manifest, after start-up (imports, tokenizer)
    if args.json:
        print(json.dumps({**manifest.summary(), "engine": tokenizer.engine, "seconds": round(dt, 3),
                          "cpu_seconds": round(sum(os.times()[:4]) - cpu0, 3)}, ensure_ascii=False))
    else:
        print_summary(manifest)
        print(f"{manifest.total('bytes') / 1e6 / dt:.2f} MB/s, {manifest.total('tokens') / dt:,.0f} tokens/s over {dt:.1f} s "
              f"(0 if every shard was already done; tokenizer engine {tokenizer.engine}); "
              f"rejects log: {Path(args.output) / 'rejects.jsonl'}")
    return 0


def _plan(args: argparse.Namespace) -> int:
    from data_pipeline.tasks import print_plan

    prepare = build_parser().parse_args(["prepare", *args.prepare_args])  # exits 2 naming a bad argument, as prepare does
    print_plan(args.num_tasks, prepare.inputs, prepare.output, prepare.near_dedup_threshold if prepare.near_dedup else None)
    return 0


def _buckets(args: argparse.Namespace) -> int:
    from data_pipeline.run_config import TaskSplit
    from data_pipeline.tasks import buckets

    split = TaskSplit.from_env(args.num_tasks, args.task_index)
    written = buckets(Path(args.output), split)
    print(f"task {split.task_index} of {split.num_tasks}: {len(written)} near-dedup band(s) written to {Path(args.output) / 'neardedup'}")
    return 0


def _merge(args: argparse.Namespace) -> int:
    from data_pipeline.manifest import print_summary
    from data_pipeline.tasks import merge

    t0 = time.perf_counter()
    manifest = merge(Path(args.output))
    if args.json:
        print(json.dumps({**manifest.summary(), "seconds": round(time.perf_counter() - t0, 3)}, ensure_ascii=False))
    else:
        print_summary(manifest)
    return 0


def _stats(args: argparse.Namespace) -> int:
    from data_pipeline.manifest import Manifest, print_summary

    manifest = Manifest.read(args.manifest)
    if args.json:
        print(json.dumps(manifest.summary(), ensure_ascii=False))
    else:
        print_summary(manifest)
    return 0


def _mix(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from data_pipeline.manifest import Manifest
    from data_pipeline.mixture import (
        compute_mixture, parse_tokens, parse_weights, run_folder, train_command, write_data_config,
    )

    manifest = Manifest.read(args.manifest)
    mixture = compute_mixture(
        manifest, parse_tokens(args.budget), args.method, alpha=args.alpha, max_epochs=args.max_epochs,
        weights=parse_weights(args.weights) if args.weights else None,
    )
    if args.out:
        write_data_config(args.out, manifest, mixture, args.seq_length)
    command = train_command(args.out, manifest) if args.out else None
    if args.json:
        print(json.dumps({**mixture.as_dict(), "out": args.out, "train": command}, ensure_ascii=False))
        return 0
    table = Table(title=f"{mixture.method} mixture, budget {mixture.budget:,} tokens")
    for name in ("dataset", "tokens", "share", "epochs"):
        table.add_column(name, justify="left" if name == "dataset" else "right")
    epochs = mixture.epochs()
    for g, w in mixture.weights.items():
        table.add_row(g, f"{mixture.tokens[g]:,}", f"{w:.4f}", f"{epochs[g]:.3f}")
    Console().print(table)
    if args.out:
        out = Path(args.out).resolve()
        where = "" if out.parent.name == "data" and out.parent.parent.name == "conf" else ", once the file is in conf/data/"
        print(f"wrote {args.out}; train on it (a new run in {run_folder(out, manifest)}{where}):\n  {command}")
    return 0


def _tokenizer(args: argparse.Namespace) -> int:
    from data_pipeline.qwen import write_tokenizer_dir

    out = write_tokenizer_dir(args.name, args.output)
    print(f"wrote the {args.name} tokenizer to {out} (tokenizer.json, vocab.json, merges.txt, tokenizer_config.json)")
    return 0


def _train_tokenizer(args: argparse.Namespace) -> int:
    from data_pipeline.clean import CleanConfig, Cleaner
    from data_pipeline.readers import Reader, Rejects, expand_inputs
    from data_pipeline.tokenizer import train_bpe

    files = expand_inputs(args.inputs)
    reader = Reader(args.text_field, args.lang_field or None, args.source_field or None, args.text_unit, args.format)
    cleaner, rejects = Cleaner(CleanConfig(detect_language=False)), Rejects()
    count = [0]

    def texts():
        for f in files:
            for record in reader.read(f, rejects):
                cleaned = cleaner(record, rejects)
                if cleaned is not None:
                    count[0] += 1
                    yield cleaned.text
                    if args.max_docs and count[0] >= args.max_docs:
                        return

    path = train_bpe(texts(), args.vocab_size, args.output)
    print(f"trained a {args.vocab_size}-token byte-level BPE on {count[0]:,} documents "
          f"({rejects.total:,} dropped: {dict(rejects.by_reason())}) -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
