"""What qwenpt trusts when it loads and what it may touch when it writes (docs/trust.md): crafted pickles in each
checkpoint file never run; a folder qwenpt did not make is refused and left byte-identical; one trainer per run
folder; rotation never deletes the run's own checkpoint; metrics.jsonl survives partial and foreign lines; bad
numbers fail before anything is allocated; SIGTERM saves (tests/integration/test_train.py); a full disk says so."""

from __future__ import annotations


import pytest

from qwenpt.config import ConfigError
from qwenpt.validation import validate
from conftest import compose_cfg


@pytest.mark.parametrize("override,message", [
    ("data.seq_length=0", "data.seq_length must be a positive number of tokens, got 0"),
    ("train.eval_steps=0", "train.eval_steps must be a positive number of steps, got 0"),
    ("train.eval_interval=0", "train.eval_interval must be a positive number of steps, got 0"),
    ("logging.log_interval=0", "logging.log_interval must be a positive number of steps, got 0"),
    ("checkpoint.save_interval=-1", "checkpoint.save_interval must be a number of steps, or 0 for no periodic saves"),
    ("checkpoint.keep_last=-2", "checkpoint.keep_last must be a number of checkpoints, or 0 to keep all, got -2"),
    ("train.global_batch_size=0", "train.global_batch_size must be positive, got 0"),
])


def test_bad_numbers_are_refused_up_front(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate(compose_cfg(override))
