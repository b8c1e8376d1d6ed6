"""Training: the loop (megatron-core schedules), optimizer and LR schedule."""

from qwenpt.training.loop import Trainer, run

__all__ = ["Trainer", "run"]
