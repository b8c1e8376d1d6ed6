"""The data pipeline: exact tokens per document, bad input counted, resume byte-identical, mixtures.

Inputs are slices of the bundled sample (qwenpt/assets/sample, GPL-2+, see its COPYRIGHT).
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import signal
import time
import unicodedata
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
import zstandard
from megatron.core.datasets.indexed_dataset import IndexedDataset

from data_pipeline.clean import CleanConfig
from data_pipeline.manifest import Manifest
from data_pipeline.mixture import (
    compute_mixture, explicit, natural, parse_tokens, parse_weights, temperature, unimax, write_data_config,
)
from data_pipeline.indexed import IndexedWriter, merge_indexed_datasets, read_index
from data_pipeline.prepare import PrepareConfig, prepare
from qwenpt.data import BUNDLED_TOKENIZER, SAMPLE_DIR

from helpers.data_pipeline import _tree, corpus_docs, run_prepare, write_jsonl


def test_mixed_corpus_token_counts_and_ids_are_exact(tmp_path, tokenizer):
    """JSONL.gz, JSONL.zst, Parquet and plain text in; per language, the .idx holds len(encode)+1 per
    document and IndexedDataset reads back exactly the tokenizer's ids."""
    src = tmp_path / "src"
    src.mkdir()
    de, zh, ja = corpus_docs("de", 5), corpus_docs("zh-cn", 4), corpus_docs("ja", 3)
    write_jsonl(src / "de.jsonl.gz", de, "gz")
    write_jsonl(src / "zh.jsonl.zst", zh, "zst")
    pq.write_table(pa.table({"content": [d["text"] for d in ja], "language": ["ja"] * 3}), src / "ja.parquet")
    english = [d["text"] for d in corpus_docs("en", 3)]
    (src / "notes.txt").write_text("\n\n".join(t.replace("\n\n", "\n") for t in english) + "\n", encoding="utf-8")

    out = tmp_path / "out"
    m1 = run_prepare(out, src / "de.jsonl.gz", src / "zh.jsonl.zst", src / "notes.txt")
    m2 = run_prepare(tmp_path / "out_pq", src / "ja.parquet", text_field="content", lang_field="language")

    expected = {
        "de": [d["text"] for d in de],
        "zh-cn": [d["text"] for d in zh],
        "en": [t.replace("\n\n", "\n") for t in english],  # plain text: language detected
    }
    for lang, texts in expected.items():
        texts = [unicodedata.normalize("NFC", t) for t in texts]
        ds = IndexedDataset(str(out / lang))
        assert ds.sequence_lengths.tolist() == [len(tokenizer.encode(t)) + 1 for t in texts], lang
        assert [ds[i].tolist() for i in range(len(texts))] == [tokenizer.encode(t) + [tokenizer.eod] for t in texts]
        assert ds[0].dtype == np.uint16
    ds = IndexedDataset(str(tmp_path / "out_pq" / "ja"))
    assert [ds[i].tolist() for i in range(3)] == [tokenizer.encode(d["text"]) + [tokenizer.eod] for d in ja]

    groups = m1.groups()
    assert sorted(groups) == ["de", "en", "zh-cn"]
    assert groups["de"]["documents"] == 5 and groups["zh-cn"]["documents"] == 4 and groups["en"]["documents"] == 3
    assert groups["de"]["tokens"] == sum(len(tokenizer.encode(d["text"])) + 1 for d in de)
    assert groups["zh-cn"]["bytes"] == sum(len(d["text"].encode()) for d in zh)
    assert m2.groups()["ja"]["tokens"] == sum(len(tokenizer.encode(d["text"])) + 1 for d in ja)
    rows = Manifest.read(out / "manifest.parquet").table.to_pylist()
    de_row = next(r for r in rows if r["lang"] == "de")
    assert de_row["source"] == de[0]["source"] and de_row["prefix"] == "de"
    assert de_row["bytes_per_token"] == pytest.approx(de_row["bytes"] / de_row["tokens"])
    assert de_row["shards"] and all((out / f"{s}.idx").is_file() for s in de_row["shards"])
    assert not list(out.rglob(".*tmp*"))


def test_bad_input_is_counted_and_every_good_record_kept(tmp_path, tokenizer):
    good = [f"good record number {i} with enough text" for i in range(6)]
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(
        b"".join(
            [
                json.dumps({"text": good[0], "lang": "en"}).encode() + b"\n",
                b'{"text": "unterminated\n',  # malformed JSON, line 2
                json.dumps({"body": "no text field", "lang": "en"}).encode() + b"\n",
                json.dumps({"text": 42, "lang": "en"}).encode() + b"\n",  # text not a string
                json.dumps({"text": "  \t ", "lang": "en"}).encode() + b"\n",  # empty after cleaning
                b'{"text": "caf\xe9 latin-1", "lang": "fr"}\n',  # invalid UTF-8, line 6
                json.dumps({"text": good[1], "lang": "en"}).encode() + b"\n",
                b"[1, 2, 3]\n",  # JSON but not an object
                json.dumps({"text": good[2], "lang": "en"}).encode() + b"\n",
                b'{"text": "lone \\ud800 surrogate", "lang": "en"}\n',  # not encodable as UTF-8, line 10
            ]
        )
    )
    # A truncated gzip: everything decompressible before the cut is kept.
    lines = [json.dumps({"text": f"gz doc {i} " + "lorem ipsum " * 50, "lang": "en"}) + "\n" for i in range(400)]
    blob = gzip.compress("".join(lines).encode())
    trunc = tmp_path / "trunc.jsonl.gz"
    trunc.write_bytes(blob[: len(blob) // 2])
    recoverable = zlib.decompressobj(wbits=31).decompress(blob[: len(blob) // 2]).decode().count("\n")
    # A truncated zstd file.
    zblob = zstandard.ZstdCompressor().compress("".join(lines[:50]).encode())
    ztrunc = tmp_path / "trunc.jsonl.zst"
    ztrunc.write_bytes(zblob[: len(zblob) * 3 // 4])
    zdec = zstandard.ZstdDecompressor().decompressobj()
    z_recoverable = zdec.decompress(zblob[: len(zblob) * 3 // 4]).decode(errors="ignore").count("\n")
    text = tmp_path / "plain.txt"
    text.write_bytes(good[3].encode() + b"\n\n\xff\xfe broken paragraph\n\n" + good[4].encode() + b"\n")

    out = tmp_path / "out"
    m = run_prepare(out, bad, trunc, ztrunc, text, clean=CleanConfig(detect_language=False))
    drops = m.drops_by_reason()
    assert drops == {
        "malformed_json": 2,
        "missing_text_field": 2,
        "empty_document": 1,
        "invalid_utf8": 3,
        "truncated_or_corrupt_file": 2,
    }
    groups = m.groups()
    assert groups["en"]["documents"] == 3 + recoverable + z_recoverable
    assert groups["unknown"]["documents"] == 2  # plain text paragraphs, detection off
    ds = IndexedDataset(str(out / "en"))
    assert ds[0].tolist() == tokenizer.encode(good[0]) + [tokenizer.eod]
    assert ds[2].tolist() == tokenizer.encode(good[2]) + [tokenizer.eod]
    assert tokenizer.decode(ds[3 + recoverable - 1].tolist()[:-1]) == json.loads(lines[recoverable - 1])["text"]

    log = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    where = {(Path(r["file"]).name, r["line"], r["reason"]) for r in log}
    assert ("bad.jsonl", 2, "malformed_json") in where and ("bad.jsonl", 6, "invalid_utf8") in where
    assert ("bad.jsonl", 3, "missing_text_field") in where and ("plain.txt", 3, "invalid_utf8") in where
    assert ("bad.jsonl", 10, "invalid_utf8") in where
    assert ("trunc.jsonl.gz", recoverable + 1, "truncated_or_corrupt_file") in where
    assert any("unterminated" in r["sample"] for r in log)


def test_cleaning_normalises_strips_dedups_filters_and_detects(tmp_path, tokenizer):
    decomposed = "Cafe\u0301 cre\u0300me, ein deutscher Satz über die Straße und das Wetter."
    records = [
        {"text": decomposed},
        {"text": "Bell\x07 and\x00 nul\x1b controls; tab\tand newline\nstay. " + "english text " * 5, "lang": "en"},
        {"text": "short", "lang": "en"},
        {"text": "x" * 500, "lang": "en"},
        {"text": "这是一个用于测试语言识别的中文句子，内容关于天气和城市。"},
        {"text": "Ceci est une phrase française, écrite pour tester la détection de la langue.", "lang": "fr"},
        {"text": decomposed},  # exact duplicate (after NFC too)
        {"text": unicodedata.normalize("NFC", decomposed)},  # duplicate once normalised
    ]
    src = write_jsonl(tmp_path / "c.jsonl", records)
    clean = CleanConfig(dedup=True, min_chars=10, max_chars=300, languages=("de", "en", "zh", "fr"))
    m = run_prepare(tmp_path / "out", src, clean=clean)
    assert m.drops_by_reason() == {"duplicate": 2, "too_short": 1, "too_long": 1}
    groups = m.groups()
    assert {g: s["documents"] for g, s in groups.items()} == {"de": 1, "en": 1, "fr": 1, "zh": 1}
    ds = IndexedDataset(str(tmp_path / "out" / "en"))
    assert tokenizer.decode(ds[0].tolist()[:-1]).startswith("Bell and nul controls; tab\tand newline\nstay.")
    de = IndexedDataset(str(tmp_path / "out" / "de"))
    assert tokenizer.decode(de[0].tolist()[:-1]) == unicodedata.normalize("NFC", decomposed)

    filtered = run_prepare(tmp_path / "out2", src, clean=CleanConfig(languages=("en",)))
    assert filtered.drops_by_reason() == {"language_filtered": 5}


@pytest.mark.parametrize("name", ["bundled", "qwen2"])
def test_cleaning_settled_from_token_ids_equals_cleaning_first(tmp_path, monkeypatch, caplog, name):
    """Light cleaning settled after tokenizing (NFC by the tokenizer, controls and byte counts from
    the ids, workers.settle) against cleaning every document first: byte-identical datasets, manifest
    and rejects log, over controls of every kind (a C1 split over two ids), decomposed text, a document
    only stripping empties, a lone surrogate, a language filter, and batches of mixed languages."""
    docs = [dict(d, lang=lang) for lang in ("en", "de", "ja") for d in corpus_docs(lang, 5)]
    crafted = [
        {"text": "Bell\x07 nul\x00 esc\x1b[0m del\x7f stay; tab\tand newline\n ok", "lang": "en"},
        {"text": "C1: next line\x85here, csi\x9b[0m, \x9f end", "lang": "de"},
        {"text": "Cafe\u0301 cre\u0300me, A\u030a \u212b \u1e9b\u0323 (decomposed)", "lang": "fr"},
        {"text": "\x00\x07 \x1b\t", "lang": "en"},  # blank once stripped: empty_document
        {"text": "\x1c\x85 ", "lang": "en"},  # blank as read (these controls are whitespace)
        {"text": "Â\x80 whole C1 in one id, and quote <|endoftext|> as text", "lang": "ja"},
        {"text": "an excluded language", "lang": "xx"},
    ]
    records = [json.dumps(r, ensure_ascii=False).encode() + b"\n" for r in docs[:7] + crafted + docs[7:]]
    records.insert(9, b'{"text": "lone \\ud800 surrogate", "lang": "en"}\n')  # json's parser lets it through
    src = tmp_path / "c.jsonl"
    src.write_bytes(b"".join(records))
    tokenizer = "qwen2" if name == "qwen2" else str(BUNDLED_TOKENIZER)
    clean = CleanConfig(languages=("en", "de", "ja", "fr"))

    def run(out: str) -> Manifest:
        return prepare(PrepareConfig(inputs=(str(src),), output=str(tmp_path / out), tokenizer=tokenizer,
                                     clean=clean, batch_docs=4, progress=False))

    with caplog.at_level("INFO", logger="data_pipeline.prepare"):
        settled = run("settled")
    assert "checked from the token ids" in caplog.text
    monkeypatch.setattr("data_pipeline.clean.Cleaner.deferrable", lambda self: False)
    caplog.clear()
    with caplog.at_level("INFO", logger="data_pipeline.prepare"):
        first = run("first")
    assert "checked from the token ids" not in caplog.text
    assert _tree(tmp_path / "settled") == _tree(tmp_path / "first") and first.table == settled.table
    assert settled.drops_by_reason() == {"empty_document": 2, "invalid_utf8": 1, "language_filtered": 1}
    kept = [unicodedata.normalize("NFC", r["text"]) for r in docs + crafted[:3] + crafted[5:6]]
    kept = ["".join(c for c in t if c in "\t\n\r" or not (ord(c) < 32 or 127 <= ord(c) < 160)) for t in kept]
    assert settled.total("bytes") == sum(len(t.encode()) for t in kept)
    assert settled.total("documents") == len(kept) == 19


def test_rerun_redoes_only_changed_inputs(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    a = write_jsonl(src / "a.jsonl", corpus_docs("it", 3))
    b = write_jsonl(src / "b.jsonl", corpus_docs("pt", 3))
    out = tmp_path / "out"
    run_prepare(out, a, b)
    stamp = {p.parent.name: p.stat().st_mtime_ns for p in (out / "shards").glob("*/stats.json")}
    time.sleep(0.01)
    write_jsonl(b, corpus_docs("pt", 4))
    m = run_prepare(out, a, b)
    after = {p.parent.name: p.stat().st_mtime_ns for p in (out / "shards").glob("*/stats.json")}
    changed = {name for name in stamp if stamp[name] != after[name]}
    assert changed == {next(n for n in stamp if n.startswith("b-"))}
    assert m.groups()["pt"]["documents"] == 4 and IndexedDataset(str(out / "pt")).sequence_lengths.size == 4


def test_many_small_files_stream_through_one_pipeline(tmp_path, monkeypatch):
    """Ten languages' files, an empty one, one of bad records only and a truncated one go through
    one stream of batches (parsing and tokenizing run ahead into the next file while this one is
    written): each shard holds exactly its file, the same with cleaning settled after tokenizing,
    cleaning first, or cleaning in worker processes; a rerun after one shard is lost redoes that
    file alone."""
    src = tmp_path / "src"
    src.mkdir()
    for f in SAMPLE_DIR.glob("*.jsonl.gz"):
        (src / f.name).write_bytes(f.read_bytes())
    (src / "empty.jsonl").write_bytes(b"")
    (src / "bad.jsonl").write_bytes(b'{"text": 1}\n{"body": "x"}\nnot json\n')
    cut = write_jsonl(src / "cut.jsonl.gz", [dict(d, lang="it") for d in corpus_docs("it", 6)], "gz")
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size * 2 // 3])
    settled = run_prepare(tmp_path / "settled", src, batch_docs=5, tokenizer="qwen2")
    monkeypatch.setattr("data_pipeline.clean.Cleaner.deferrable", lambda self: False)
    run_prepare(tmp_path / "first", src, batch_docs=5, tokenizer="qwen2")
    run_prepare(tmp_path / "processes", src, batch_docs=5, tokenizer="qwen2", workers=2)
    assert _tree(tmp_path / "settled") == _tree(tmp_path / "first") == _tree(tmp_path / "processes")
    assert settled.drops_by_reason() == {"malformed_json": 1, "missing_text_field": 2, "truncated_or_corrupt_file": 1}
    shards = {p.parent.name.rsplit("-", 1)[0]: json.loads(p.read_text())
              for p in (tmp_path / "settled" / "shards").glob("*/stats.json")}
    assert len(shards) == 13 and shards["empty"]["groups"] == {} and shards["bad"]["groups"] == {}
    en, ja = (IndexedDataset(str(tmp_path / "settled" / lang)) for lang in ("en", "ja"))  # held: they map the files
    assert {k: v["groups"] for k, v in shards.items() if k in ("en", "ja")} == {
        "en": {"en": {"documents": 12, "tokens": int(en.sequence_lengths.sum())}},
        "ja": {"ja": {"documents": 12, "tokens": int(ja.sequence_lengths.sum())}},
    }
    before = _tree(tmp_path / "first")
    lost = next((tmp_path / "first" / "shards").glob("fr-*"))
    (lost / "stats.json").unlink()
    (tmp_path / "first" / "manifest.parquet").unlink()  # else the finished run is recognised as such
    stamps = {p.parent.name: p.stat().st_mtime_ns for p in (tmp_path / "first" / "shards").glob("*/stats.json")}
    run_prepare(tmp_path / "first", src, batch_docs=5, tokenizer="qwen2")
    redone = {p.parent.name for p in (tmp_path / "first" / "shards").glob("*/stats.json")
              if stamps.get(p.parent.name) != p.stat().st_mtime_ns}
    assert redone == {lost.name} and _tree(tmp_path / "first") == before


def test_mixture_weights_match_hand_computed():
    n = {"a": 100, "b": 1000, "c": 10000}
    assert natural(n) == pytest.approx({"a": 100 / 11100, "b": 1000 / 11100, "c": 10000 / 11100})
    z = 10**0.6 + 10**0.9 + 10**1.2  # n^0.3
    assert temperature(n, 0.3) == pytest.approx({"a": 10**0.6 / z, "b": 10**0.9 / z, "c": 10**1.2 / z})
    # UniMax, budget 6000, at most 4 epochs: a gets min(2000, 400) = 400; b min(2800, 4000) = 2800; c 2800.
    assert unimax(n, 6000, 4) == pytest.approx({"a": 400 / 6000, "b": 2800 / 6000, "c": 2800 / 6000})
    # Budget above what the caps allow (4·11100 = 44400): shares of the caps.
    assert unimax(n, 10**6, 4) == pytest.approx(natural(n))
    assert explicit(n, {"a": 1, "c": 3}) == {"a": 0.25, "b": 0.0, "c": 0.75}
    with pytest.raises(ValueError, match=r"weights name \['x'\], which the manifest does not have"):
        explicit(n, {"x": 1})
    assert parse_tokens("20B") == 20 * 10**9 and parse_tokens("1.5e6") == 1_500_000 and parse_tokens("500M") == 5 * 10**8
    assert parse_weights("en=0.5, zh-cn=0.25") == {"en": 0.5, "zh-cn": 0.25}
    with pytest.raises(ValueError, match="token budget 'ten'"):
        parse_tokens("ten")


def test_mix_writes_a_data_config_train_py_reads(tmp_path):
    from conftest import compose_cfg

    from qwenpt.config import ConfigError
    from qwenpt.validation import validate
    from qwenpt.data import dataset_config, load_tokenizer, resolve_blend

    src = tmp_path / "src"
    src.mkdir()
    files = [write_jsonl(src / f"{lang}.jsonl", corpus_docs(lang, k)) for lang, k in (("en", 8), ("de", 4), ("ja", 2))]
    m = run_prepare(tmp_path / "out", *files)
    m = Manifest.read(tmp_path / "out" / "manifest.parquet")
    tokens = {g: s["tokens"] for g, s in m.groups().items()}
    smallest = min(tokens, key=tokens.get)
    budget = 13 * tokens[smallest]  # a uniform third (4.33 epochs of the smallest) is over its cap of 4
    mix = compute_mixture(m, budget=budget, method="unimax", max_epochs=4)
    assert mix.weights == pytest.approx(unimax(tokens, budget, 4))
    epochs = mix.epochs()
    assert max(epochs.values()) <= 4 + 1e-9 and epochs[smallest] == pytest.approx(4)
    assert sum(w * budget for w in mix.weights.values()) == pytest.approx(budget)

    path = write_data_config(tmp_path / "conf" / "data" / "mymix.yaml", m, mix, seq_length=128)
    data = yaml.safe_load(path.read_text())
    assert [Path(e["prefix"]).name for e in data["blend"]] == ["de", "en", "ja"]
    assert [e["weight"] for e in data["blend"]] == pytest.approx([mix.weights[g] for g in ("de", "en", "ja")])
    cfg = compose_cfg(f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "data=mymix")  # as train.py data=mymix
    assert cfg.data.tokenizer == str(BUNDLED_TOKENIZER.resolve()) and cfg.data.split == "95,5,0"
    assert data["name"] == cfg.data.name == "mymix" and cfg.train.run_dir == "runs/tiny-mymix"  # a run of its own
    with pytest.raises(ConfigError, match=r"data.blend\[0\].prefix: .*/de holds 4 documents, of which data.split "
                                          "'95,5,0' gives the valid split 0; the valid split needs at least 11"):
        validate(cfg)  # 2-8 documents a language: 95,5,0 leaves validation none (megatron-core would spin)
    cfg = compose_cfg(f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "data=mymix", "data.split='50,50,0'")
    validate(cfg)
    tok = load_tokenizer(cfg.data)
    blend = resolve_blend(cfg.data, tok)
    assert blend.prefixes == [e["prefix"] for e in data["blend"]]
    assert dataset_config(cfg.data, tok, blend, seed=1).sequence_length == 128


def test_cleaning_in_worker_processes_gives_identical_outputs(tmp_path, monkeypatch):
    """Parsing and cleaning in a thread, in forked worker processes, or in spawned ones (where fork
    is not used), with tasks of 4 records (several in flight, finishing out of order): outputs,
    counts and the rejects log must not change."""
    src = tmp_path / "src"
    src.mkdir()
    docs = [{"text": d["text"]} for lang in ("en", "de", "ja") for d in corpus_docs(lang, 6)]
    docs += [{"text": "tiny"}, {"text": docs[0]["text"]}, {"body": "no text"}]
    write_jsonl(src / "mixed.jsonl", docs)
    write_jsonl(src / "more.jsonl", docs[::-1])
    cut = write_jsonl(src / "cut.jsonl.gz", [{"text": d["text"]} for d in corpus_docs("it", 6)], "gz")
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size * 2 // 3])  # damage, found while framing
    clean = CleanConfig(dedup=True, min_chars=10)
    run_prepare(tmp_path / "thread", src, clean=clean, batch_docs=4, workers=1)
    run_prepare(tmp_path / "fork", src, clean=clean, batch_docs=4, workers=3)
    monkeypatch.setattr("data_pipeline.workers.FORK", False)
    run_prepare(tmp_path / "spawn", src, clean=clean, batch_docs=4, workers=2)
    thread, fork = _tree(tmp_path / "thread"), _tree(tmp_path / "fork")
    assert thread == fork == _tree(tmp_path / "spawn")
    m = Manifest.read(tmp_path / "fork" / "manifest.parquet")
    assert m.drops_by_reason() == {"duplicate": 1 + 19, "missing_text_field": 2, "too_short": 2, "truncated_or_corrupt_file": 1}
    assert {g: s["documents"] for g, s in m.groups().items()} == {"de": 6, "en": 6, "it": 3, "ja": 6}
    import multiprocessing

    assert multiprocessing.active_children() == []  # the pool is shut down with the run


def test_workers_default_to_a_thread_for_light_cleaning_and_all_cores_for_heavy(monkeypatch):
    from data_pipeline.quality import QualityConfig
    from data_pipeline.workers import TASK_BYTES, auto_workers, task_bytes

    monkeypatch.setattr("data_pipeline.workers.usable_cores", lambda: 16)
    assert auto_workers(CleanConfig(), "lang")[0] == 1  # a language field: NFC and control characters only
    assert auto_workers(CleanConfig(dedup=True), "lang")[0] == 1
    assert auto_workers(CleanConfig(), None) == (16, "one per core, as language detection makes cleaning heavy")
    assert auto_workers(CleanConfig(detect_language=False), None)[0] == 1
    assert auto_workers(CleanConfig(quality=QualityConfig(("c4",))), None) == (
        16, "one per core, as language detection and quality filters make cleaning heavy")
    assert (task_bytes(False), task_bytes(True)) == (TASK_BYTES, TASK_BYTES // 8)


def test_a_worker_that_dies_stops_the_run_with_an_error(tmp_path, monkeypatch):
    """A worker process killed mid-run (out of memory) fails the run with a message saying what to
    do, instead of hanging; no process is left, and the finished shard before it stays done."""
    import multiprocessing

    from data_pipeline import workers

    src = tmp_path / "src"
    src.mkdir()
    write_jsonl(src / "a.jsonl", corpus_docs("it", 3))
    write_jsonl(src / "b.jsonl", corpus_docs("fr", 8))
    clean = workers.TaskCleaner.__call__

    def dies_on_b(self, task):
        if task.file.endswith("b.jsonl"):
            os.kill(os.getpid(), signal.SIGKILL)
        return clean(self, task)

    monkeypatch.setattr(workers.TaskCleaner, "__call__", dies_on_b)
    with pytest.raises(RuntimeError, match=r"worker process ended unexpectedly.*lower --workers.*rerun to resume"):
        run_prepare(tmp_path / "out", src, workers=2, batch_docs=2)
    assert multiprocessing.active_children() == []
    shards = sorted((tmp_path / "out" / "shards").iterdir())
    assert [(p.name.split("-")[0], (p / "stats.json").is_file()) for p in shards] == [("a", True), ("b", False)]


def test_jsonl_with_a_byte_order_mark_keeps_its_first_record(tmp_path, tokenizer):
    docs = corpus_docs("es", 3)
    src = tmp_path / "bom.jsonl"
    src.write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs).encode())
    m = run_prepare(tmp_path / "out", src)
    assert m.drops_by_reason() == {} and m.groups()["es"]["documents"] == 3
    ds = IndexedDataset(str(tmp_path / "out" / "es"))
    assert ds[0].tolist() == tokenizer.encode(unicodedata.normalize("NFC", docs[0]["text"])) + [tokenizer.eod]


def test_reader_errors_reach_the_caller_and_no_process_is_left(tmp_path):
    """An error while reading a file is raised here, naming the file, after the good file before
    it was finished; no worker process outlives the run."""
    import multiprocessing

    src = tmp_path / "src"
    src.mkdir()
    write_jsonl(src / "a.jsonl", corpus_docs("it", 3))
    pq.write_table(pa.table({"body": ["no text column"]}), src / "b.parquet")
    with pytest.raises(ValueError, match=r"b\.parquet: no column 'text'"):
        run_prepare(tmp_path / "out", src, workers=2)
    assert multiprocessing.active_children() == []
    shards = list((tmp_path / "out" / "shards").iterdir())
    assert [(p.name.split("-")[0], (p / "stats.json").is_file()) for p in sorted(shards)] == [("a", True), ("b", False)]


def test_indexed_writer_is_byte_identical_to_megatron_core(tmp_path):
    """The pipeline's own writer (no megatron-core import) against megatron-core's builder: same
    documents, same .bin/.idx bytes, for uint16 and int32 tokens and for merged datasets."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 60000, rng.integers(0, 50)) for _ in range(37)] + [np.array([7])]
    for dtype in (np.uint16, np.int32):
        name = np.dtype(dtype).name
        ours = IndexedWriter(tmp_path / f"ours_{name}", dtype)
        ours.add_batch(np.concatenate(docs[:20]), np.array([len(d) for d in docs[:20]]))
        for d in docs[20:]:
            ours.add(d)
        ours.commit()
        builder = IndexedDatasetBuilder(str(tmp_path / f"mc_{name}.bin"), dtype=dtype)
        for d in docs:
            builder.add_document(d, [len(d)])
        builder.finalize(str(tmp_path / f"mc_{name}.idx"))
        for ext in (".bin", ".idx"):
            assert (tmp_path / f"ours_{name}{ext}").read_bytes() == (tmp_path / f"mc_{name}{ext}").read_bytes(), (name, ext)
        merge_indexed_datasets(tmp_path / f"merged_{name}", [tmp_path / f"ours_{name}", tmp_path / f"mc_{name}"], dtype)
        builder = IndexedDatasetBuilder(str(tmp_path / f"mcmerged_{name}.bin"), dtype=dtype)
        builder.add_index(str(tmp_path / f"mc_{name}"))
        builder.add_index(str(tmp_path / f"mc_{name}"))
        builder.finalize(str(tmp_path / f"mcmerged_{name}.idx"))
        for ext in (".bin", ".idx"):
            assert (tmp_path / f"merged_{name}{ext}").read_bytes() == (tmp_path / f"mcmerged_{name}{ext}").read_bytes()
        ds = IndexedDataset(str(tmp_path / f"merged_{name}"))
        assert len(ds) == 2 * len(docs) and ds[len(docs) + 3].tolist() == docs[3].tolist()
        assert read_index(tmp_path / f"merged_{name}")[1].tolist() == [len(d) for d in docs] * 2
    assert not list(tmp_path.glob(".*tmp*"))


def test_rerun_with_fewer_languages_removes_the_datasets_its_previous_manifest_listed(tmp_path, caplog):
    """A rerun with --languages en into the same folder: the other languages' datasets go (the manifest no
    longer lists them), logged; files qwenpt did not write stay."""
    src = tmp_path / "src"
    src.mkdir()
    for lang in ("en", "de", "ja"):
        write_jsonl(src / f"{lang}.jsonl", corpus_docs(lang, 3))
    out = tmp_path / "out"
    first = run_prepare(out, src)
    assert first.prefixes() == ["de", "en", "ja"]
    (out / "mine.bin").write_bytes(b"user")  # not qwenpt's: never removed
    (out / "notes.idx").write_bytes(b"user")
    with caplog.at_level(logging.INFO, logger="data_pipeline.prepare"):
        second = run_prepare(out, src, clean=CleanConfig(languages=("en",)))
    assert second.prefixes() == ["en"] and second.groups()["en"]["documents"] == 3
    datasets = sorted(p.name for p in out.iterdir() if p.suffix in (".bin", ".idx"))
    assert datasets == ["en.bin", "en.idx", "mine.bin", "notes.idx"]
    removed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("removed ")]
    assert removed == [f"removed {lang}.idx and {lang}.bin from {out}: the previous run's manifest listed it, this run "
                       "has no documents for it" for lang in ("de", "ja")]
    assert IndexedDataset(str(out / "en")).sequence_lengths.size == 3
