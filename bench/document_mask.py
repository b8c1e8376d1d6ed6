"""CPU cost of document masking (data.document_mask): tokens/s and peak memory, masking on vs off.

    python bench/document_mask.py [--seq 2048] [--steps 3]

Two measurements, each case in its own process (peak RSS is per process):

* model: the tiny model (conf/model/tiny.yaml), one micro-batch of ``--seq`` tokens, forward + backward,
  without masking (one causal sequence) and with it (the packed "THD" path: one fused attention call
  per document, qwenpt/models/attention.py);
* attention: one attention layer of Qwen2-7B's shape (28 query heads, 4 KV heads, head width 128),
  forward + backward, at ``--seq`` and 4 x ``--seq``: causal without masking and per-document calls;
  at ``--seq`` also the dense alternative, a block-diagonal causal [s, s] boolean mask handed to the
  same SDPA kernel (its cost grows with s^2 whatever the documents: left out at 4 x seq).

Documents: lengths drawn from a log-normal with a median of 300 tokens (seed 0), cut at the sequence
end. Prints a table and writes bench/results/document_mask.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def doc_lengths(seq: int) -> list[int]:
    import numpy as np

    rng = np.random.default_rng(0)
    out, left = [], seq
    while left > 0:
        n = min(left, max(2, int(rng.lognormal(np.log(300), 1.0))))
        out.append(n)
        left -= n
    return out


def _cu(seq: int):
    import torch

    return torch.tensor([0, *torch.tensor(doc_lengths(seq)).cumsum(0).tolist()], dtype=torch.int32)


def model_case(seq: int, masked: bool, steps: int) -> dict:
    import torch
    import yaml

    from qwenpt import distributed
    from qwenpt.config import ModelConfig, ParallelConfig
    from qwenpt.models import build_model
    from qwenpt.packing import packed_seq_params

    distributed.initialize(ParallelConfig(), seed=0)
    m = ModelConfig(**yaml.safe_load((ROOT / "conf" / "model" / "tiny.yaml").read_text()))
    model = build_model(m, ParallelConfig())[0]
    tokens = torch.randint(0, m.vocab_size, (1, seq))
    cu = _cu(seq)
    position_ids = torch.cat([torch.arange(int(b - a)) for a, b in zip(cu[:-1], cu[1:])]).unsqueeze(0)
    params = packed_seq_params(position_ids) if masked else None
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        loss = model(tokens, position_ids, None, labels=tokens, packed_seq_params=params)
        loss.sum().backward()
        times.append(time.perf_counter() - start)
    step = sum(times[1:]) / steps
    return {"documents": len(cu) - 1, "step_s": step, "tokens_per_s": seq / step}


def attention_case(seq: int, kind: str, steps: int) -> dict:
    import torch
    import torch.nn.functional as F

    heads, groups, dim = 28, 4, 128
    q = torch.randn(1, heads, seq, dim, requires_grad=True)
    k = torch.randn(1, groups, seq, dim, requires_grad=True)
    v = torch.randn(1, groups, seq, dim, requires_grad=True)
    bounds = _cu(seq).tolist()
    mask = None
    if kind == "dense_mask":
        doc = torch.repeat_interleave(torch.arange(len(bounds) - 1), torch.diff(torch.tensor(bounds)))
        mask = (doc[:, None] == doc[None, :]) & torch.ones(seq, seq, dtype=torch.bool).tril()

    def run() -> torch.Tensor:
        if kind == "causal":
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        if kind == "dense_mask":
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
        return torch.cat([F.scaled_dot_product_attention(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], is_causal=True,
                                                         enable_gqa=True) for a, b in zip(bounds[:-1], bounds[1:])], 2)

    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        run().sum().backward()
        times.append(time.perf_counter() - start)
    step = sum(times[1:]) / steps
    return {"documents": len(bounds) - 1, "step_s": step, "tokens_per_s": seq / step}


def child(args: argparse.Namespace) -> None:
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    if args.level == "model":
        result = model_case(args.seq, args.kind == "per_document", args.steps)
    else:
        result = attention_case(args.seq, args.kind, args.steps)
    result["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(json.dumps(result))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--child", nargs=2, metavar=("LEVEL", "KIND"))
    args = ap.parse_args()
    if args.child:
        args.level, args.kind = args.child
        return child(args)
    cases = [("model", "causal", args.seq), ("model", "per_document", args.seq)]
    cases += [("attention", kind, args.seq) for kind in ("causal", "per_document", "dense_mask")]
    cases += [("attention", kind, 4 * args.seq) for kind in ("causal", "per_document")]
    rows = []
    out = ROOT / "bench" / "results" / "document_mask.json"
    for level, kind, seq in cases:
        proc = subprocess.run([sys.executable, __file__, "--child", level, kind, "--seq", str(seq), "--steps",
                               str(args.steps)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if proc.returncode != 0:
            raise SystemExit(proc.stdout[-3000:])
        row = {"level": level, "masking": kind, "seq": seq, **json.loads(proc.stdout.strip().splitlines()[-1])}
        rows.append(row)
        print(f"{level:9s} {kind:13s} seq {seq:6d}  {row['documents']:3d} docs  {row['tokens_per_s']:10,.0f} tokens/s  "
              f"step {row['step_s']:7.3f} s  peak RSS {row['peak_rss_gib']:.2f} GiB", flush=True)
        out.write_text(json.dumps({"steps": args.steps, "rows": rows}, indent=2) + "\n")  # after each case
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
