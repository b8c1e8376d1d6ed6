"""Tokenizers: a Hugging Face ``tokenizer.json`` (or a Qwen name), encoded by the fastest exact engine.

A document's text stays text: its ids are those of the tokenizer's BPE alone (tiktoken's
``encode_ordinary``), so a document quoting ``<|endoftext|>`` or ``<|im_start|>`` is not split or
injected with control tokens; the pipeline appends the end-of-document id itself.

Engines, fastest first: ``fastokens`` (Rust, ~20× HF ``tokenizers`` here), ``gigatoken``, then HF
``tokenizers``. An engine other than HF is used only once it has given HF's ids on a probe set
(multilingual text, digits, whitespace runs, quoted special tokens, random code points) for this
very tokenizer file; the verdict is cached per tokenizer and engine version, so the check (and
loading HF's tokenizer) happens once. Anything an engine cannot load falls back to HF.

:func:`train_bpe` builds a small tokenizer of Qwen2's shape, so tests and CPU runs need no download.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import random
import shutil
from importlib import metadata
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from data_pipeline.qwen import MODELS, QWEN2_PRETOKENIZE_REGEX, cache_root, resolve

log = logging.getLogger(__name__)
ENDOFTEXT = "<|endoftext|>"
QWEN2_SPECIAL_TOKENS = [ENDOFTEXT, "<|im_start|>", "<|im_end|>"]
ENGINES = ("fastokens", "gigatoken", "tokenizers")


class TextTokenizer:
    """A tokenizer with the fields megatron-core's GPTDataset reads (``eod``, ``vocab_size``) and a
    batch encoder (:meth:`encode_flat`) on the fastest engine proven exact for it."""

    def __init__(self, path: str | Path, eod_token: str = ENDOFTEXT, engine: str = "auto") -> None:
        self.name = str(path).lower() if str(path).lower() in MODELS else None  # a Qwen name: portable in configs
        path = resolve(path)
        file = path / "tokenizer.json" if path.is_dir() else path
        if not file.is_file():
            raise FileNotFoundError(
                f"tokenizer: no tokenizer.json at {file}; pass a tokenizer.json file, a directory "
                f"holding one (e.g. a Hugging Face model directory), a Qwen name ({', '.join(MODELS)}), "
                "or train one with `python -m data_pipeline train-tokenizer`"
            )
        self.path = file
        self.sha256 = hashlib.sha256(file.read_bytes()).hexdigest()
        self.ordinary_path, meta = _ordinary(file, self.sha256)
        added, vocab = meta["added"], meta.get("vocab") or {}
        eod = added.get(eod_token, vocab.get(eod_token))
        if eod is None:
            raise ValueError(f"tokenizer: {file} has no end-of-document token {eod_token!r}")
        self.eod, self.vocab_size = int(eod), int(meta["vocab_size"])
        self.unique_identifiers = {"class": type(self).__name__, "path": str(file.resolve())}
        self._hf = self._hf_ordinary = None
        self.engine, self._encode = self._pick_engine(engine)

    # --- Hugging Face tokenizers, loaded on first use -------------------------------------------
    @property
    def tokenizer(self):
        """The full HF ``tokenizers.Tokenizer`` (with its special tokens)."""
        if self._hf is None:
            from tokenizers import Tokenizer

            try:
                self._hf = Tokenizer.from_file(str(self.path))
            except Exception as err:  # tokenizers raises a bare Exception on malformed files
                raise ValueError(f"tokenizer: cannot read {self.path}: {err}") from err
        return self._hf

    def _hf_ordinary_tokenizer(self):
        if self._hf_ordinary is None:
            from tokenizers import Tokenizer

            self._hf_ordinary = Tokenizer.from_file(str(self.ordinary_path))
        return self._hf_ordinary

    # --- encoding ---------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        ids, _ = self.encode_flat([text])
        return ids.tolist()

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        ids, lengths = self.encode_flat(texts)
        ends = np.cumsum(lengths)
        return [ids[e - n : e].tolist() for e, n in zip(ends, lengths)]

    def encode_flat(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Ids of every text back to back (uint32) and each text's length (int64), on all cores."""
        if self._encode is None:  # unpickled (e.g. inside a dataset copy): reload the proven engine
            self._encode = getattr(self, f"_load_{self.engine}")()
        return self._encode(list(texts))

    def __getstate__(self) -> dict:
        """Picklable (megatron-core's datasets hold the tokenizer): engines reload on first use."""
        state = {**self.__dict__, "_encode": None, "_hf": None, "_hf_ordinary": None}
        state.pop("byte_table", None)
        return state

    @functools.cached_property
    def byte_table(self) -> np.ndarray | None:
        """Per id, its bytes and control-character flags (:mod:`data_pipeline.bytelevel`), proven on
        probe texts with this engine and cached; None unless this is a byte-level BPE with NFC."""
        from data_pipeline import bytelevel

        folder = self.ordinary_path.parent
        return bytelevel.table(folder, self.ordinary_path, self.vocab_size, self.encode_flat, probe_texts())

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    # --- engines ---------------------------------------------------------------------------------
    def _pick_engine(self, wanted: str):
        order = ENGINES if wanted == "auto" else (wanted,)
        if wanted not in ("auto", *ENGINES):
            raise ValueError(f"tokenizer engine {wanted!r} is not one of auto, {', '.join(ENGINES)}")
        for name in order:
            try:
                encode = getattr(self, f"_load_{name}")()
            except Exception as err:  # not installed, or cannot load this tokenizer
                log.info("tokenizer engine %s unavailable for %s: %s", name, self.path, err)
                continue
            if name == "tokenizers" or self._proven(name, encode):
                return name, encode
        raise ValueError(f"tokenizer: no engine among {order} can encode {self.path} exactly")

    def _load_tokenizers(self):
        tok = self._hf_ordinary_tokenizer()
        encode = getattr(tok, "encode_batch_fast", tok.encode_batch)

        def run(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
            encs = encode(texts, add_special_tokens=False)
            lengths = np.fromiter((len(e.ids) for e in encs), np.int64, len(encs))
            ids = np.fromiter((i for e in encs for i in e.ids), np.uint32, int(lengths.sum()))
            return ids, lengths

        return run

    def _load_fastokens(self):
        import fastokens

        tok = fastokens.Tokenizer.from_file(str(self.ordinary_path))

        def run(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
            ids, offsets = tok.encode_batch_flat(texts)
            return np.frombuffer(ids, np.uint32), np.diff(np.frombuffer(offsets, np.uint64)).astype(np.int64)

        return run

    def _load_gigatoken(self):
        import awkward as ak
        import gigatoken

        tok = gigatoken.Tokenizer(str(self.ordinary_path))

        def run(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
            arr = tok.encode_batch(texts)
            return np.asarray(ak.flatten(arr), np.uint32), np.asarray(ak.num(arr), np.int64)

        return run

    def _proven(self, engine: str, encode) -> bool:
        """Whether ``engine`` gives HF's ids for this tokenizer on :func:`probe_texts` (cached verdict)."""
        version = metadata.version(engine)
        marker = cache_root() / "engine-checks" / f"{self.sha256[:16]}-{engine}-{version}.json"
        if marker.is_file():
            return json.loads(marker.read_text())["exact"]
        texts = probe_texts()
        ref_ids, ref_lengths = self._load_tokenizers()(texts)
        ids, lengths = encode(texts)
        exact = bool(np.array_equal(lengths, ref_lengths) and np.array_equal(ids, ref_ids))
        if not exact:
            log.warning("tokenizer engine %s %s differs from HF tokenizers on %s; not using it", engine, version, self.path)
        marker.parent.mkdir(parents=True, exist_ok=True)
        tmp = marker.with_name(f".{marker.name}.tmp{os.getpid()}")
        tmp.write_text(json.dumps({"exact": exact, "engine": engine, "version": version, "tokenizer": str(self.path),
                                   "texts": len(texts), "tokens": int(ref_lengths.sum())}))
        os.replace(tmp, marker)
        return exact


def _ordinary(file: Path, sha256: str) -> tuple[Path, dict]:
    """The tokenizer without its added tokens (the BPE alone: special tokens in a document are text),
    as a cached ``tokenizer.json``, and what the pipeline needs of the full one: added tokens, the
    vocabulary size and the vocabulary's ``<...>`` entries (an end-of-document token may be one).
    Cached by content, so start-up parses no JSON the second time."""
    folder = cache_root() / "ordinary" / sha256[:16]
    if (folder / "meta.json").is_file():
        return folder / "tokenizer.json", json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    try:
        spec = json.loads(file.read_bytes())
        added = {t["content"]: t["id"] for t in spec.get("added_tokens", [])}
        vocab = spec["model"]["vocab"]
        vocab_size = max([len(vocab) - 1, *added.values()]) + 1
    except Exception as err:
        raise ValueError(f"tokenizer: cannot read {file}: {err}") from err
    spec["added_tokens"] = []
    meta = {"source": str(file), "added": added, "vocab_size": vocab_size,
            "vocab": {t: i for t, i in vocab.items() if t.startswith("<")} if isinstance(vocab, dict) else {}}
    tmp = folder.with_name(f".{folder.name}.tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    (tmp / "meta.json").write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")
    try:
        os.rename(tmp, folder)
    except OSError:  # another process wrote it first
        shutil.rmtree(tmp, ignore_errors=True)
    return folder / "tokenizer.json", meta


_PROBE_WORDS = [
    "The quick brown fox jumps over the lazy dog. It's 12:30, they'll've won 1,234,567.89 €!",
    "Grüße aus Köln — naïve café, façade; ÆØÅ æøå; Ελληνικά; русский текст; עברית; العربية",
    "自然语言处理是人工智能的一个分支。日本語のテキスト、カタカナとひらがな。한국어 문장입니다.",
    "def f(x):\n\treturn x ** 2  # comment\r\n\r\n    if a != b: print('ok')\n\n\n",
    "   leading and   multiple   spaces \t\t tabs\u00a0nbsp\u2003em-space  \n  \n",
    "quote <|endoftext|> here <|im_start|>user\n<think>hi</think><|im_end|> <tool_call>",
    "emoji 🤗🚀👩‍👩‍👧 flags 🇩🇪🇯🇵 and combining e\u0301 a\u0308 \u03d2\u0301 Ǆ ǅ ﬁ ℌ ①②",
    "0123456789 3.14159 1e-10 0x1F 1_000_000 ١٢٣ ०१२ 一二三 ⅠⅡⅢ",
    # whole words that are Qwen3.5 tokens no merge builds (its tokenizer splits them; tiktoken's lookup does
    # not), and combining marks its regex keeps with the letters (Qwen2's splits them off)
    "Geht es möglicherweise? Japón, Japão, terdapat\n加拿大\nワクチン\n毛泽东 क्ष กัน أَهْلاً नमस्ते ന്റ",
]


def probe_texts(n_random: int = 400, seed: int = 0) -> list[str]:
    """Texts an engine must encode exactly as HF does: the samples above, and random strings mixing
    ASCII, Latin, CJK, emoji, whitespace and control characters (fixed seed)."""
    rng = random.Random(seed)
    pools = [
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789",
        " \t\n\r\u00a0\u3000", "'\".,;:!?()[]{}<>|/\\-_=+*&^%$#@~`", "éüßçñøåœæ", "中文日本語한국어テキスト",
        "🤗🚀😀👍🏽", "\u0301\u0308\u200d\ufe0f", "αβγδЖЩЯאבגمرح",
    ]
    texts = list(_PROBE_WORDS)
    texts += [" ".join(_PROBE_WORDS[i % len(_PROBE_WORDS)] for i in range(k, k + 5)) for k in range(8)]
    for _ in range(n_random):
        n = rng.randint(1, 200)
        texts.append("".join(rng.choice(rng.choice(pools)) for _ in range(n)))
    texts.append(" " * 3000 + "x" + "\n" * 500)
    return texts


def train_bpe(texts: Iterable[str], vocab_size: int, out: str | Path) -> Path:
    """Train a byte-level BPE with Qwen2's normaliser, pre-tokeniser and special tokens; write tokenizer.json."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(QWEN2_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tok.add_special_tokens(QWEN2_SPECIAL_TOKENS)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    return out / "tokenizer.json"
