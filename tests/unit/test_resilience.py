"""Failure handling, by fault injection on CPU: non-finite and spiking steps stop or skip as configured
with the last good checkpoint kept; damaged checkpoints are passed over and the resumed run equals an
uninterrupted one; a changed schedule or data on resume follows the documented rule; a hung rank dumps its
stack and exits; bad configs fail before anything is allocated."""

from __future__ import annotations

import json

import pytest

from qwenpt import checkpoint
from qwenpt.config import ConfigError
from qwenpt.validation import validate
from conftest import compose_cfg


def test_no_intact_checkpoint_stops_with_a_message(tmp_path):
    from qwenpt.training.resume import _decide

    root = tmp_path / "checkpoints"
    for step in (2, 4):
        d = root / f"step_{step:08d}"
        d.mkdir(parents=True)
        (d / "metadata.json").write_text("{}")
        (d / checkpoint.MANIFEST).write_text(json.dumps({"files": {"metadata.json": {"size": 2}, "common.pt": {"size": 10}}}))
    path, problems = checkpoint.find_resumable(root)
    assert path is None
    assert problems == [f"checkpoint {root}/step_00000004 is damaged: common.pt is missing",
                        f"checkpoint {root}/step_00000002 is damaged: common.pt is missing"]
    (root / "step_00000002" / "common.pt").write_bytes(b"0123456789")
    assert checkpoint.find_resumable(root) == (root / "step_00000002", problems[:1])
    (root / "step_00000002" / "common.pt").unlink()
    _, _, error, _ = _decide(compose_cfg(), root)
    assert error.startswith(f"checkpoint.resume: no intact checkpoint in {root}: checkpoint ")
    assert error.endswith("Move the damaged ones out of that folder to resume from an older one, or start a new run in "
                          "another folder (train.run_dir=<new>, with checkpoint.init_from=<a checkpoint> to keep its weights).")
    assert _decide(compose_cfg(), tmp_path / "empty") == (None, [], None, {})  # nothing there: start fresh


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["train.steps=30"], "optim.warmup_steps 30 must be at least 0 and less than train.steps 30"),
        (["optim=adamw_wsd", "train.steps=2100"],
         "optim.warmup_steps 2000 + the WSD decay (420 steps = optim.wsd_decay_fraction 0.2 x train.steps 2100) exceed"),
        (["+train.foo=1"], "train.foo is not a setting (a typo, or `+train.foo=...` adding a key the schema lacks)"),
        (["+train.guard.bar=1"], "train.guard.bar is not a setting"),
        (["train.guard.inject=loss@5"], "train.guard.inject 'loss@5' is not WHERE*FACTOR@STEPS[/RANK]"),
    ],
)


def test_bad_settings_are_refused_up_front(overrides, message):
    with pytest.raises(ConfigError) as err:
        validate(compose_cfg(*overrides))
    assert message in str(err.value)


def test_dataset_with_token_ids_beyond_the_vocabulary_is_refused(tmp_path):
    """Read from the .bin (chunked memmap max, then cached by path, size and mtime)."""
    import numpy as np
    import torch
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    from qwenpt.data import max_token_id

    prefix = tmp_path / "wide"
    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=np.int32)
    for doc in [[5, 6, 7]] * 20 + [[8, 9000, 3]]:  # enough documents for the default split's validation share
        builder.add_document(torch.tensor(doc), [len(doc)])
    builder.finalize(f"{prefix}.idx")
    cfg = compose_cfg(f"data.cache_dir={tmp_path / 'cache'}", f"+data.blend=[{{prefix: {prefix}, weight: 1.0}}]")
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert f"data.blend[0].prefix: {prefix} holds token id 9000, but model.vocab_size is 8192" in str(err.value)
    assert max_token_id(prefix, tmp_path / "cache") == 9000
    assert len(list((tmp_path / "cache" / "max_token_id").iterdir())) == 1
    validate(compose_cfg(f"data.cache_dir={tmp_path / 'cache'}", f"+data.blend=[{{prefix: {prefix}, weight: 1.0}}]",
                         "model.vocab_size=9216"))  # a model with room for it passes


def test_a_checkpoint_is_never_written_from_non_finite_weights(megatron_world):
    import torch

    from qwenpt.training.guard import check_finite_parameters

    model = [torch.nn.Linear(3, 3)]
    assert check_finite_parameters(model)
    with torch.no_grad():
        model[0].weight[1, 1] = float("inf")
    assert not check_finite_parameters(model)


def test_checksums_catch_a_same_size_alteration(tmp_path):
    ckpt = tmp_path / "step_00000002"
    ckpt.mkdir()
    (ckpt / "metadata.json").write_text("{}")
    (ckpt / "__0_0.distcp").write_bytes(b"weights")
    checkpoint._write_manifest(ckpt, checksums=True)
    assert checkpoint.check(ckpt) is None
    (ckpt / "__0_0.distcp").write_bytes(b"weighTs")
    assert checkpoint.check(ckpt) == "__0_0.distcp has changed since it was saved (SHA-256 differs)"
    (ckpt / "metadata.json").write_text("{")
    checkpoint._write_manifest(ckpt, checksums=False)
    assert checkpoint.check(ckpt).startswith("metadata.json is unreadable (")
