"""Data at scale (issue 17): near-duplicate detection quality, quality filters' counts, Slurm array
tasks + merge byte-identical to one machine, a killed task's rerun, slurm/prepare_data.sh.

Inputs are the bundled sample (qwenpt/assets/sample, GPL-2+, see its COPYRIGHT) and crafted text.
"""

from __future__ import annotations

import random
import re
from collections import Counter

import numpy as np
import pytest

from data_pipeline.clean import CleanConfig, Cleaner
from data_pipeline.neardedup import (
    NearDedupConfig, SignatureStore, band_edges, components, lsh_params, shingle_hashes, signatures, uses_chars,
)
from data_pipeline.prepare import PrepareConfig, prepare
from data_pipeline.quality import FILTERS, QualityConfig, Thresholds
from data_pipeline.readers import Record, Rejects
from data_pipeline.tasks import TaskSplit, merge
from qwenpt.data import BUNDLED_TOKENIZER

from helpers.data_scale import _config, _corpus, sample, write_jsonl

LANGS = ("de", "en", "es", "fr", "id", "it", "ja", "pt", "zh-cn", "zh-tw")


# --- near-duplicates: the synthetic set ------------------------------------------------------------

BOILERPLATE = ("Home | About us | Contact | Privacy policy | Terms of use\n"
               "Subscribe to our newsletter for the latest updates. All rights reserved.")


def _edit(text: str, lang: str, frac: float, rng: random.Random) -> str:
    """Replace ``frac`` of the tokens (words; characters where words have no spaces)."""
    if uses_chars(lang):
        chars = list(text)
        idx = [i for i, c in enumerate(chars) if not c.isspace()]
        for i in rng.sample(idx, int(len(idx) * frac)):
            chars[i] = rng.choice("的一是在不了有和人这中大为上个国我以要他")
        return "".join(chars)
    tokens = re.split(r"(\s+)", text)
    idx = [i for i, t in enumerate(tokens) if t.strip()]
    for i in rng.sample(idx, int(len(idx) * frac)):
        tokens[i] = rng.choice(["alpha", "beta", "gamma", "delta", "omega", "zeta"])
    return "".join(tokens)


def _reorder(text: str, rng: random.Random) -> str:
    paragraphs = text.split("\n\n")
    rng.shuffle(paragraphs)
    return "\n\n".join(paragraphs)


EDITS = {
    "1%": lambda t, lang, rng: _edit(t, lang, 0.01, rng),
    "5%": lambda t, lang, rng: _edit(t, lang, 0.05, rng),
    "20%": lambda t, lang, rng: _edit(t, lang, 0.20, rng),
    "reordered": lambda t, lang, rng: _reorder(t, rng),
    "boilerplate": lambda t, lang, rng: f"{BOILERPLATE}\n\n{t}\n\n{BOILERPLATE}",
}


def synthetic_set(seed: int = 0) -> list[tuple[str, str, int, str]]:
    """(text, lang, original's index, edit) for the 120 sample documents and 5 edited copies of each."""
    rng = random.Random(seed)
    items = []
    for lang in LANGS:
        for d in sample(lang):
            n = len(items) // 6
            items.append((d["text"], lang, n, "original"))
            items += [(edit(d["text"], lang, rng), lang, n, name) for name, edit in EDITS.items()]
    return items


def test_near_dup_precision_recall_on_synthetic_set(tmp_path):
    """At the default threshold, on 120 originals in 10 languages (incl. Chinese and Japanese) x 5
    edits: the documents dropped are exactly the copies whose true shingle Jaccard similarity with
    their original reaches the threshold (precision, recall >= 0.95), clusters never mix originals,
    every original is kept; by edit: 1 %, reordered and boilerplate copies found, 20 % never."""
    config = NearDedupConfig()
    assert config.threshold == 0.7 and lsh_params(0.7, 128) == (14, 9) == config.bands  # datasketch's choice too
    items = synthetic_set()
    texts, langs = [x[0] for x in items], [x[1] for x in items]
    sig = np.concatenate([signatures(texts[i : i + 64], langs[i : i + 64], config) for i in range(0, len(items), 64)])
    assert np.array_equal(sig[:6], signatures(texts[:6], langs[:6], config))  # batching changes nothing
    np.save(tmp_path / "a.npy", sig[:300])
    np.save(tmp_path / "b.npy", sig[300:])  # two shards, as on disk
    store = SignatureStore([tmp_path / "a.npy", tmp_path / "b.npy"])
    edges = np.concatenate([band_edges(store, b, config) for b in range(config.bands[0])])
    label = components(len(items), edges)

    original = np.array([x[2] for x in items])
    kind = np.array([x[3] for x in items])
    dropped = label != np.arange(len(items))
    assert not dropped[kind == "original"].any()
    assert (original[label] == original).all()  # no cluster joins two different originals

    h, d = shingle_hashes(texts, langs, config)
    sets = [set(h[d == i].tolist()) for i in range(len(items))]
    jaccard = np.array([len(sets[i] & sets[i - k]) / len(sets[i] | sets[i - k])
                        for i, k in ((i, list(EDITS).index(x[3]) + 1 if x[3] != "original" else 0) for i, x in enumerate(items))])
    truth = (kind != "original") & (jaccard >= config.threshold)
    precision = (dropped & truth).sum() / dropped.sum()
    recall = (dropped & truth).sum() / truth.sum()
    by_edit = {k: float(dropped[kind == k].mean()) for k in EDITS}
    print(f"near-dup: precision {precision:.3f} recall {recall:.3f} ({truth.sum()} true pairs); detected by edit {by_edit}")
    assert precision >= 0.95 and recall >= 0.95
    assert by_edit["1%"] >= 0.95 and by_edit["reordered"] == 1.0 and by_edit["boilerplate"] >= 0.95
    assert by_edit["20%"] == 0.0 and by_edit["5%"] <= 0.3
    cjk = np.isin(np.array(langs), ["ja", "zh-cn", "zh-tw"])
    assert dropped[cjk & (kind == "1%")].mean() >= 0.95  # character shingles work where there are no spaces


# --- quality filters -------------------------------------------------------------------------------

GOOD = (
    "The river town wakes early, and the bakers open their doors before the sun is up.\n"
    "Fishermen carry nets to the harbour while children walk to the small school by the church.\n"
    "Most visitors come in summer to swim in the clear water and to climb the hills behind the houses.\n"
    "In winter the streets are quiet, the cafes close at six, and the old ferry runs only twice a week.\n"
    "A local museum tells the story of the salt trade that made the town rich three centuries ago.\n"
    "Its collection includes maps, letters and tools that were found in the cellars of merchant homes.\n"
    "Every autumn there is a festival with music, boats decorated with lanterns and long tables of food."
)
GOOD_ZH = ("河边的小镇很早就醒来了，面包师在太阳升起之前就打开了店门。渔民们把渔网搬到港口，孩子们走路去教堂旁边的小学。"
           "大多数游客在夏天来到这里，在清澈的水里游泳，爬上房子后面的小山。冬天街道很安静，咖啡馆六点就关门，老渡轮每周只开两次。"
           "当地的博物馆讲述了三百年前让小镇致富的盐业贸易的故事。每年秋天都有音乐节，船上挂满灯笼，长桌上摆满食物。")
_STOP = re.compile(r"\b(the|The|and|to|of|with|that)\b ?")
_rng = random.Random(0)
_SHORT = " ".join(_rng.choice(["a", "I", "an", "on", "at", "so", "we", "go", "up", "us", "it", "do", "no", "my", "by", "to", "be"])
                  for _ in range(120))
# (text, lang, reason with every filter on, reason of each filter alone)
CRAFTED = [
    (GOOD, "en", None, {}),
    (GOOD_ZH, "zh-cn", None, {}),
    ("天很冷。我们在家。茶很热。书很好看。夜晚来了。", "zh-cn", "gopher_quality.word_count", {"gopher_quality": "word_count"}),
    (GOOD + "\nLorem ipsum dolor sit amet, consectetur adipiscing elit.", "en", "c4.lorem_ipsum", {"c4": "lorem_ipsum"}),
    ("The river town wakes early with the bakers.\nFishermen carry nets to the harbour today.", "en",
     "c4.too_few_sentences", {"c4": "too_few_sentences", "gopher_quality": "word_count"}),
    (GOOD + "\nSubscribe now for weekly news from the river town." * 6, "en",
     "gopher_repetition.dup_line_frac", {"gopher_repetition": "dup_line_frac"}),
    ("\n\n".join([GOOD] + ["Read more stories about life in the river town today."] * 3), "en",
     "gopher_repetition.dup_para_frac", {"gopher_repetition": "dup_para_frac"}),
    ("It rains. We stay in. Tea is hot. Books are fun. Night falls.", "en",
     "gopher_quality.word_count", {"gopher_quality": "word_count"}),
    (_STOP.sub("", GOOD), "en", "gopher_quality.stop_words", {"gopher_quality": "stop_words"}),
    (". ".join(_SHORT[i : i + 40] for i in range(0, len(_SHORT), 40)) + ".", "en",
     "gopher_quality.mean_word_length", {"gopher_quality": "mean_word_length"}),
    (GOOD + "\n" + " ".join(f"{i:04d}={i * 7:05d};" for i in range(60)) + ".", "en",
     "gopher_quality.alpha_words", {"gopher_quality": "alpha_words", "non_letter": "fraction"}),
    (GOOD + "\nThis site uses cookies to improve your experience.\nPlease enable JavaScript to view the map.\nMenu",
     "en", None, {}),  # C4 drops those three lines and keeps the document
]


def test_each_quality_filter_counts_its_drops_and_cjk_survives(tmp_path, tokenizer):
    """Each filter alone drops exactly the crafted documents made for it, under its rule's name; all
    together (through prepare) the manifest counts them by reason, language and source; C4 removes
    boilerplate lines from a kept document; most of the sample's Chinese and Japanese passes all."""
    for name in FILTERS:
        cleaner, rejects = Cleaner(CleanConfig(quality=QualityConfig((name,)))), Rejects()
        kept = [cleaner(Record(text, lang, "crafted", "crafted.jsonl", i + 1), rejects) for i, (text, lang, _, _) in enumerate(CRAFTED)]
        expected = Counter(f"{name}.{alone[name]}" for _, _, _, alone in CRAFTED if name in alone)
        assert rejects.by_reason() == expected, name
        assert sum(k is not None for k in kept) == len(CRAFTED) - sum(expected.values())

    src = tmp_path / "src"
    src.mkdir()
    write_jsonl(src / "crafted.jsonl", [{"text": t, "lang": lang, "source": "crafted"} for t, lang, _, _ in CRAFTED])
    write_jsonl(src / "cjk.jsonl", sample("zh-cn") + sample("ja"))
    clean = CleanConfig(quality=QualityConfig(FILTERS))
    m = prepare(PrepareConfig(inputs=(str(src),), output=str(tmp_path / "out"), tokenizer=str(BUNDLED_TOKENIZER),
                              clean=clean, progress=False), tokenizer)
    rows = {(r["lang"], r["source"]): r for r in m.table.to_pylist()}
    crafted_en = Counter(reason for _, lang, reason, _ in CRAFTED if reason and lang == "en")
    assert dict(rows[("en", "crafted")]["drops"]) == crafted_en
    assert dict(rows[("zh-cn", "crafted")]["drops"]) == {"gopher_quality.word_count": 1}
    assert rows[("en", "crafted")]["documents"] == 2 and rows[("zh-cn", "crafted")]["documents"] == 1
    assert rows[("en", "crafted")]["bytes"] == 2 * len(GOOD.encode())  # the cookie document lost its 3 lines
    kept = {lang: rows[(lang, "debian-reference")]["documents"] for lang in ("zh-cn", "ja")}
    assert kept == {"zh-cn": 10, "ja": 9}, kept  # of 12 each: not dropped wholesale


# --- tasks, merge, a killed task -------------------------------------------------------------------


def test_tasks_without_near_dedup_equal_the_classic_run(tmp_path, tokenizer):
    """Exact dedup across files moves to merge in a multi-task run; the datasets are byte for byte
    those of the classic single-process run (which dedups in file order), the manifest's rows too
    (but the paths of the shards a dataset came from: merge filters copies of them). The quality
    settings survive the round trip through OUT/tasks/plan.json (merge finds the shards current)."""
    files = _corpus(tmp_path / "src")
    clean = CleanConfig(dedup=True, quality=QualityConfig(("non_letter",), Thresholds(max_non_letter_frac=0.5)))
    classic = prepare(_config(files, tmp_path / "classic", clean=clean), tokenizer)
    for i in range(3):
        prepare(_config(files, tmp_path / "multi", clean=clean, tasks=TaskSplit(3, i)), tokenizer)
    merged = merge(tmp_path / "multi", tokenizer)
    assert merged.drops_by_reason() == classic.drops_by_reason()
    assert merged.drops_by_reason() == {"duplicate": 4, "non_letter.fraction": 1}
    for name in [f"{g}.{ext}" for g in classic.groups() for ext in ("bin", "idx")]:
        assert (tmp_path / "multi" / name).read_bytes() == (tmp_path / "classic" / name).read_bytes(), name
    assert merged.table.drop_columns(["shards"]).equals(classic.table.drop_columns(["shards"])) and merged.meta == classic.meta
    assert len(merged.table) == 12


def test_task_split_defaults_from_slurm_array():
    assert TaskSplit.from_env(env={}) == TaskSplit(1, 0)
    assert TaskSplit.from_env(env={"SLURM_ARRAY_TASK_COUNT": "8", "SLURM_ARRAY_TASK_ID": "5"}) == TaskSplit(8, 5)
    assert TaskSplit.from_env(4, None, env={"SLURM_ARRAY_TASK_COUNT": "1", "SLURM_ARRAY_TASK_ID": "3"}) == TaskSplit(4, 3)
    with pytest.raises(ValueError, match=r"--task-index 8 is not in 0\.\.7"):
        TaskSplit.from_env(env={"SLURM_ARRAY_TASK_COUNT": "8", "SLURM_ARRAY_TASK_ID": "8"})


# --- slurm/prepare_data.sh -------------------------------------------------------------------------
