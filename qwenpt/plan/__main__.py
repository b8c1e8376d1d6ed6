"""``python -m qwenpt.plan [Hydra overrides] [--gpus N] [--gpu H100] [--mfu 0.4] [--check-megatron]``

Composes the run configuration exactly as train.py does (same conf/, same overrides, in any order
with the options), validates it for N GPUs, and prints per-GPU memory for every pipeline stage and
the step time at the given MFU. Exits 1 when the layout is invalid or does not fit, 2 when an
override names no setting. The last line of stdout is JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir

from qwenpt.config import ConfigError, check_override_keys, register
from qwenpt.plan.planner import Gpu, make_plan, render

CONF = Path(__file__).resolve().parents[2] / "conf"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qwenpt.plan", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for train.py (model=qwen2_72b parallel=...)")
    parser.add_argument("--gpus", type=int, default=None, help="world size (default: the layout's model-parallel size)")
    parser.add_argument("--gpu", default="H100", help="GPU kind for memory and peak FLOP/s (H100, H200, A100, ...)")
    parser.add_argument("--gpu-memory-gib", type=float, default=None)
    parser.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak per GPU")
    parser.add_argument("--mfu", type=float, default=0.4, help="model FLOPs utilisation for the step time (0-1)")
    parser.add_argument("--headroom", type=float, default=0.1, help="share of GPU memory kept free (default 0.1)")
    parser.add_argument("--check-megatron", action="store_true",
                        help="also build megatron-core's model on the meta device for each pipeline stage and "
                             "compare its parameter count with the plan's")
    args = parser.parse_intermixed_args(argv)  # overrides before, between or after the options
    try:
        check_override_keys(args.overrides, CONF)
    except ConfigError as e:
        print(f"error: {e}")
        print(json.dumps({"error": str(e)}))
        return 2

    register()
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose("config", overrides=args.overrides)
    p = cfg.parallel
    world = args.gpus or p.tensor_model_parallel_size * p.pipeline_model_parallel_size * p.context_parallel_size
    try:
        gpu = Gpu.named(args.gpu, args.gpu_memory_gib, args.peak_tflops)
        plan = make_plan(cfg, world, gpu, mfu=args.mfu, headroom=args.headroom)
    except ConfigError as e:
        print(f"invalid layout: {e}")
        print(json.dumps({"fits": False, "problems": [str(e)]}))
        return 1
    print(render(plan, cfg))
    summary = plan.summary()
    if args.check_megatron:
        from qwenpt.plan.meta import real_stage_params

        checks = []
        for stage in plan.stages:
            real = real_stage_params(cfg.model, p, world, stage.pp_rank)
            checks.append({"pp_rank": stage.pp_rank, "plan": stage.params.total, "megatron": real.total})
            print(f"stage {stage.pp_rank}: megatron-core builds {real.total:,} parameters per GPU, "
                  f"the plan counts {stage.params.total:,}" + ("" if real == stage.params else "  MISMATCH"))
        summary["megatron_check"] = checks
    print(json.dumps(summary))
    return 0 if plan.fits else 1


if __name__ == "__main__":
    sys.exit(main())
