"""Run ``qwenpt.convert.hf.verify`` for several (HF dir, checkpoint) pairs in one torchrun launch:
``torchrun --nproc_per_node N tests/verify_worker.py TP PP HF CKPT [HF CKPT ...]``; prints one JSON
line per pair from the rank that compares."""

import json
import sys

from qwenpt.config import ParallelConfig
from qwenpt.convert.hf import verify


def main(tp: int, pp: int, pairs: list[str]) -> None:
    parallel = ParallelConfig(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp, sequence_parallel=tp > 1)
    for hf_dir, ckpt in zip(pairs[::2], pairs[1::2]):
        result = verify(hf_dir, ckpt, parallel)
        if result is not None:
            print("VERIFY " + json.dumps({"hf": hf_dir, **result}), flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:])
