"""Tokenized indexed datasets hold exactly the tokenizer's ids plus one end-of-document per document."""

from __future__ import annotations


import pytest

from data_pipeline.indexed import write_indexed_dataset
from data_pipeline.tokenizer import TextTokenizer
from qwenpt.data import BUNDLED_TOKENIZER
from helpers.data import _data


# --- issue 28: what qwenpt loads runs no code, and no bad input hangs or lies ---------------------------------


def test_a_dataset_too_small_for_its_validation_split_is_refused_at_once(tmp_path):
    """6 documents, data.split 95,5,0: validation gets none, and megatron-core's index build would spin for
    ever after 'total number of documents: 6'. Refused by train.py's validation, before any model."""
    import time

    from conftest import run_train

    prefix = tmp_path / "small"
    write_indexed_dataset(prefix, [list(range(1, 30)) for _ in range(6)], vocab_size=8192)
    start = time.perf_counter()
    proc = run_train(tmp_path / "run", f"data.blend=[{{prefix:'{prefix}',weight:1}}]", "model=tiny",
                     "train.steps=2", "optim.warmup_steps=0", timeout=300)
    assert time.perf_counter() - start < 240
    assert proc.returncode != 0
    assert (f"data.blend[0].prefix: {prefix} holds 6 documents, of which data.split '95,5,0' gives the valid split 0; "
            "the valid split needs at least 11 documents") in proc.stdout, proc.stdout[-3000:]
    assert not (tmp_path / "run" / "checkpoints").exists()

    from qwenpt.config import ConfigError
    from qwenpt.data import Blend, build_datasets, dataset_config

    config = dataset_config(_data(tmp_path, "95,5,0"), TextTokenizer(BUNDLED_TOKENIZER), Blend([str(prefix)], [1.0], ["s"]), 1)
    with pytest.raises(ConfigError, match="holds 6 documents, of which data.split '95,5,0' gives the valid split 0"):
        build_datasets(config, [64, 8, 0])  # every other caller too (qwenpt.batches, per-source validation sets)
