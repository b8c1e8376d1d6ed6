"""The data pipeline: exact tokens per document, bad input counted, resume byte-identical, mixtures.

Inputs are slices of the bundled sample (qwenpt/assets/sample, GPL-2+, see its COPYRIGHT).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from data_pipeline.clean import CleanConfig
from data_pipeline.manifest import Manifest
from data_pipeline.prepare import output_lock
from data_pipeline.tokenizer import TextTokenizer
from qwenpt.data import BUNDLED_TOKENIZER

from conftest import ROOT
from helpers.data_pipeline import CORPUS, _tree, corpus_docs, run_prepare, write_jsonl


@pytest.mark.slow
def test_interrupted_run_resumes_to_byte_identical_outputs(tmp_path):
    """Kill -9 the CLI while it is writing the second file's shard (fed through a pipe), cleaning in
    2 worker processes; the workers exit with it (they would hold the output's lock and memory);
    rerun, and compare every output byte with an uninterrupted run."""
    src = tmp_path / "src"
    src.mkdir()
    docs = corpus_docs("fr", 12) + corpus_docs("zh-tw", 8)
    write_jsonl(src / "a.jsonl", docs[:8] + [docs[0]])  # a duplicate inside a
    b_lines = [json.dumps(d, ensure_ascii=False) + "\n" for d in docs[8:16]]
    write_jsonl(src / "c.jsonl", docs[16:] + [docs[3], docs[9]])  # duplicates of a and b: dedup across resume
    fifo = src / "b.jsonl"
    os.mkfifo(fifo)
    cmd = [
        sys.executable, "-m", "data_pipeline", "prepare", str(src / "a.jsonl"), str(fifo), str(src / "c.jsonl"),
        "--tokenizer", str(BUNDLED_TOKENIZER), "--dedup", "--batch-docs", "1", "--no-progress", "--json", "--workers", "2",
    ]
    out1, out2 = tmp_path / "out1", tmp_path / "out2"
    proc = subprocess.Popen([*cmd, "-o", str(out1)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        fd = _open_fifo_for_writing(fifo, proc)  # returns once the run has opened b (reading runs ahead of writing)
        os.write(fd, "".join(b_lines[:5]).encode())
        _wait_for(lambda: any((out1 / "shards").glob("b-*")), proc)  # a written, b begun
        shard_b = next((out1 / "shards").glob("b-*"))
        _wait_for(lambda: any(p.stat().st_size > 0 for p in shard_b.glob(".*.tmp*.bin")), proc)
        workers = _children(proc.pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        os.close(fd)
    finally:
        proc.kill()
    assert len(workers) == 2
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{w}").exists() and "Z" not in _state(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [w for w in workers if Path(f"/proc/{w}").exists() and "Z" not in _state(w)] == []  # no orphan left
    assert (next((out1 / "shards").glob("a-*")) / "stats.json").is_file()
    assert not (shard_b / "stats.json").exists() and not (out1 / "manifest.parquet").exists()
    fifo.unlink()
    (src / "b.jsonl").write_text("".join(b_lines), encoding="utf-8")

    resumed = subprocess.run([*cmd, "-o", str(out1)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    fresh = subprocess.run([*cmd, "-o", str(out2)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0 and fresh.returncode == 0, resumed.stderr[-2000:] + fresh.stderr[-2000:]
    assert _tree(out1) == _tree(out2)
    summary = json.loads(fresh.stdout.strip().splitlines()[-1])
    assert summary["drops"] == {"duplicate": 3} and summary["documents"] == 20
    again = subprocess.run([*cmd, "-o", str(out2)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert "nothing to do" in again.stderr and _tree(out2) == _tree(out1)


def _open_fifo_for_writing(path: Path, proc: subprocess.Popen, timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:  # ENXIO: no reader yet
            assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
            time.sleep(0.05)
    raise TimeoutError("the pipeline never opened the pipe")


def _children(pid: int) -> list[int]:
    """The child processes of ``pid`` (Linux /proc), over all its threads."""
    return sorted({int(c) for t in Path(f"/proc/{pid}/task").iterdir() for c in (t / "children").read_text().split()})


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


def _wait_for(condition, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None and time.monotonic() < deadline, "pipeline ended before the kill"
        time.sleep(0.05)


def test_cli_fails_early_with_clear_messages(tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "data_pipeline", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)

    r = run("prepare", str(tmp_path / "missing.jsonl"), "-o", str(tmp_path / "o"), "--tokenizer", str(BUNDLED_TOKENIZER))
    assert r.returncode == 2 and f"input path {tmp_path / 'missing.jsonl'} does not exist" in r.stderr
    src = write_jsonl(tmp_path / "x.jsonl", [{"text": "hi"}])
    r = run("prepare", str(src), "-o", str(tmp_path / "o"), "--tokenizer", str(tmp_path))
    assert r.returncode == 2 and f"no tokenizer.json at {tmp_path / 'tokenizer.json'}" in r.stderr
    (tmp_path / "bad.json").write_text("{not json")
    r = run("prepare", str(src), "-o", str(tmp_path / "o"), "--tokenizer", str(tmp_path / "bad.json"))
    assert r.returncode == 2 and f"cannot read {tmp_path / 'bad.json'}" in r.stderr
    r = run("prepare", str(src), "-o", str(tmp_path / "o"), "--tokenizer", str(BUNDLED_TOKENIZER), "--workers", "-1")
    assert r.returncode == 2 and "--workers must be >= 0 (0: chosen by how heavy cleaning is; got -1)" in r.stderr
    assert not (tmp_path / "o").exists()
    r = run("mix", str(tmp_path / "nope.parquet"), "--budget", "1B")
    assert r.returncode == 2 and "manifest" in r.stderr and "does not exist" in r.stderr
    for sub in ("prepare", "stats", "mix", "tokenizer", "train-tokenizer"):
        assert run(sub, "--help").returncode == 0


def test_train_tokenizer_cli_builds_a_qwen2_style_bpe(tmp_path):
    out = tmp_path / "tok"
    r = subprocess.run(
        [sys.executable, "-m", "data_pipeline", "train-tokenizer", str(CORPUS / "en.jsonl.gz"), str(CORPUS / "zh-cn.jsonl.gz"),
         "--vocab-size", "1024", "--max-docs", "20", "-o", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "on 20 documents" in r.stdout
    tok = TextTokenizer(out)
    assert tok.vocab_size == 1024
    assert [tok.tokenizer.token_to_id(t) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")] == [1021, 1022, 1023]
    assert tok.encode("12345") == [tok.tokenizer.token_to_id(d) for d in "12345"]  # Qwen2 splits digits
    text = "Grüße, 世界! apt-get install"
    assert tok.decode(tok.encode(text)) == text


def test_second_run_on_the_same_output_fails_naming_folder_and_pid(tmp_path):
    src = write_jsonl(tmp_path / "a.jsonl", corpus_docs("pt", 2))
    out = tmp_path / "out"
    out.mkdir()
    cmd = [sys.executable, "-m", "data_pipeline", "prepare", str(src), "-o", str(out), "--tokenizer", str(BUNDLED_TOKENIZER), "--no-progress"]
    with output_lock(out):  # a run in progress (this process)
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert r.returncode == 2, r.stderr[-2000:]
        assert f"output folder {out} is in use by another prepare run (PID {os.getpid()})" in r.stderr
        assert not (out / "manifest.parquet").exists()
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)  # released: runs
    assert r.returncode == 0, r.stderr[-2000:]
    assert Manifest.read(out / "manifest.parquet").groups()["pt"]["documents"] == 2


def test_prepare_cli_imports_neither_torch_nor_megatron(tmp_path):
    src = write_jsonl(tmp_path / "a.jsonl", corpus_docs("id", 2))
    code = (
        "import sys; from data_pipeline.__main__ import main; "
        f"rc = main(['prepare', {str(src)!r}, '-o', {str(tmp_path / 'out')!r}, '--tokenizer', {str(BUNDLED_TOKENIZER)!r}, '--no-progress']); "
        "main(['stats', " + repr(str(tmp_path / "out" / "manifest.parquet")) + "]); "
        "print('HEAVY', sorted(m for m in ('torch', 'megatron', 'transformers', 'sympy') if m in sys.modules), rc)"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert "HEAVY [] 0" in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]


def test_an_empty_input_warns_and_a_run_of_no_documents_fails(tmp_path, caplog):
    src = tmp_path / "src"
    src.mkdir()
    (src / "empty.jsonl").write_bytes(b"")
    (src / "blank.jsonl").write_bytes(b"\n\n")
    write_jsonl(src / "en.jsonl", corpus_docs("en", 2))
    with caplog.at_level(logging.WARNING, logger="data_pipeline.prepare"):
        m = run_prepare(tmp_path / "out", src)
    assert m.total("documents") == 2
    warned = [r.getMessage() for r in caplog.records if "holds no records" in r.getMessage()]
    assert len(warned) == 2 and any(str(src / "empty.jsonl") in w for w in warned)
    assert any(str(src / "blank.jsonl") in w for w in warned)

    r = subprocess.run([sys.executable, "-m", "data_pipeline", "prepare", str(src / "empty.jsonl"), str(src / "blank.jsonl"),
                        "-o", str(tmp_path / "none"), "--tokenizer", str(BUNDLED_TOKENIZER), "--no-progress"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("holds no records (0 read, 0 dropped)") == 2
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [(f"error: the 2 input file(s) gave 0 documents (dropped: no records were read; see "
                       f"{tmp_path / 'none' / 'rejects.jsonl'}), so there is no dataset to write and "
                       f"{tmp_path / 'none' / 'manifest.parquet'} was not written; check the inputs and --text-field, "
                       "--format, --languages and the cleaning options")]
    assert not (tmp_path / "none" / "manifest.parquet").exists()
    bad = write_jsonl(src / "bad.jsonl", [{"body": "x"}, {"text": "hi", "lang": "de"}])
    with pytest.raises(ValueError, match=r"gave 0 documents \(dropped: language_filtered 1, missing_text_field 1;"):
        run_prepare(tmp_path / "bad", bad, clean=CleanConfig(languages=("en",)))
