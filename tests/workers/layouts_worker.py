"""Train several configurations one after another in one (torchrun) launch, for the layout-parity
tests: ``[torchrun --nproc_per_node N] tests/workers/layouts_worker.py OUT NAME=OVERRIDE,OVERRIDE ...``.

Each run is what ``train.py`` does (Hydra composes conf/ with the overrides, then
``qwenpt.training.run``) into OUT/NAME; sharing one launch saves the ~15 s of interpreter and
megatron-core start-up per configuration. megatron-core's parallel state is rebuilt for each.
"""

import logging
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir

from qwenpt.config import register
from qwenpt.training.loop import run

ROOT = Path(__file__).resolve().parents[2]


def main(out: str, specs: list[str]) -> None:
    register()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        for spec in specs:
            name, _, overrides = spec.partition("=")
            print(f"=== run {name}", flush=True)
            cfg = compose("config", overrides=[f"train.run_dir={out}/{name}", *filter(None, overrides.split(","))])
            run(cfg)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
