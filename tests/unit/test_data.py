"""Tokenized indexed datasets hold exactly the tokenizer's ids plus one end-of-document per document."""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from megatron.core.datasets.indexed_dataset import IndexedDataset

from data_pipeline.indexed import write_indexed_dataset
from data_pipeline.tokenizer import TextTokenizer
from qwenpt.data import BUNDLED_TOKENIZER, SAMPLE_DIR, PretrainingSampler, prepare_sample
from helpers.data import _data


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


# --- issue 28: what qwenpt loads runs no code, and no bad input hangs or lies ---------------------------------


def _prepare_docs(out, src, n: int, word: str):
    """Prepare ``n`` English documents (distinct texts) into ``out`` with the data pipeline; the prefix."""
    from data_pipeline.prepare import PrepareConfig, prepare

    src.parent.mkdir(parents=True, exist_ok=True)
    src.write_text("".join(json.dumps({"text": f"{word} {i} " + "words to read " * (5 + i % 7), "lang": "en"}) + "\n"
                           for i in range(n)))
    prepare(PrepareConfig(inputs=(str(src),), output=str(out), tokenizer=str(BUNDLED_TOKENIZER), progress=False))
    return str(out / "en")


def _build(tmp_path, tokenizer, prefix, split="90,10,0"):
    from qwenpt.data import Blend, build_datasets, dataset_config

    config = dataset_config(_data(tmp_path, split), tokenizer, Blend([prefix], [1.0], ["en"]), seed=5)
    return config, build_datasets(config, [64, 8, 0])


def _train_documents(train) -> list[int]:
    return sorted(set(train.datasets[0].document_index.tolist()))


def test_a_pickle_planted_in_the_index_cache_is_refused_and_never_run(tmp_path, tokenizer, megatron_world):
    import pickle

    from qwenpt.config import ConfigError

    prefix = _prepare_docs(tmp_path / "data", tmp_path / "src" / "a.jsonl", 20, "alpha")
    config, _ = _build(tmp_path, tokenizer, prefix)
    cache = Path(config.path_to_cache)
    marker = tmp_path / "code-ran"

    class Payload:
        def __reduce__(self):
            return open, (str(marker), "w")

    planted = sorted(cache.glob("*-GPTDataset-train-shuffle_index.npy"))
    assert len(planted) == 1
    planted[0].write_bytes(pickle.dumps(Payload()))
    with pytest.raises(ConfigError) as err:
        _build(tmp_path, tokenizer, prefix)
    assert str(planted[0]) in str(err.value) and "not a NumPy index file" in str(err.value)
    assert "not the NPY magic" in str(err.value)
    assert not marker.exists()
    assert planted[0].read_bytes() == pickle.dumps(Payload())  # refused, left for the user to inspect

    # an NPY file of Python objects is unpickled by numpy.load too: refused the same way
    np.save(planted[0], np.array([Payload()], dtype=object), allow_pickle=True)
    assert not marker.exists()
    with pytest.raises(ConfigError, match="holds Python objects"):
        _build(tmp_path, tokenizer, prefix)
    assert not marker.exists()


def test_the_index_cache_follows_data_re_prepared_into_the_same_prefix(tmp_path, tokenizer, megatron_world):
    from qwenpt.data import split_documents

    prefix = _prepare_docs(tmp_path / "data", tmp_path / "src" / "a.jsonl", 6, "alpha")
    _, (train, valid, _) = _build(tmp_path, tokenizer, prefix, split="50,50,0")
    assert _train_documents(train) == list(range(3)) and len(train.datasets[0].dataset) == 6
    again = _prepare_docs(tmp_path / "data", tmp_path / "src" / "b.jsonl", 68, "beta")
    assert again == prefix
    _, (train, valid, _) = _build(tmp_path, tokenizer, prefix, split="50,50,0")
    assert len(train.datasets[0].dataset) == 68
    assert split_documents(68, "50,50,0") == [34, 34, None]
    assert _train_documents(train) == list(range(34))  # a stale index: the first 3 documents only
    assert sorted(set(valid.datasets[0].document_index.tolist())) == list(range(34, 68))
    for i in range(len(train)):
        train[i]  # every sample reads (a stale index of more documents than the data: IndexError)
    assert len(list((tmp_path / "cache" / "index").iterdir())) == 2  # one folder per content


def test_a_truncated_index_cache_file_is_removed_and_rebuilt(tmp_path, tokenizer, megatron_world, caplog):
    prefix = _prepare_docs(tmp_path / "data", tmp_path / "src" / "a.jsonl", 20, "alpha")
    config, (train, _, _) = _build(tmp_path, tokenizer, prefix)
    first = [train[i]["tokens"].tolist() for i in range(len(train))]
    cache = Path(config.path_to_cache)
    sizes = {p: p.stat().st_size for p in cache.glob("*.npy")}
    assert len(sizes) == 3 + 3 + 2 + 2  # per split: GPTDataset's 3 indices, BlendedDataset's 2
    cut = next(cache.glob("*-GPTDataset-train-sample_index.npy"))
    empty = next(cache.glob("*-BlendedDataset-train-dataset_index.npy"))
    cut.write_bytes(cut.read_bytes()[: sizes[cut] // 2])  # a build killed mid-write
    empty.write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="qwenpt.data"):
        _, (train, _, _) = _build(tmp_path, tokenizer, prefix)
    damaged = [r.getMessage() for r in caplog.records if "is damaged" in r.getMessage()]
    assert len(damaged) == 2
    assert any(str(cut) in m and f"{sizes[cut] // 2:,} bytes where its header" in m for m in damaged)
    assert any(str(empty) in m and "0 bytes, cut inside the NPY magic" in m for m in damaged)
    assert {p: p.stat().st_size for p in cache.glob("*.npy")} == sizes
    assert [train[i]["tokens"].tolist() for i in range(len(train))] == first


def test_data_split_is_checked_before_anything_is_built():
    from conftest import compose_cfg

    from qwenpt.config import ConfigError
    from qwenpt.validation import validate

    form = "three non-negative numbers TRAIN,VALID,TEST"
    for split, message in [("abc", form), ("95,5", form), ("95,5,0,0", form), ("-5,1,0", form), ("1e-3,1,0", form),
                           ("95;5;0", form), ("", form), ("0,5,0", "gives training no documents"),
                           ("100,0,0", "gives validation no documents, but the run evaluates")]:
        cfg = compose_cfg(f"data.split='{split}'")
        with pytest.raises(ConfigError) as err:
            validate(cfg, 1, check_files=False)
        assert str(err.value).startswith(f"data.split {split!r}") and message in str(err.value), (split, err.value)
        assert form in str(err.value)
    for split in ("95,5,0", "98, 1.5, .5", "1,1,1"):
        validate(compose_cfg(f"data.split='{split}'"), 1, check_files=False)


def test_split_documents_are_megatron_cores_own(monkeypatch):
    """The counts equal the document ranges megatron-core's builder hands each split (its own code, run here)."""
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder as Builder
    from megatron.core.datasets.blended_megatron_dataset_config import BlendedMegatronDatasetConfig

    from qwenpt.data import split_documents

    seen = []

    class Low:
        def __init__(self, n):
            self.n = n

    class Cls:
        build_low_level_dataset = staticmethod(lambda path, config: Low(int(path)))
        numel_low_level_dataset = staticmethod(lambda low: low.n)

    monkeypatch.setattr(Builder, "build_generic_dataset",
                        staticmethod(lambda cls, on_rank, sync, low, path, indices, *rest: seen.append(len(indices))))
    for split in ("95,5,0", "99,1,0", "90,5,5", "1,1,1", "98,1.5,.5", "50,50,0", "33,33,34"):
        config = BlendedMegatronDatasetConfig(random_seed=1, sequence_length=8, blend=(["x"], None), split=split)
        for n in (0, 1, 2, 5, 6, 10, 11, 12, 19, 20, 21, 67, 68, 199, 1000):
            seen.clear()
            Builder(Cls, [1, 1, 1], lambda: True, config)._build_megatron_dataset_splits(str(n), config.split_matrix, [1] * 3)
            assert [c for c in split_documents(n, split) if c is not None] == seen, (split, n)


def test_a_truncated_bin_or_idx_is_refused_naming_the_file_and_both_sizes(tmp_path):
    from conftest import compose_cfg

    from qwenpt.config import ConfigError
    from qwenpt.validation import validate

    prefix = tmp_path / "en"
    write_indexed_dataset(prefix, [[5] * 40 for _ in range(30)], vocab_size=1000)  # 30 x 40 uint16 tokens
    cfg = compose_cfg(f"data.blend=[{{prefix:'{prefix}',weight:1}}]", f"data.cache_dir={tmp_path / 'cache'}")
    validate(cfg)
    whole = Path(f"{prefix}.bin").read_bytes()
    Path(f"{prefix}.bin").write_bytes(whole[:1000])
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert f"{prefix}.bin is 1,000 bytes, but en.idx describes 2,400 bytes of tokens (truncated)" in str(err.value)
    Path(f"{prefix}.bin").write_bytes(whole + b"\0\0")
    with pytest.raises(ConfigError, match="is 2,402 bytes, but en.idx describes 2,400 bytes of tokens"):
        validate(cfg)
    Path(f"{prefix}.bin").write_bytes(whole)
    idx = Path(f"{prefix}.idx")
    idx.write_bytes(idx.read_bytes()[:100])
    with pytest.raises(ConfigError, match=f"{idx} is 100 bytes, but its header describes 30 sequences"):
        validate(cfg)


def test_the_bundled_sample_is_refused_for_a_split_it_cannot_fill(tmp_path, tokenizer):
    from qwenpt.config import ConfigError
    from qwenpt.data import resolve_blend

    with pytest.raises(ConfigError) as err:
        resolve_blend(_data(tmp_path, "99,1,0"), tokenizer)
    assert "the bundled sample's 'de' dataset (data.blend is empty)" in str(err.value)
    assert "holds 12 documents, of which data.split '99,1,0' gives the valid split 0" in str(err.value)
    assert "needs at least 51 documents" in str(err.value)
    assert len(resolve_blend(_data(tmp_path, "95,5,0"), tokenizer).prefixes) == 10
