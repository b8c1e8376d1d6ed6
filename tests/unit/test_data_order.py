"""A resumed or longer run reads the data an uninterrupted run would (issue 29): the training sample order does
not depend on train.steps, runs sharing a cache start together, CPU threads are a setting, and a run's batches
can be written out (python -m qwenpt.batches dump)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from conftest import ROOT


def test_the_horizon_rule():
    """The index size: whole multiples of data.sample_horizon covering the run; a resumed run keeps its
    checkpoint's while it covers what the run needs, and says when it cannot."""
    from qwenpt.data import sample_horizon

    data = SimpleNamespace(sample_horizon=100, seq_length=256)
    assert sample_horizon(data, None, 250) == (300, None)
    assert sample_horizon(data, None, 300) == (300, None)
    assert sample_horizon(data, None, 120, saved=300) == (300, None)  # shorter than before: same order
    horizon, note = sample_horizon(data, None, 350, saved=300)
    assert horizon == 400 and "grows from 300 to 400 samples" in note and "data.sample_horizon of at least 350" in note


def test_a_checkpoint_from_before_the_horizon_keeps_the_index_its_run_read(tmp_path, monkeypatch):
    """Checkpoints saved before the horizon was recorded read an index built for train.steps x global batch."""
    from qwenpt import checkpoint

    monkeypatch.setattr(checkpoint, "progress", lambda path: {"step": 6, "consumed_samples": 96})
    (tmp_path / "run_config.yaml").write_text("train:\n  steps: 12\n  global_batch_size: 16\n")
    assert checkpoint.sample_horizon(tmp_path) == 192
    monkeypatch.setattr(checkpoint, "progress", lambda path: {"sample_horizon": 4096})
    assert checkpoint.sample_horizon(tmp_path) == 4096


def test_cpu_threads_is_a_validated_setting(tmp_path):
    from hydra import compose, initialize_config_dir

    from qwenpt.config import ConfigError, register
    from qwenpt.validation import validate

    register()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        for key, value, message in [("train.cpu_threads", 0, "train.cpu_threads must be a positive number"),
                                    ("data.sample_horizon", -5, "data.sample_horizon must be a positive number")]:
            cfg = compose("config", overrides=[f"{key}={value}"])
            with pytest.raises(ConfigError, match=message):
                validate(cfg, 1, check_files=False)
