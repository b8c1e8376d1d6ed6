"""Run ``qwenpt.convert.hf.verify`` for several (HF dir, checkpoint) pairs in one torchrun launch:
``torchrun --nproc_per_node N tests/workers/verify_worker.py [--ep EP] TP PP HF CKPT [HF CKPT ...]``; prints one JSON
line per pair from the rank that compares."""

import json
import sys

from qwenpt.config import ParallelConfig
from qwenpt.convert.hf import verify


def main(tp: int, pp: int, pairs: list[str], ep: int = 1) -> None:
    parallel = ParallelConfig(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp, sequence_parallel=tp > 1,
                              expert_model_parallel_size=ep)
    for hf_dir, ckpt in zip(pairs[::2], pairs[1::2]):
        result = verify(hf_dir, ckpt, parallel)
        if result is not None:
            print("VERIFY " + json.dumps({"hf": hf_dir, **result}), flush=True)


if __name__ == "__main__":
    args = sys.argv[1:]
    ep = 1
    if args[0] == "--ep":
        ep, args = int(args[1]), args[2:]
    main(int(args[0]), int(args[1]), args[2:], ep)
