"""Pretrain a Qwen model: ``python train.py [overrides]`` or ``torchrun --nproc_per_node N train.py ...``.

Configuration is composed by Hydra from conf/ (see conf/config.yaml); the schema lives in
qwenpt/config.py, its validation in qwenpt/validation.py, the loop in qwenpt/training/. A run the guard halts
(non-finite loss or grad norm, a loss spike) exits with code 3 and one message, no traceback; a
configuration or input the run cannot use, with code 2 and one message.
"""

import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from qwenpt.config import ConfigError, check_override_keys, register

register()

HALTED_EXIT_CODE = 3
CONFIG_EXIT_CODE = 2
CONF = Path(__file__).resolve().parent / "conf"


@hydra.main(version_base=None, config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from qwenpt.training.loop import run
    from qwenpt.training.guard import TrainingHalted

    try:
        run(cfg)
    except TrainingHalted as halt:
        logging.getLogger("qwenpt").error("training halted: %s", halt)
        sys.exit(HALTED_EXIT_CODE)
    except ConfigError as err:  # the user's mistake: one message in their terms, no traceback
        logging.getLogger("qwenpt").error("%s", err)
        sys.exit(CONFIG_EXIT_CODE)


if __name__ == "__main__":
    try:  # a misspelt key: the closest settings, not Hydra's advice to add it with +key=
        check_override_keys(sys.argv[1:], CONF)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(CONFIG_EXIT_CODE)
    main()
