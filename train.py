"""Pretrain a Qwen model: ``python train.py [overrides]`` or ``torchrun --nproc_per_node N train.py ...``.

Configuration is composed by Hydra from conf/ (see conf/config.yaml); the schema and its
validation live in qwenpt/config.py, the loop in qwenpt/training/. A run the guard halts
(non-finite loss or grad norm, a loss spike) exits with code 3 and one message, no traceback; a
configuration or input the run cannot use, with code 2 and one message.
"""

import logging
import sys

import hydra
from omegaconf import DictConfig

from qwenpt.config import register

register()

HALTED_EXIT_CODE = 3
CONFIG_EXIT_CODE = 2


@hydra.main(version_base=None, config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from qwenpt.config import ConfigError
    from qwenpt.training import run
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
    main()
