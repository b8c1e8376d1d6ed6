"""What a byte-level BPE's ids say about the text they encode: its UTF-8 length and whether it holds
a control character, so light cleaning can be settled after tokenizing, from the ids.

Cleaning a document before tokenizing costs three passes over its text in Python, holding the GIL
(NFC 0.027, UTF-8 encoding 0.021, the control-character search 0.027 CPU-s per 28 MB of the Debian
benchmark corpus), on top of the same work inside the engine, which applies the tokenizer's own NFC
and encodes to UTF-8 itself. For a byte-level BPE whose normaliser is NFC, every id stands for
fixed bytes of the NFC text, so one table lookup per id (numpy, 0.012 CPU-s per 28 MB) gives each
document's cleaned UTF-8 length and flags every id that may hold a control character; only flagged
documents are cleaned in Python and tokenized again.
The result is byte-identical to cleaning first (tested). :func:`table` builds the lookup once per
tokenizer (cached) and proves it on probe texts with the engine itself.
"""

from __future__ import annotations

import json
import logging
import os
import unicodedata
from pathlib import Path
from typing import Callable

import numpy as np

from data_pipeline.clean import has_control

log = logging.getLogger(__name__)

LENGTH_MASK = 0x1FFF  # bytes of the token (< 8192)
CONTROL = 0x8000  # the token's bytes hold a C0 control (not tab, newline, CR), DEL, or a whole C1 character
ENDS_C2 = 0x4000  # its last byte is 0xC2, the lead byte of U+0080-U+00BF
STARTS_C1_TAIL = 0x2000  # its first byte is 0x80-0x9F: after an ENDS_C2 token, a C1 control split in two
_C0_DEL = frozenset([*range(9), 11, 12, *range(14, 32), 127])

Encode = Callable[[list], tuple[np.ndarray, np.ndarray]]


def _bytes_to_unicode() -> dict[str, int]:
    """GPT-2's byte-level alphabet, inverted: the character a vocabulary entry uses for each byte."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, n = {}, 0
    for b in range(256):
        if b in keep:
            chars[chr(b)] = b
        else:
            chars[chr(256 + n)] = b
            n += 1
    return chars


def _entry(token: bytes) -> int:
    if len(token) > LENGTH_MASK:
        raise ValueError("token too long")
    flags = len(token)
    c1 = any(token[i] == 0xC2 and 0x80 <= token[i + 1] <= 0x9F for i in range(len(token) - 1))
    if c1 or any(b in _C0_DEL for b in token):
        flags |= CONTROL
    if token and token[-1] == 0xC2:
        flags |= ENDS_C2
    if token and 0x80 <= token[0] <= 0x9F:
        flags |= STARTS_C1_TAIL
    return flags


def build(spec: dict, vocab_size: int) -> np.ndarray | None:
    """The lookup (uint16 per id: byte length and the flags above) of a tokenizer.json without added
    tokens, or None when its ids do not map to fixed bytes of NFC text (not a byte-level BPE, or
    another normaliser)."""
    model, pre, dec = spec.get("model") or {}, spec.get("pre_tokenizer") or {}, spec.get("decoder") or {}
    pres = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    if (spec.get("normalizer") != {"type": "NFC"} or model.get("type") != "BPE" or dec.get("type") != "ByteLevel"
            or not any(p.get("type") == "ByteLevel" for p in pres) or not isinstance(model.get("vocab"), dict)):
        return None
    alphabet = _bytes_to_unicode()
    table = np.zeros(vocab_size, np.uint16)
    try:
        for token, i in model["vocab"].items():
            table[i] = _entry(bytes(alphabet[c] for c in token))
    except (KeyError, ValueError, IndexError):  # a character outside the byte alphabet, an id out of range
        return None
    return table


_PROBES = ["nul\x00 in text", "unit\x1fsep", "del\x7f", "nel\x85 C1", "csi\x9b[0m", "\x80\x9f", "Â\u0080",
           "a\u00a0b © « »", "e\u0301 cafe\u0301 A\u030a \u212b \u1e9b\u0323", "\ufb2c \u0344 \U0001d160",
           "tab\tnl\ncr\r ok"]


def prove(table: np.ndarray, encode: Encode, texts: list[str]) -> bool:
    """Whether ``table`` gives, for each of ``texts`` and the probes above as the engine encodes them,
    the UTF-8 length of its NFC form and flags every one holding a control character."""
    texts = [t for t in [*texts, *_PROBES] if t and not any(0xD800 <= ord(c) <= 0xDFFF for c in t)]
    ids, lengths = encode(texts)
    nbytes, suspects = scan(table, ids, lengths)
    want = [len(unicodedata.normalize("NFC", t).encode()) for t in texts]
    controls = {i for i, t in enumerate(texts) if has_control(unicodedata.normalize("NFC", t).encode())}
    return nbytes.tolist() == want and controls <= set(suspects.tolist()) and bool(controls)


def scan(table: np.ndarray, ids: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each document's UTF-8 bytes (int64) and the indices of those that may hold a control character,
    from the ids of documents encoded back to back (``lengths`` ids each, every length >= 1). Two
    passes over the ids (np.take, 2x fancy indexing's speed here; one reduction), then work on the
    few flagged ids only."""
    entries = np.take(table, ids)
    starts = np.zeros(len(lengths), np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    if not len(ids):
        return np.zeros(len(lengths), np.int64), np.zeros(0, np.int64)
    nbytes = np.add.reduceat(entries, starts, dtype=np.int64)
    flagged = np.flatnonzero(entries > LENGTH_MASK)
    if not len(flagged):
        return nbytes, np.zeros(0, np.int64)
    flags = entries[flagged]
    np.subtract.at(nbytes, np.searchsorted(starts, flagged, side="right") - 1, flags & ~np.uint16(LENGTH_MASK))
    ends_c2 = flagged[(flags & ENDS_C2 != 0) & (flagged + 1 < len(entries))]
    hits = np.concatenate([flagged[flags & CONTROL != 0], ends_c2[entries[ends_c2 + 1] & STARTS_C1_TAIL != 0]])
    docs = sorted(set((np.searchsorted(starts, hits, side="right") - 1).tolist()))  # np.unique imports numpy.ma: 57 ms
    return nbytes, np.array(docs, np.int64)


def table(folder: Path, spec_path: Path, vocab_size: int, encode: Encode, probes: list[str]) -> np.ndarray | None:
    """The proven lookup for the tokenizer at ``spec_path``, cached in ``folder`` (its verdict too)."""
    cached, verdict = folder / "bytelevel.npy", folder / "bytelevel.json"
    if verdict.is_file():
        return np.load(cached) if json.loads(verdict.read_text())["exact"] else None
    lookup = build(json.loads(spec_path.read_bytes()), vocab_size)
    exact = lookup is not None and prove(lookup, encode, probes)
    if lookup is not None and not exact:
        log.warning("the byte-level lookup of %s failed its check: cleaning every document before tokenizing",
                    spec_path)
    if exact:
        tmp = cached.with_name(f".{cached.name}.tmp{os.getpid()}.npy")
        np.save(tmp, lookup)
        os.replace(tmp, cached)
    tmp = verdict.with_name(f".{verdict.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps({"exact": exact}))
    os.replace(tmp, verdict)
    return lookup if exact else None
