"""The Qwen tokenizers rebuilt offline are Qwen's, and the pipeline's engines encode them exactly."""

from __future__ import annotations

import gzip
import hashlib
import json
import pickle
import unicodedata

import numpy as np
import pytest
from megatron.core.datasets.indexed_dataset import IndexedDataset
from tokenizers import Tokenizer

from data_pipeline import qwen
from data_pipeline.prepare import PrepareConfig, prepare
from data_pipeline.tokenizer import TextTokenizer, probe_texts
from qwenpt.data import BUNDLED_TOKENIZER, SAMPLE_DIR

# sha256 of the regenerated files, equal to Qwen2-1.5B-Instruct's published ones: a public copy of that
# model's tokenizer files (GitHub YuxuanBai1/Qwen2-Boundless-GUI at f17f17c, config.json
# "_name_or_path": "Qwen2-1.5B-Instruct") has vocab.json of 2,776,833 bytes with exactly this sha256, and
# merges.txt whose sha256 after removing its CRLF line ends ("#version: 0.2" then 151,387 merges, 1,671,853
# bytes) is exactly this one. ids also match transformers' Qwen2 integration test below.
VOCAB_SHA256 = "ca10d7e9fb3ed18575dd1e277a2579c16d108e32f27439684afa0e10b1440910"
MERGES_SHA256 = "8831e4f1a044471340f7c0a83d7bd71306a5b867e95fd870f74d0c5308a904d5"

# transformers tests/models/qwen2/test_tokenization_qwen2.py, test_tokenizer_integration (padding dropped)
REFERENCE = [
    ("Transformers (formerly known as pytorch-transformers and pytorch-pretrained-bert) provides "
     "general-purpose architectures (BERT, GPT-2, RoBERTa, XLM, DistilBert, XLNet...) for Natural "
     "Language Understanding (NLU) and Natural Language Generation (NLG) with over 32+ pretrained "
     "models in 100+ languages and deep interoperability between Jax, PyTorch and TensorFlow.",
     [8963, 388, 320, 69514, 3881, 438, 4510, 27414, 32852, 388, 323, 4510, 27414, 21334, 35722, 1455, 529, 8, 5707,
      4586, 58238, 77235, 320, 61437, 11, 479, 2828, 12, 17, 11, 11830, 61437, 64, 11, 1599, 10994, 11, 27604, 321,
      33, 529, 11, 29881, 6954, 32574, 369, 18448, 11434, 45451, 320, 45, 23236, 8, 323, 18448, 11434, 23470, 320,
      30042, 38, 8, 448, 916, 220, 18, 17, 10, 80669, 4119, 304, 220, 16, 15, 15, 10, 15459, 323, 5538, 94130,
      2897, 1948, 619, 706, 11, 5355, 51, 21584, 323, 94986, 13]),
    ("🤗 Transformers 提供了可以轻松地下载并且训练先进的预训练模型的 API 和工具。使用预训练模型可以减少计算消耗和碳排放，并且节省从头训练所需要的时间和资源。",
     [144834, 80532, 93685, 83744, 34187, 73670, 104261, 29490, 62189, 103937, 104034, 102830, 98841, 104034, 104949,
      9370, 5333, 58143, 102011, 1773, 37029, 98841, 104034, 104949, 73670, 101940, 100768, 104997, 33108, 100912,
      105054, 90395, 100136, 106831, 45181, 64355, 104034, 113521, 101975, 33108, 85329, 1773]),
    ('```python\ntokenizer = AutoTokenizer.from_pretrained("Qwen/Qwen-tokenizer")\ntokenizer("世界，你好！")```',
     [73594, 12669, 198, 85593, 284, 8979, 37434, 6387, 10442, 35722, 445, 48, 16948, 45274, 16948, 34841, 3135,
      1138, 85593, 445, 99489, 3837, 108386, 6313, 899, 73594]),
]


def sample_texts() -> list[str]:
    return [json.loads(line)["text"] for f in sorted(SAMPLE_DIR.glob("*.jsonl.gz")) for line in gzip.open(f, "rt", encoding="utf-8")]


@pytest.fixture(scope="module")
def qwen3_dir(tmp_path_factory):
    return qwen.write_tokenizer_dir("qwen3", tmp_path_factory.mktemp("qwen3"))


def test_regenerated_vocab_and_merges_are_qwen2s(qwen3_dir):
    vocab, merges = (qwen3_dir / "vocab.json").read_bytes(), (qwen3_dir / "merges.txt").read_bytes()
    assert hashlib.sha256(vocab).hexdigest() == VOCAB_SHA256 and len(vocab) == 2_776_833
    assert hashlib.sha256(merges).hexdigest() == MERGES_SHA256 and len(merges) == 1_671_853
    lines = merges.decode().splitlines()
    assert lines[:6] == ["#version: 0.2", "Ġ Ġ", "ĠĠ ĠĠ", "i n", "Ġ t", "ĠĠĠĠ ĠĠĠĠ"] and len(lines) == 1 + 151_387
    assert vocab.decode().startswith('{"!":0,"\\"":1,"#":2,')


def test_transformers_loads_it_as_qwen2_with_reference_ids_and_special_tokens(qwen3_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(qwen3_dir))
    assert type(tok).__name__.startswith("Qwen2Tokenizer") and len(tok) == 151_669
    for text, ids in REFERENCE:
        assert tok(text)["input_ids"] == ids
    expected = {151643: "<|endoftext|>", 151644: "<|im_start|>", 151645: "<|im_end|>", 151646: "<|object_ref_start|>",
                151652: "<|vision_start|>", 151655: "<|image_pad|>", 151657: "<tool_call>", 151659: "<|fim_prefix|>",
                151664: "<|file_sep|>", 151665: "<tool_response>", 151667: "<think>", 151668: "</think>"}
    assert tok.convert_ids_to_tokens(list(expected)) == list(expected.values())
    assert tok.eos_token == "<|endoftext|>" and tok.pad_token == "<|endoftext|>"
    assert tok("<|im_start|>hello<|im_end|>")["input_ids"] == [151644, 14990, 151645]  # chat markup stays special


def test_named_tokenizers_resolve_offline_with_their_sizes(tmp_path, monkeypatch, qwen3_dir):
    assert {n: len(added) + 151_643 for n, (added, _) in qwen.MODELS.items() if qwen.VOCABULARY_OF[n] == "qwen2"} == {
        "qwen2": 151_646, "qwen2.5": 151_665, "qwen3": 151_669}  # qwen3.5/3.6: tests/unit/test_tokenizer_qwen35.py
    assert TextTokenizer(qwen3_dir).vocab_size == 151_669
    monkeypatch.setenv("QWENPT_CACHE", str(tmp_path))
    tok = TextTokenizer("qwen2.5")  # built into the cache on first use
    assert (tok.vocab_size, tok.eod, tok.path.parent.parent) == (151_665, 151643, tmp_path / "tokenizers")
    assert qwen.resolve("QWEN2.5") / "tokenizer.json" == tok.path  # built once, reused
    assert json.loads((tok.path.parent / "tokenizer_config.json").read_text())["added_tokens_decoder"]["151664"]["content"] == "<|file_sep|>"


def test_ids_equal_tiktoken_with_the_same_ranks_on_the_multilingual_sample():
    import tiktoken

    enc = tiktoken.Encoding("qwen", pat_str=qwen.QWEN2_PRETOKENIZE_REGEX, mergeable_ranks=qwen.load_ranks(), special_tokens={})
    tok = TextTokenizer("qwen2")
    texts = [unicodedata.normalize("NFC", t) for t in sample_texts()] + [t for t, _ in REFERENCE]
    assert tok.encode_batch(texts) == [enc.encode_ordinary(t) for t in texts]
    assert sum(len(enc.encode_ordinary(t)) for t in texts) > 140_000


@pytest.mark.parametrize("engine", ["fastokens", "gigatoken", "tokenizers"])
@pytest.mark.parametrize("name", ["qwen2", "bundled"])
def test_every_engine_gives_hf_ids_on_sample_and_fuzz(name, engine):
    """Each engine against HF tokenizers with special tokens as text (``encode_special_tokens``)."""
    path = qwen.resolve("qwen2") / "tokenizer.json" if name == "qwen2" else BUNDLED_TOKENIZER
    hf = Tokenizer.from_file(str(path))
    hf.encode_special_tokens = True
    tok = TextTokenizer(path, engine=engine)
    assert tok.engine == engine
    texts = sample_texts() + probe_texts(n_random=1000, seed=1)
    assert tok.encode_batch(texts) == [e.ids for e in hf.encode_batch(texts, add_special_tokens=False)]


def test_an_engine_that_disagrees_with_hf_is_not_used(tmp_path, monkeypatch):
    monkeypatch.setenv("QWENPT_CACHE", str(tmp_path))
    right = TextTokenizer._load_fastokens

    def off_by_one(self):
        encode = right(self)

        def wrong(texts):
            ids, lengths = encode(texts)
            return np.where(ids == ids.max(), 0, ids).astype(np.uint32), lengths

        return wrong

    monkeypatch.setattr(TextTokenizer, "_load_fastokens", off_by_one)
    tok = TextTokenizer(BUNDLED_TOKENIZER)
    assert tok.engine == "gigatoken"
    verdicts = {json.loads(p.read_text())["engine"]: json.loads(p.read_text())["exact"] for p in (tmp_path / "engine-checks").glob("*.json")}
    assert verdicts == {"fastokens": False, "gigatoken": True}
    monkeypatch.setattr(TextTokenizer, "_load_fastokens", right)
    again = TextTokenizer(BUNDLED_TOKENIZER)
    assert again.engine == "gigatoken"  # the verdict is remembered per tokenizer and version
    copy = pickle.loads(pickle.dumps(again))  # datasets holding the tokenizer are pickled
    assert (copy.engine, copy.encode("Grüße 世界")) == ("gigatoken", again.encode("Grüße 世界"))


def test_prepare_with_qwen2_writes_hf_ids_and_keeps_special_tokens_as_text(tmp_path):
    """Every document of the mixed sample, plus documents quoting control tokens, through `prepare
    --tokenizer qwen2`: ids equal HF tokenizers' with special tokens as text, end of document last."""
    quoting = ["quote <|endoftext|> here", "<|im_start|>system\nYou are<|im_end|> <think>x</think> <|fim_prefix|>"]
    src = tmp_path / "src"
    src.mkdir()
    for f in SAMPLE_DIR.glob("*.jsonl.gz"):
        (src / f.name).write_bytes(f.read_bytes())
    (src / "quoting.jsonl").write_text("".join(json.dumps({"text": t, "lang": "xx"}) + "\n" for t in quoting))
    manifest = prepare(PrepareConfig(inputs=(str(src),), output=str(tmp_path / "out"), tokenizer="qwen2", progress=False))
    hf = Tokenizer.from_file(str(qwen.resolve("qwen2") / "tokenizer.json"))
    hf.encode_special_tokens = True
    groups = manifest.groups()
    assert len(groups) == 11 and manifest.total("documents") == 122 and manifest.tokenizer == "qwen2"
    for lang, g in groups.items():
        texts = quoting if lang == "xx" else [
            unicodedata.normalize("NFC", json.loads(line)["text"]) for line in gzip.open(src / f"{lang}.jsonl.gz", "rt", encoding="utf-8")]
        ds = IndexedDataset(str(tmp_path / "out" / lang))
        expected = [e.ids + [151643] for e in hf.encode_batch(texts, add_special_tokens=False)]
        assert [ds[i].tolist() for i in range(len(ds))] == expected, lang
        assert g["tokens"] == sum(map(len, expected))
    xx = IndexedDataset(str(tmp_path / "out" / "xx"))
    assert xx[0].tolist() == [2949, 82639, 8691, 723, 427, 91, 29, 1588, 151643]  # "<|endoftext|>" as text, then the real one
    assert manifest.total("tokens") == 145_803 + 120 + len(xx[0]) + len(xx[1])  # sample: 145,803 ids + 120 ends


def test_data_config_names_a_qwen_tokenizer_and_real_vocabularies_default_to_qwen2():
    from conftest import compose_cfg

    from qwenpt.config import ConfigError
    from qwenpt.validation import validate
    from qwenpt.data import load_tokenizer

    cfg = compose_cfg("model=qwen2_0.5b", "data.tokenizer=qwen2.5")
    validate(cfg, check_files=True)
    assert load_tokenizer(cfg.data, cfg.model.vocab_size).vocab_size == 151_665
    cfg = compose_cfg("model=qwen2_0.5b")
    assert cfg.data.tokenizer is None and load_tokenizer(cfg.data, cfg.model.vocab_size).vocab_size == 151_646
    tiny = compose_cfg()
    assert load_tokenizer(tiny.data, tiny.model.vocab_size).path == BUNDLED_TOKENIZER
    with pytest.raises(ConfigError, match="data.tokenizer: qwen9 is neither a tokenizer.json nor a directory holding one, nor one of qwen2, qwen2.5, qwen3"):
        validate(compose_cfg("data.tokenizer=qwen9"))


CONTROLS = ["nul\x00", "bell\x07 esc\x1b[0m", "del\x7f", "nel\x85 split", "csi\x9b[0m", "Â\x80 whole", "\x9f",
            "unit\x1fsep"]


@pytest.mark.parametrize("name", ["qwen2", "bundled"])
def test_byte_table_gives_nfc_utf8_length_and_finds_every_control_character(name):
    """From the ids alone (bytelevel.scan): each document's UTF-8 length after NFC, on the sample, the
    engine fuzz and decomposed text; every document holding a C0/DEL/C1 control flagged (a C1 is
    split over two ids by both tokenizers: the pair is what finds it), and no clean document flagged."""
    from data_pipeline import bytelevel

    tok = TextTokenizer("qwen2" if name == "qwen2" else BUNDLED_TOKENIZER)
    table = tok.byte_table
    assert table is not None and table.dtype == np.uint16
    assert len(tok.encode("\x85")) == 2  # the split case exists: one C1 character, two ids
    decomposed = ["Cafe\u0301 cre\u0300me", "A\u030a \u212b \u1e9b\u0323", "\u0344\ufb2c"]
    clean = [t for t in sample_texts() + probe_texts(n_random=1000, seed=2) + decomposed
             if not bytelevel.has_control(unicodedata.normalize("NFC", t).encode())]
    texts = clean + CONTROLS
    ids, lengths = tok.encode_flat(texts)
    nbytes, suspects = bytelevel.scan(table, ids, lengths)
    assert nbytes.tolist() == [len(unicodedata.normalize("NFC", t).encode()) for t in texts]
    assert suspects.tolist() == list(range(len(clean), len(texts)))
    for i, t in enumerate(CONTROLS):  # alone too (a document of one split character)
        assert bytelevel.scan(table, *tok.encode_flat([t]))[1].tolist() == [0], t


def test_byte_table_only_for_byte_level_bpe_with_nfc_and_only_once_proven(tmp_path, monkeypatch):
    """Another normaliser (here none) gives no table, so prepare cleans first; a table that misstates
    one id fails its proof; the verdict is cached with the tokenizer."""
    from data_pipeline import bytelevel

    monkeypatch.setenv("QWENPT_CACHE", str(tmp_path / "cache"))
    spec = json.loads(BUNDLED_TOKENIZER.read_text())
    spec["normalizer"] = None
    (tmp_path / "plain.json").write_text(json.dumps(spec))
    plain = TextTokenizer(tmp_path / "plain.json")
    assert plain.byte_table is None
    assert json.loads((plain.ordinary_path.parent / "bytelevel.json").read_text()) == {"exact": False}

    tok = TextTokenizer(BUNDLED_TOKENIZER)
    table = tok.byte_table
    assert bytelevel.prove(table, tok.encode_flat, probe_texts())
    wrong = table.copy()
    wrong[np.bincount(tok.encode_flat(probe_texts())[0]).argmax()] += 1  # the commonest id one byte off
    assert not bytelevel.prove(wrong, tok.encode_flat, probe_texts())
    blind = table & ~np.uint16(bytelevel.CONTROL)  # an id holding a control no longer flagged
    assert not bytelevel.prove(blind, tok.encode_flat, probe_texts())
    assert np.array_equal(TextTokenizer(BUNDLED_TOKENIZER).byte_table, table)  # from the cache
    copy = pickle.loads(pickle.dumps(tok))
    assert np.array_equal(copy.byte_table, table)
