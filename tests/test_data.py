"""Tokenized indexed datasets hold exactly the tokenizer's ids plus one end-of-document per document."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
from megatron.core.datasets.indexed_dataset import IndexedDataset

from data_pipeline.indexed import token_dtype, write_indexed_dataset
from data_pipeline.tokenizer import TextTokenizer
from qwenpt.data import BUNDLED_TOKENIZER, SAMPLE_DIR, PretrainingSampler, prepare_sample


@pytest.fixture(scope="module")
def tokenizer():
    return TextTokenizer(BUNDLED_TOKENIZER)


def test_bundled_sample_is_multilingual_with_copyright():
    langs = {p.name.removesuffix(".jsonl.gz") for p in SAMPLE_DIR.glob("*.jsonl.gz")}
    assert {"en", "zh-cn", "ja", "de", "fr", "es"} <= langs and len(langs) == 10
    assert "GPL-2+" in (SAMPLE_DIR / "COPYRIGHT").read_text()


def test_tokenized_sample_matches_tokenizer_exactly(tmp_path, tokenizer):
    blend = prepare_sample(tmp_path, tokenizer)
    assert len(blend.prefixes) == 10
    for name, prefix, weight in zip(blend.names, blend.prefixes, blend.weights):
        texts = [json.loads(line)["text"] for line in gzip.open(SAMPLE_DIR / f"{name}.jsonl.gz", "rt", encoding="utf-8")]
        ds = IndexedDataset(prefix)
        assert len(ds) == len(texts)
        assert ds.sequence_lengths.tolist() == [len(tokenizer.encode(t)) + 1 for t in texts]
        assert weight == sum(len(tokenizer.encode(t)) + 1 for t in texts)
        first = ds[0]
        assert first.tolist() == tokenizer.encode(texts[0]) + [tokenizer.eod]
        assert first.dtype == np.uint16  # 8192-token vocabulary fits 16 bits
    assert not list(tmp_path.rglob(".*tmp*"))


def test_interrupted_write_leaves_nothing_under_the_final_name(tmp_path):
    def documents():
        yield [1, 2, 3]
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_indexed_dataset(tmp_path / "lang", documents(), vocab_size=100)
    assert list(tmp_path.iterdir()) == []


def test_sampler_splits_global_batches_across_data_parallel_ranks():
    ranks = [list(PretrainingSampler(40, 8, 2, r, 2)) for r in range(2)]
    assert ranks[0][:2] == [[8, 9], [12, 13]] and ranks[1][:2] == [[10, 11], [14, 15]]
    assert sorted(i for r in ranks for b in r for i in b) == list(range(8, 40))
