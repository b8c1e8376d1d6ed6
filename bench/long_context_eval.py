"""Loss per position beyond the training length: plain RoPE, YaRN and Dual Chunk Attention.

    python bench/long_context_eval.py [--runs runs] [--factors 4 8] [--tokens 16384]

The two models of the CPU long-context recipe (``python train.py +experiment=long_context_tiny``, run
first if its checkpoints are missing): the tiny model trained at 256 tokens (RoPE base 1e4, stage 1)
and the same extended to 2048 tokens (base 1e6, stage 2). Each is evaluated at its training length T
and at ``--factors`` x T, with

* plain RoPE (the model as trained: positions past T are new to it),
* YaRN (``model.rope_scaling``: factor = length / T, original_max_position_embeddings = T),
* DCA (``model.dual_chunk_attention``: chunk_size = T, local_size = T / 8: no distance beyond T),

and the mean token loss is reported per 1/8 of the sequence (qwenpt/eval_positions.py's buckets), so
the buckets past T show what each method does with positions the model never trained on.

Text: the bundled sample's documents (all languages, one language after another, each document once,
EODs kept), cut into consecutive windows, about ``--tokens`` tokens per cell. The sample holds ~130K
tokens and its validation split ~6K, too few for 16K windows, so most of this text was in training:
the table measures how loss depends on position and context, not generalisation.
Prints a table and writes bench/results/long_context_eval.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
BUCKETS = 8


def ensure_runs(runs: Path) -> dict[str, Path]:
    stages = {"stage 1 (256)": runs / "long_context_tiny_stage1", "stage 2 (2048)": runs / "long_context_tiny"}
    if not all((p / "checkpoints" / "latest").is_file() for p in stages.values()):
        print("training the recipe first: python train.py +experiment=long_context_tiny", flush=True)
        env = dict(os.environ, QWENPT_RUNS=str(runs))
        subprocess.run([sys.executable, str(ROOT / "train.py"), "+experiment=long_context_tiny", "logging.progress=false"],
                       check=True, env=env, cwd=ROOT)
    return stages


def text_tokens(cache_dir: str) -> torch.Tensor:
    """Every document of the bundled sample, language by language, as one token stream."""
    import numpy as np
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    from qwenpt.config import DataConfig
    from qwenpt.data import load_tokenizer, resolve_blend

    data = DataConfig(cache_dir=cache_dir)
    blend = resolve_blend(data, load_tokenizer(data, 8192))
    docs = []
    for prefix in blend.prefixes:
        ds = IndexedDataset(prefix)
        docs += [np.asarray(ds[i], dtype=np.int64) for i in range(len(ds))]
    return torch.from_numpy(np.concatenate(docs))


def variants(m, train_len: int, length: int) -> dict[str, object]:
    from qwenpt.config import DualChunkConfig, RopeScalingConfig

    out = {"plain RoPE": m}
    if length > train_len:
        out["YaRN"] = dataclasses.replace(m, rope_scaling=RopeScalingConfig(
            type="yarn", factor=length / train_len, original_max_position_embeddings=train_len))
        out["DCA"] = dataclasses.replace(m, dual_chunk_attention=DualChunkConfig(
            chunk_size=train_len, local_size=train_len // 8))
    return out


@torch.no_grad()
def bucket_losses(m, checkpoint_dir: Path, tokens: torch.Tensor, length: int, windows: int) -> tuple[list[float], float]:
    from qwenpt import checkpoint, eval_positions
    from qwenpt.config import ParallelConfig
    from qwenpt.models import build_model

    model = build_model(dataclasses.replace(m, max_position_embeddings=max(length, m.max_position_embeddings)),
                        ParallelConfig(), perform_initialization=False)
    checkpoint.load_model(checkpoint_dir, model)
    model[0].eval()
    total = torch.zeros(2 * BUCKETS, dtype=torch.float64)
    positions = torch.arange(length)[None]
    for w in range(windows):
        chunk = tokens[w * (length + 1):(w + 1) * (length + 1)]
        losses = model[0](chunk[None, :-1], positions, None, labels=chunk[None, 1:])
        total += eval_positions.bucket_sums(losses, torch.ones_like(losses), positions, BUCKETS, length).double()
    means = eval_positions.bucket_means(total)
    return means, float(total[:BUCKETS].sum() / total[BUCKETS:].sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default=os.environ.get("QWENPT_RUNS", "runs"))
    parser.add_argument("--factors", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--tokens", type=int, default=16384, help="tokens evaluated per cell (at least one window)")
    parser.add_argument("--cache-dir", default="~/.cache/qwenpt")
    args = parser.parse_args()

    from qwenpt import distributed
    from qwenpt.config import ModelConfig, ParallelConfig

    torch.set_num_threads(os.cpu_count() or 1)
    distributed.initialize(ParallelConfig(), seed=0)
    stages = ensure_runs(Path(args.runs))
    tokens = text_tokens(args.cache_dir)
    rows = []
    print(f"{len(tokens):,} tokens of text; loss per 1/{BUCKETS} of the sequence\n")
    header = f"{'model':<16}{'method':<12}{'length':>7}  " + "".join(f"{f'b{i}':>6}" for i in range(BUCKETS)) + f"{'mean':>7}"
    print(header)
    for stage, run in stages.items():
        saved = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
        m = ModelConfig(**saved["model"])
        train_len = int(saved["data"]["seq_length"])
        for length in [train_len] + [f * train_len for f in args.factors]:
            windows = max(1, args.tokens // length)
            if windows * (length + 1) > len(tokens):
                raise SystemExit(f"the text has {len(tokens)} tokens, fewer than {windows} windows of {length}")
            for method, variant in variants(m, train_len, length).items():
                start = time.perf_counter()
                means, mean = bucket_losses(variant, run / "checkpoints", tokens, length, windows)
                rows.append({"model": stage, "train_length": train_len, "rope_theta": m.rope_theta, "method": method,
                             "length": length, "windows": windows, "bucket_loss": means, "mean_loss": mean,
                             "seconds": round(time.perf_counter() - start, 1)})
                print(f"{stage:<16}{method:<12}{length:>7}  " + "".join(f"{v:>6.2f}" for v in means) + f"{mean:>7.3f}",
                      flush=True)
    out = ROOT / "bench" / "results" / "long_context_eval.json"
    out.write_text(json.dumps({"buckets": BUCKETS, "tokens_per_cell": args.tokens, "text_tokens": len(tokens),
                               "rows": rows}, indent=1) + "\n")
    print(f"\nwrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
