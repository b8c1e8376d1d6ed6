"""Pretrain a Qwen model: ``python train.py [overrides]`` or ``torchrun --nproc_per_node N train.py ...``.

Configuration is composed by Hydra from conf/ (see conf/config.yaml); the schema and its
validation live in qwenpt/config.py, the loop in qwenpt/training/.
"""

import hydra
from omegaconf import DictConfig

from qwenpt.config import register

register()


@hydra.main(version_base=None, config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from qwenpt.training import run

    run(cfg)


if __name__ == "__main__":
    main()
