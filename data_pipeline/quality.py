"""Heuristic quality filters on cleaned text: Gopher repetition and quality rules, C4 line filters,
a cap on the fraction of non-letter characters. Each is optional; a dropped document is counted
under ``<filter>.<rule>`` (e.g. ``gopher_quality.word_count``) like any other reject.

The rules and default thresholds are those of Gopher (Rae et al. 2021, appendix A.1.1) and C4
(Raffel et al. 2020, section 2.2), as re-implemented in FineWeb/datatrove. Where a rule counts
words, languages written without spaces (Chinese, Japanese, Thai, ...: see
:func:`data_pipeline.neardedup.uses_chars`) count each letter as a word and get their own
thresholds (:data:`CHAR_LANG_OVERRIDES`): otherwise "mean word length >= 3" or "a line needs 3 words"
would drop all of them. Stop-word rules apply only to languages with a stop-word list.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np

from data_pipeline.neardedup import splitmix64, uses_chars, word_chars

FILTERS = ("gopher_repetition", "gopher_quality", "c4", "non_letter")


@dataclass(frozen=True)
class Thresholds:
    # Gopher repetition: fractions above these drop the document
    dup_line_frac: float = 0.30
    dup_para_frac: float = 0.30
    dup_line_char_frac: float = 0.20
    dup_para_char_frac: float = 0.20
    top_ngram_char_frac: tuple[tuple[int, float], ...] = ((2, 0.20), (3, 0.18), (4, 0.16))
    dup_ngram_char_frac: tuple[tuple[int, float], ...] = ((5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10))
    # Gopher quality
    min_words: int = 50
    max_words: int = 100_000
    min_mean_word_len: float | None = 3.0  # None: rule off
    max_mean_word_len: float | None = 10.0
    max_symbol_word_ratio: float = 0.10  # '#' and ellipses per word
    max_bullet_lines_frac: float = 0.90
    max_ellipsis_lines_frac: float = 0.30
    min_alpha_words_frac: float = 0.80
    min_stop_words: int = 2  # only for languages in STOP_WORDS
    # C4
    c4_min_words_per_line: int = 3
    c4_min_sentences: int = 5
    c4_curly_bracket: bool = False  # C4 drops any page with '{' (code); off: this pipeline also takes code
    # non-letter
    max_non_letter_frac: float = 0.5


# Each letter is a word in these languages: Chinese words average ~1.5 characters, so word-count
# rules scale by ~2, and n-gram repetition looks at longer character runs.
CHAR_LANG_OVERRIDES = dict(
    min_words=100, max_words=200_000, min_mean_word_len=None, max_mean_word_len=None, c4_min_words_per_line=5,
    top_ngram_char_frac=((4, 0.20), (6, 0.18), (8, 0.16)),
    dup_ngram_char_frac=((10, 0.15), (12, 0.14), (14, 0.13), (16, 0.12), (18, 0.11), (20, 0.10)),
)
STOP_WORDS = {"en": frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})}
_TERMINAL = tuple('.!?"\'…。！？」』”’）)')
_POLICY = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies")
_BULLETS = ("•", "●", "○", "◦", "‣", "⁃", "▪", "-", "*", "–")
_SENTENCE_END = re.compile(r"[.!?。！？…]+(?:\s|$)|[。！？]")


@dataclass(frozen=True)
class QualityConfig:
    filters: tuple[str, ...] = ()  # any of FILTERS
    thresholds: Thresholds = field(default_factory=Thresholds)

    def __post_init__(self) -> None:
        bad = [f for f in self.filters if f not in FILTERS]
        if bad:
            raise ValueError(f"unknown quality filter(s) {bad}; choose from {', '.join(FILTERS)} or all")

    def for_lang(self, lang: str | None) -> Thresholds:
        if not uses_chars(lang):
            return self.thresholds
        # more punctuation per character where a character carries ~1.5 words
        margin = min(1.0, self.thresholds.max_non_letter_frac + 0.1)
        return replace(self.thresholds, **CHAR_LANG_OVERRIDES, max_non_letter_frac=margin)


def _word_ids(text: str, by_chars: bool) -> tuple[np.ndarray, np.ndarray]:
    """(id, length in characters) of each word: whitespace-separated words, or each letter where
    words have no spaces (its code point is its id)."""
    if by_chars:
        cps = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        letters = cps[word_chars()[cps]].astype(np.int64)
        return letters, np.ones(len(letters), dtype=np.int64)
    words = text.split()
    ids: dict[str, int] = {}
    wid = np.fromiter((ids.setdefault(w, len(ids)) for w in words), dtype=np.int64, count=len(words))
    return wid, np.fromiter(map(len, words), dtype=np.int64, count=len(words))


def _ngram_hashes(wid: np.ndarray, sizes: list[int]) -> dict[int, np.ndarray]:
    """For each n in ``sizes``, a 64-bit hash per word n-gram (order-sensitive; collisions ~m^2/2^65),
    built incrementally: the (n+1)-gram's hash is the n-gram's plus its last word mixed with n."""
    out: dict[int, np.ndarray] = {}
    h = np.zeros(len(wid), dtype=np.uint64)
    base = wid.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        for n in range(1, max(sizes) + 1):
            m = len(wid) - n + 1
            if m <= 0:
                break
            h = h[:m] + splitmix64(base[n - 1 : n - 1 + m] + np.uint64(n))
            if n in sizes:
                out[n] = h
    return out


def gopher_repetition(text: str, lang: str | None, t: Thresholds) -> str | None:
    lines = [x for x in text.split("\n") if x.strip()]
    paras = [x for x in re.split(r"\n\s*\n", text) if x.strip()]
    total = max(len(text), 1)
    for name, items, frac, char_frac in (("para", paras, t.dup_para_frac, t.dup_para_char_frac),
                                         ("line", lines, t.dup_line_frac, t.dup_line_char_frac)):
        seen: set[str] = set()
        dup = dup_chars = 0
        for x in items:
            if x in seen:
                dup, dup_chars = dup + 1, dup_chars + len(x)
            seen.add(x)
        if items and dup / len(items) > frac:
            return f"dup_{name}_frac"
        if dup_chars / total > char_frac:
            return f"dup_{name}_char_frac"
    wid, lens = _word_ids(text, uses_chars(lang))
    if not len(wid):
        return None
    chars = int(lens.sum())
    cum = np.r_[0, np.cumsum(lens)]
    grams = _ngram_hashes(wid, [n for n, _ in t.top_ngram_char_frac + t.dup_ngram_char_frac])
    for n, limit in t.top_ngram_char_frac:
        h = grams.get(n)
        if h is None:
            continue
        _, first, counts = np.unique(h, return_index=True, return_counts=True)
        top = int(counts.argmax())
        if counts[top] > 1 and (cum[first[top] + n] - cum[first[top]]) * counts[top] / chars > limit:
            return "top_ngram_char_frac"
    for n, limit in t.dup_ngram_char_frac:  # ascending n: no repeated n-gram, no longer one either
        h = grams.get(n)
        if h is None:
            break
        _, first = np.unique(h, return_index=True)
        repeat = np.ones(len(h), dtype=bool)
        repeat[first] = False
        if not repeat.any():
            break
        covered = np.zeros(len(wid) + 1, dtype=np.int64)  # words inside a repeated n-gram, counted once
        starts = np.flatnonzero(repeat)
        np.add.at(covered, starts, 1)
        np.add.at(covered, starts + n, -1)
        if lens[np.cumsum(covered)[: len(wid)] > 0].sum() / chars > limit:
            return "dup_ngram_char_frac"
    return None


_HAS_WORD_CHAR = re.compile(r"\w").search
_HAS_LETTER = re.compile(r"[^\W\d_]").search


def gopher_quality(text: str, lang: str | None, t: Thresholds) -> str | None:
    by_chars = uses_chars(lang)
    if by_chars:
        words: list[str] = []
        n = len(_word_ids(text, True)[0])
    else:
        words = [w for w in text.split() if _HAS_WORD_CHAR(w)]  # symbols alone are not words
        n = len(words)
    if n < t.min_words or n > t.max_words:
        return "word_count"
    if t.min_mean_word_len is not None and words:
        mean = sum(map(len, words)) / n
        if mean < t.min_mean_word_len or (t.max_mean_word_len is not None and mean > t.max_mean_word_len):
            return "mean_word_length"
    if (text.count("#") + text.count("...") + text.count("…")) / n > t.max_symbol_word_ratio:
        return "symbol_word_ratio"
    lines = [x.strip() for x in text.split("\n") if x.strip()]
    if lines:
        if sum(x.startswith(_BULLETS) for x in lines) / len(lines) > t.max_bullet_lines_frac:
            return "bullet_lines"
        if sum(x.endswith(("...", "…")) for x in lines) / len(lines) > t.max_ellipsis_lines_frac:
            return "ellipsis_lines"
    if not by_chars:
        raw = text.split()
        if raw and sum(1 for w in raw if _HAS_LETTER(w)) / len(raw) < t.min_alpha_words_frac:
            return "alpha_words"
    stop = STOP_WORDS.get((lang or "").split("-")[0])
    if stop and sum(w.lower() in stop for w in words) < t.min_stop_words:
        return "stop_words"
    return None


def c4_lines(text: str, lang: str | None, t: Thresholds) -> tuple[str | None, str]:
    """(reason or None, the text with C4's line filters applied)."""
    low = text.lower()
    if "lorem ipsum" in low:
        return "lorem_ipsum", text
    if t.c4_curly_bracket and "{" in text:
        return "curly_bracket", text
    by_chars = uses_chars(lang)
    kept = []
    for line in text.split("\n"):
        s = line.strip()
        if not s:
            kept.append(line)  # paragraph breaks stay
            continue
        ls = s.lower()
        if not s.endswith(_TERMINAL) or "javascript" in ls or any(p in ls for p in _POLICY):
            continue
        if (len(_word_ids(s, True)[0]) if by_chars else len(s.split())) < t.c4_min_words_per_line:
            continue
        kept.append(line)
    out = re.sub(r"\n{3,}", "\n\n", "\n".join(kept)).strip("\n")
    if not out.strip():
        return "no_lines_left", text
    if len(_SENTENCE_END.findall(out)) < t.c4_min_sentences:
        return "too_few_sentences", text
    return None, out


def non_letter(text: str, lang: str | None, t: Thresholds) -> str | None:
    cps = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    visible = cps[~np.isin(cps, (9, 10, 13, 32, 0xA0, 0x3000))]
    if len(visible) and 1.0 - word_chars()[visible].mean() + _digits(visible) > t.max_non_letter_frac:
        return "fraction"
    return None


def _digits(cps: np.ndarray) -> float:
    """Digits are word characters but not letters: ASCII digits counted back in (others are rare)."""
    return float(((cps >= 48) & (cps <= 57)).mean())


_CHECKS: dict[str, Callable] = {"gopher_repetition": gopher_repetition, "gopher_quality": gopher_quality, "non_letter": non_letter}


def apply(config: QualityConfig, text: str, lang: str | None) -> tuple[str | None, str]:
    """(drop reason or None, text): the enabled filters in the order C4 (which may shorten the text),
    Gopher repetition, Gopher quality, non-letter."""
    t = config.for_lang(lang)
    if "c4" in config.filters:
        reason, text = c4_lines(text, lang, t)
        if reason:
            return f"c4.{reason}", text
    for name in ("gopher_repetition", "gopher_quality", "non_letter"):
        if name in config.filters and (reason := _CHECKS[name](text, lang, t)):
            return f"{name}.{reason}", text
    return None, text


def parse_filters(text: str) -> tuple[str, ...]:
    """``--quality`` value: comma-separated filter names or ``all``."""
    names = tuple(x.strip() for x in text.split(",") if x.strip())
    return FILTERS if names == ("all",) else names
