"""Near-duplicate removal: MinHash signatures, LSH banding, clusters resolved by a fixed rule.

Three stages, so that the work spans any number of Slurm tasks and no stage holds texts in RAM:

1. **signatures** (``prepare``, per input file, beside the tokenized shard): each kept document's
   MinHash over its shingles, ``num_perm`` uint32 values, in ``shards/<file>/sig.npy``.
2. **buckets** (``buckets``, per band; any task takes any band): the rows of one band of every
   signature hashed to a 64-bit key, sorted; documents sharing a key are candidates, kept as an
   edge to the bucket's first document when their signatures agree on at least ``threshold`` of
   the positions (an unbiased estimate of their Jaccard similarity) -> ``neardedup/band-J-<run>.npy``.
3. **clusters** (``merge``): the connected components of all bands' edges. Rule: in each cluster
   the document first in input order (file order, then line) is kept; the others are dropped as
   ``near_duplicate`` (an exact copy of an earlier file's document stays ``duplicate``).

Shingles are language-aware: ``ngram`` consecutive words (runs of letters, marks and digits,
lower-cased) for languages written with spaces, ``char_ngram`` consecutive letters (spaces and
punctuation skipped) for Chinese, Japanese, Thai, Lao, Khmer, Burmese and Tibetan, which have no
spaces between words; shingles stay within a line, so reordered paragraphs do not lower the
similarity.
Hashing is vectorised in numpy over a whole batch (a per-codepoint 64-bit mix, words summed with
their positions, shingles combined from their words' hashes), MinHash as one-permutation hashing
with optimal densification (one hash per shingle): see
docs/data-pipeline.md#near-duplicates-quality-filters-slurm-arrays for why no MinHash library is used.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np

# Languages without spaces between words (base code before '-'): shingles of characters.
CHAR_LANGS = frozenset({"zh", "ja", "th", "lo", "km", "my", "bo", "yue", "wuu"})
_M = np.uint64(0xFFFFFFFFFFFFFFFF)


@dataclass(frozen=True)
class NearDedupConfig:
    threshold: float = 0.7  # estimated Jaccard similarity of shingle sets at which two documents are near-duplicates
    num_perm: int = 128  # MinHash values per document (4 bytes each on disk)
    ngram: int = 5  # words per shingle (languages with spaces)
    char_ngram: int = 5  # characters per shingle (zh, ja, th, ...)
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"near-dedup threshold {self.threshold} is not in (0, 1]; e.g. --near-dedup-threshold 0.8")
        if self.num_perm < 2 or self.ngram < 1 or self.char_ngram < 1:
            raise ValueError(f"near-dedup: num_perm >= 2, ngram >= 1 and char_ngram >= 1 needed, got {self}")

    @property
    def bands(self) -> tuple[int, int]:
        """(bands, rows per band): see :func:`lsh_params`."""
        return lsh_params(self.threshold, self.num_perm)


@lru_cache(maxsize=None)
def lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """(b, r) with b*r <= num_perm minimising the probability mass of false positives (pairs below
    ``threshold`` that share a band) plus false negatives (pairs above it that share none), the
    rule of datasketch's MinHashLSH; a pair of similarity s shares a band with probability
    1 - (1 - s^r)^b."""
    best, best_err = (1, 1), float("inf")
    s_lo, s_hi = np.linspace(0.0, threshold, 400), np.linspace(threshold, 1.0, 400)
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            fp = np.trapezoid(1 - (1 - s_lo**r) ** b, s_lo)
            fn = np.trapezoid((1 - s_hi**r) ** b, s_hi)
            if fp + fn < best_err:
                best, best_err = (b, r), fp + fn
    return best


def splitmix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, elementwise (wrapping uint64 arithmetic)."""
    with np.errstate(over="ignore"):
        x = x.astype(np.uint64, copy=True)
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return x


@lru_cache(maxsize=1)
def word_chars() -> np.ndarray:
    """Per Unicode code point: is it part of a word (letters, combining marks, digits)? Marks count, so
    Hindi or Thai vowel signs do not split words."""
    import unicodedata

    table = np.zeros(0x110000, dtype=bool)
    # assigned planes 0-3 (surrogates and private use skipped) and plane 14's variation selectors;
    # the rest of the 1.1M code points is unassigned or private
    for cp in (*range(0xD800), *range(0xF900, 0x323B0), *range(0xE0100, 0xE01F0)):
        table[cp] = unicodedata.category(chr(cp))[0] in "LMN"
    return table


def _densify_order(config: NearDedupConfig, attempts: int = 64) -> np.ndarray:
    """Per attempt t and bin j, the bin an empty bin j borrows from (optimal densification)."""
    rng = np.random.Generator(np.random.PCG64(config.seed))
    return rng.integers(0, config.num_perm, size=(attempts, config.num_perm))


def uses_chars(lang: str | None) -> bool:
    return (lang or "").lower().split("-")[0].split("_")[0] in CHAR_LANGS


def shingle_hashes(texts: Sequence[str], langs: Sequence[str | None], config: NearDedupConfig) -> tuple[np.ndarray, np.ndarray]:
    """(shingle hashes, document index of each) for a batch, documents in order."""
    hashes, owners = [], []
    for by_chars in (False, True):
        idx = [i for i, lang in enumerate(langs) if uses_chars(lang) == by_chars]
        if idx:
            h, d = _batch_shingles([texts[i].lower() for i in idx], config.char_ngram if by_chars else config.ngram, by_chars)
            hashes.append(h)
            owners.append(np.asarray(idx, dtype=np.int64)[d])
    h, d = np.concatenate(hashes), np.concatenate(owners)
    order = np.argsort(d, kind="stable")
    return h[order], d[order]


def _batch_shingles(texts: list[str], n: int, by_chars: bool) -> tuple[np.ndarray, np.ndarray]:
    joined = "\n".join(texts)
    cps = np.frombuffer(joined.encode("utf-32-le"), dtype=np.uint32)
    lens = np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts))
    doc_of = np.repeat(np.arange(len(texts)), lens + 1)[: len(cps)]  # the '\n' after a text belongs to it
    is_w = word_chars()[cps]
    pos = np.flatnonzero(is_w)
    if by_chars:  # units: single letters; punctuation and spaces skipped
        unit_hash, unit_doc = splitmix64(cps[pos].astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)), doc_of[pos]
    else:  # units: words, hashed from their letters and the letters' positions in the word
        starts = pos[np.r_[True, pos[1:] != pos[:-1] + 1]] if len(pos) else pos
        word_of = np.searchsorted(starts, pos, side="right") - 1
        in_word = pos - starts[word_of]
        with np.errstate(over="ignore"):
            char_hash = splitmix64(cps[pos].astype(np.uint64) ^ (in_word.astype(np.uint64) << np.uint64(32)))
        first = np.searchsorted(pos, starts)
        unit_hash = np.add.reduceat(char_hash, first) if len(first) else np.zeros(0, np.uint64)
        unit_doc = doc_of[starts]
    # shingles: n consecutive units of one line (texts are joined by newlines, so a line is in one
    # document), each unit mixed with its place in the shingle; a line of fewer units is one shingle.
    # Shingles never span lines, so reordered paragraphs or lines leave the shingle set as it was.
    unit_pos = pos if by_chars else starts
    unit_line = np.cumsum(cps == 10)[unit_pos] if len(unit_pos) else np.zeros(0, np.int64)
    m = len(unit_hash) - n + 1
    parts_h, parts_d = [], []
    if m > 0:
        with np.errstate(over="ignore"):
            sh = np.zeros(m, dtype=np.uint64)
            for k in range(n):
                sh += splitmix64(unit_hash[k : k + m] + np.uint64(k + 1))
        ok = unit_line[:m] == unit_line[n - 1 :]
        parts_h.append(sh[ok])
        parts_d.append(unit_doc[:m][ok])
    if len(unit_hash):
        first = np.flatnonzero(np.r_[True, unit_line[1:] != unit_line[:-1]])
        count = np.diff(np.r_[first, len(unit_hash)])
        short = count < n
        if short.any():
            k = np.arange(len(unit_hash)) - np.repeat(first, count)
            with np.errstate(over="ignore"):
                whole = np.add.reduceat(splitmix64(unit_hash + (k + 1).astype(np.uint64)), first)
            parts_h.append(whole[short])
            parts_d.append(unit_doc[first[short]])
    sh = np.concatenate(parts_h) if parts_h else np.zeros(0, np.uint64)
    sh_doc = np.concatenate(parts_d) if parts_d else np.zeros(0, np.int64)
    bare = np.setdiff1d(np.arange(len(texts)), sh_doc)  # no letter or digit at all: the whole text
    if len(bare):
        import hashlib

        whole = [int.from_bytes(hashlib.blake2b(texts[i].encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")
                 for i in bare]
        sh, sh_doc = np.concatenate([sh, np.array(whole, dtype=np.uint64)]), np.concatenate([sh_doc, bare])
    return sh, sh_doc


def signatures(texts: Sequence[str], langs: Sequence[str | None], config: NearDedupConfig) -> np.ndarray:
    """One-permutation MinHash signatures with optimal densification, shape (len(texts), num_perm),
    uint32: each shingle's 64-bit hash picks a bin (high bits) and a value (low 32 bits); a bin keeps
    its minimum; an empty bin takes the value of the bin a fixed random sequence points it to first
    that is not empty. Two documents then agree on a position with probability their Jaccard
    similarity, as with classic MinHash (Shrivastava 2017), at one hash per shingle instead of
    ``num_perm``."""
    n, p = len(texts), config.num_perm
    empty = np.iinfo(np.uint32).max
    out = np.full((n, p), empty, dtype=np.uint32)
    if not n:
        return out
    h, d = shingle_hashes(texts, langs, config)
    with np.errstate(over="ignore"):
        h = splitmix64(h ^ np.uint64((config.seed * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019) & 0xFFFFFFFFFFFFFFFF))
    cell = d * p + ((h >> np.uint64(32)) % np.uint64(p)).astype(np.int64)
    np.minimum.at(out.reshape(-1), cell, (h & np.uint64(0xFFFFFFFF)).astype(np.uint32))
    # a value of exactly 2^32-1 is indistinguishable from empty: harmless (it also borrows)
    hole = out == empty
    if hole.any():
        rows = np.flatnonzero(hole.any(axis=1))
        src, need = out[rows], hole[rows]
        filled = src.copy()
        for bins in _densify_order(config):
            cand = src[:, bins]
            take = need & (cand != empty)
            filled[take] = cand[take]
            need &= ~take
            if not need.any():
                break
        out[rows] = filled
    return out


def band_keys(sig: np.ndarray, band: int, rows: int) -> np.ndarray:
    """One 64-bit key per signature for band ``band`` (rows ``band*rows`` .. ``+rows``)."""
    cols = np.asarray(sig[:, band * rows : (band + 1) * rows], dtype=np.uint64)
    key = np.full(len(cols), band + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(rows):
            key = splitmix64(key * np.uint64(0x100000001B3) + cols[:, j])
    return key


class SignatureStore:
    """Every shard's ``sig.npy``, memory-mapped, as one array of rows in input order (global ids)."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.parts = [np.load(p, mmap_mode="r") for p in paths]
        self.offsets = np.cumsum([0] + [len(p) for p in self.parts])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def band_keys(self, band: int, rows: int) -> np.ndarray:
        return np.concatenate([band_keys(p, band, rows) for p in self.parts]) if self.parts else np.zeros(0, np.uint64)

    def rows(self, ids: np.ndarray) -> np.ndarray:
        part = np.searchsorted(self.offsets, ids, side="right") - 1
        out = np.empty((len(ids), self.parts[0].shape[1] if self.parts else 0), dtype=np.uint32)
        for p in np.unique(part):
            sel = part == p
            out[sel] = self.parts[p][ids[sel] - self.offsets[p]]
        return out


def band_edges(store: SignatureStore, band: int, config: NearDedupConfig, chunk: int = 1 << 18) -> np.ndarray:
    """Edges (first, other) of one band, shape (k, 2) int64: documents sharing this band's key with an
    earlier document, linked to the first of them when their signatures agree on >= threshold."""
    _, rows = config.bands
    keys = store.band_keys(band, rows)
    order = np.argsort(keys, kind="stable")  # stable: within a bucket, ids ascend
    sk = keys[order]
    same = np.r_[False, sk[1:] == sk[:-1]]
    if not same.any():
        return np.zeros((0, 2), dtype=np.int64)
    head = np.maximum.accumulate(np.where(~same, np.arange(len(sk)), 0))  # index of each bucket's first
    others = np.flatnonzero(same)
    a, b = order[head[others]], order[others]
    keep = np.zeros(len(a), dtype=bool)
    for i in range(0, len(a), chunk):  # verify: estimated Jaccard >= threshold
        agree = (store.rows(a[i : i + chunk]) == store.rows(b[i : i + chunk])).mean(axis=1)
        keep[i : i + chunk] = agree >= config.threshold
    return np.stack([a[keep], b[keep]], axis=1).astype(np.int64)


def components(n: int, edges: np.ndarray) -> np.ndarray:
    """Per document, the smallest id of its connected component (label propagation with pointer
    jumping; memory: 8 bytes per document)."""
    label = np.arange(n, dtype=np.int64)
    if len(edges) == 0:
        return label
    a, b = edges[:, 0], edges[:, 1]
    while True:
        m = np.minimum(label[a], label[b])
        before = label.copy()
        np.minimum.at(label, a, m)
        np.minimum.at(label, b, m)
        while True:  # pointer jumping: label[label] until stable
            nxt = label[label]
            if np.array_equal(nxt, label):
                break
            label = nxt
        if np.array_equal(label, before):
            return label


def band_path(out: Path, band: int, run: str) -> Path:
    return out / "neardedup" / f"band-{band:03d}-{run}.npy"


def run_buckets(out: Path, sig_paths: Sequence[Path], config: NearDedupConfig, run: str, bands: Sequence[int]) -> list[Path]:
    """The buckets stage for ``bands`` (those not already on disk for this run): one edges file each."""
    store = None
    written = []
    for band in bands:
        path = band_path(out, band, run)
        if path.is_file():
            continue
        store = store or SignatureStore(sig_paths)
        edges = band_edges(store, band, config)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.npy")
        np.save(tmp, edges)
        os.replace(tmp, path)
        written.append(path)
    return written


def cluster_labels(out: Path, n_docs: int, config: NearDedupConfig, run: str) -> np.ndarray:
    """The clusters stage: component labels from every band's edges (all bands must be done)."""
    bands, _ = config.bands
    missing = [b for b in range(bands) if not band_path(out, b, run).is_file()]
    if missing:
        raise RuntimeError(f"near-dedup bands {missing[:8]}{'...' if len(missing) > 8 else ''} of run {run} are not done; "
                           "run `python -m data_pipeline buckets OUT` (or merge, which does them)")
    edges = np.concatenate([np.load(band_path(out, b, run)) for b in range(bands)] or [np.zeros((0, 2), np.int64)])
    return components(n_docs, edges)
