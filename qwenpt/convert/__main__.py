"""``python -m qwenpt.convert import|export|verify`` — Hugging Face Qwen checkpoints ⇄ megatron-core.

  import --hf DIR --out CKPT [--name N] [--family F] [--dtype D] [--overwrite]   HF directory -> dist checkpoint
  export --ckpt CKPT --out DIR [--tokenizer DIR|NAME] [--dtype D] [--overwrite]  any qwenpt checkpoint -> HF directory
  verify --hf DIR --ckpt CKPT [--tp N] [--pp N] [--ep N] [--tolerance T]          max |logit diff| (torchrun for TP/PP > 1)

--out must be new or empty, or (with --overwrite) an earlier output of the same command, which is
then replaced whole; anything else there is refused and left untouched, as is an --out that is,
holds or lies inside the input. The output is written beside --out and renamed into place when
complete (marked by qwenpt_output.json), so an interrupted run leaves --out as it was.
The last line of stdout is JSON; errors in the input or --out exit 2, verify exits 1 above the tolerance.
Needs the hf extra (safetensors, transformers): pip install 'qwenpt[hf]'.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from qwenpt.config import ConfigError, ParallelConfig


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m qwenpt.convert", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    imp = sub.add_parser("import", help="Hugging Face directory -> megatron-core dist checkpoint")
    imp.add_argument("--hf", required=True)
    imp.add_argument("--out", required=True, help="a new or empty folder (or, with --overwrite, an earlier import)")
    imp.add_argument("--name", default=None, help="model name recorded in the checkpoint (default: the directory's)")
    imp.add_argument("--family", default=None, help="qwen, qwen1.5, qwen2, qwen2.5, qwen3, qwen3-next, qwen3.5 or qwen3.6 (default from config.json; Qwen3.6 checkpoints say qwen3_5: pass qwen3.6 to record it)")
    imp.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: config.json's torch_dtype)")
    imp.add_argument("--overwrite", action="store_true",
                     help="replace --out if it holds an earlier import (never a folder qwenpt did not write)")
    exp = sub.add_parser("export", help="qwenpt checkpoint (any layout) -> Hugging Face directory")
    exp.add_argument("--ckpt", required=True, help="a checkpoint directory, or a run's checkpoints/ (its latest)")
    exp.add_argument("--out", required=True, help="a new or empty folder (or, with --overwrite, an earlier export)")
    exp.add_argument("--tokenizer", default=None, help="directory whose tokenizer files (and v1 remote code) to copy, or a Qwen tokenizer name: qwen2, qwen2.5, qwen3")
    exp.add_argument("--dtype", default=None, help="default: the dtype the checkpoint stores its weights in")
    exp.add_argument("--max-shard-gib", type=float, default=5.0)
    exp.add_argument("--overwrite", action="store_true",
                     help="replace --out whole if it holds an earlier export (never a folder qwenpt did not write)")
    ver = sub.add_parser("verify", help="compare logits of the HF model and the checkpoint")
    ver.add_argument("--hf", required=True)
    ver.add_argument("--ckpt", required=True)
    ver.add_argument("--tp", type=int, default=1)
    ver.add_argument("--pp", type=int, default=1)
    ver.add_argument("--ep", type=int, default=1, help="expert parallel size (MoE)")
    ver.add_argument("--tolerance", type=float, default=1e-4)
    ver.add_argument("--seq", type=int, default=32)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)

    try:
        from qwenpt.convert import hf  # MissingExtra (a ConfigError) when safetensors is not installed

        if args.command == "import":
            result = hf.import_hf(args.hf, args.out, name=args.name, family=args.family, dtype=args.dtype,
                                  overwrite=args.overwrite)
        elif args.command == "export":
            result = hf.export_hf(args.ckpt, args.out, tokenizer=args.tokenizer, dtype=args.dtype,
                                  max_shard_gib=args.max_shard_gib, overwrite=args.overwrite)
        else:
            parallel = ParallelConfig(tensor_model_parallel_size=args.tp, pipeline_model_parallel_size=args.pp,
                                      expert_model_parallel_size=args.ep, sequence_parallel=args.tp > 1)
            result = hf.verify(args.hf, args.ckpt, parallel, seq=args.seq)
            if result is None:  # not the rank that compares
                return 0
            result["tolerance"] = args.tolerance
            result["ok"] = result["max_abs_diff"] <= args.tolerance
            print(f"max |logit difference| {result['max_abs_diff']:.3e} (mean {result['mean_abs_diff']:.3e}, "
                  f"logits up to {result['logit_scale']:.2f}) over {result['tokens']} tokens at TP {args.tp} x PP {args.pp} x EP {args.ep}: "
                  + ("OK" if result["ok"] else f"ABOVE the tolerance {args.tolerance:g}"))
    except ConfigError as e:
        print(f"error: {e}")
        print(json.dumps({"error": str(e)}))
        return 2
    print(json.dumps(result, default=str))
    return 0 if result.get("ok", True) else 1


if __name__ == "__main__":
    sys.exit(main())
