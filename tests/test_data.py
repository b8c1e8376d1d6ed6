"""Tokenized indexed datasets hold exactly the tokenizer's ids plus one end-of-document per document."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
from megatron.core.datasets.indexed_dataset import IndexedDataset

from data_pipeline.indexed import token_dtype, write_indexed_dataset
from data_pipeline.readers import ReadStats, read_jsonl
from data_pipeline.tokenize import tokenize_jsonl
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


def test_read_jsonl_counts_bad_records(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(
        b'{"text": "good one"}\n'
        b'{"text": \n'  # malformed JSON
        b'{"body": "no text field"}\n'
        b'{"text": "   "}\n'  # empty document
        b'\xff\xfe{"text": "bad utf8"}\n'
        b'{"text": "good two"}\n'
    )
    stats = ReadStats()
    assert list(read_jsonl(path, stats=stats)) == ["good one", "good two"]
    assert stats.documents == 2
    assert dict(stats.rejects) == {"malformed_json": 1, "missing_text_field": 1, "empty_document": 1, "invalid_utf8": 1}
    assert stats.samples[0] == (str(path), 2, "malformed_json")


def test_interrupted_write_leaves_nothing_under_the_final_name(tmp_path):
    def documents():
        yield [1, 2, 3]
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_indexed_dataset(tmp_path / "lang", documents(), vocab_size=100)
    assert list(tmp_path.iterdir()) == []


def test_tokenize_jsonl_roundtrip_and_dtype(tmp_path, tokenizer):
    src = tmp_path / "docs.jsonl"
    texts = ["Hello world", "你好，世界", "Grüße aus Köln 123"]
    src.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8")
    docs, tokens, stats = tokenize_jsonl([src], tokenizer, tmp_path / "out")
    expected = [tokenizer.encode(t) + [tokenizer.eod] for t in texts]
    assert (docs, tokens) == (3, sum(map(len, expected)))
    ds = IndexedDataset(str(tmp_path / "out"))
    assert [ds[i].tolist() for i in range(3)] == expected
    assert token_dtype(151936) == np.int32 and token_dtype(65536) == np.uint16


def test_sampler_splits_global_batches_across_data_parallel_ranks():
    ranks = [list(PretrainingSampler(40, 8, 2, r, 2)) for r in range(2)]
    assert ranks[0][:2] == [[8, 9], [12, 13]] and ranks[1][:2] == [[10, 11], [14, 15]]
    assert sorted(i for r in ranks for b in r for i in b) == list(range(8, 40))
