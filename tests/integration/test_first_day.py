"""A newcomer's first day (issue 27): README "Your own data" walked as written, from a raw multilingual JSONL
file to a trained model in a run folder of its own; and what a run folder then holds steady (`scaling collect`
reads the config that produced its checkpoints, whatever later launches did)."""

from __future__ import annotations

import gzip
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT

LANGS = ("en", "de", "ja")
DOCS = 40  # documents per language: 95,5,0 leaves 2 for validation
SHORT = ["train.steps=4", "optim.warmup_steps=1", "train.eval_interval=4", "train.eval_steps=1",
         "checkpoint.save_interval=4", "logging.progress=false", "logging.wandb.mode=disabled", "data.cache_dir=cache"]


def readme_commands() -> list[list[str]]:
    """The commands of README's marked first-day block, continuation lines joined."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"<!-- first-day commands:.*?-->\n```bash\n(.*?)```\n<!-- end of first-day commands -->", text, re.S)
    assert block, "README.md: the first-day block (<!-- first-day commands: ... --> ... <!-- end of ... -->) is missing"
    lines = block.group(1).replace("\\\n", " ").splitlines()
    return [shlex.split(line) for line in lines if line.strip() and not line.lstrip().startswith("#")]


def write_corpus(path: Path) -> None:
    """A raw multilingual JSONL file: each language of the bundled sample cut into DOCS short documents."""
    docs: dict[str, list[str]] = {}
    for lang in LANGS:
        with gzip.open(ROOT / "qwenpt" / "assets" / "sample" / f"{lang}.jsonl.gz", "rt", encoding="utf-8") as f:
            lines = [ln for rec in map(json.loads, f) for ln in rec["text"].splitlines() if ln.strip()]
        per = len(lines) // DOCS
        docs[lang] = ["\n".join(lines[i * per:(i + 1) * per])[:600] for i in range(DOCS)]
    with path.open("w", encoding="utf-8") as f:
        for i in range(DOCS):
            for lang in LANGS:
                f.write(json.dumps({"text": docs[lang][i], "lang": lang}, ensure_ascii=False) + "\n")


def checkout(work: Path) -> None:
    """``work`` as a checkout to type the commands in: this tree's code, a conf/ of its own for mix to write to."""
    for name in ("train.py", "qwenpt", "data_pipeline"):
        (work / name).symlink_to(ROOT / name)
    shutil.copytree(ROOT / "conf", work / "conf")


def run(work: Path, args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    assert args[0] == "python", args
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, *args[1:]], cwd=work, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def first_day(tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("first_day")
    checkout(work)
    write_corpus(work / "my_corpus.jsonl")
    prepare, mix, train = readme_commands()
    assert prepare[1:3] == ["-m", "data_pipeline"] and mix[1:4] == ["-m", "data_pipeline", "mix"], (prepare, mix)
    assert train[1] == "train.py", train
    done = {}
    for name, args in (("prepare", prepare), ("mix", mix)):
        done[name] = run(work, args)
        assert done[name].returncode == 0, done[name].stdout[-3000:]
    done["train"] = run(work, train + SHORT)
    assert done["train"].returncode == 0, done["train"].stdout[-3000:]
    return {"work": work, "commands": (prepare, mix, train), **done}


def test_readme_commands_train_a_new_run_on_the_new_data(first_day):
    work, out = first_day["work"], first_day["mix"].stdout
    prepare, mix, train = first_day["commands"]
    # mix prints the very train.py command README shows, and where its run goes
    data_config = work / mix[mix.index("--out") + 1]
    assert f"train on it (a new run in runs/tiny-{data_config.stem}):\n  {shlex.join(train)}\n" in out, out
    written = yaml.safe_load(data_config.read_text())
    assert written["name"] == data_config.stem

    manifest = work / mix[4]
    prefixes = sorted(str(manifest.parent.resolve() / lang) for lang in LANGS)
    run_dir = work / "runs" / f"tiny-{data_config.stem}"
    assert sorted(p.name for p in (work / "runs").iterdir()) == [run_dir.name]  # not runs/tiny-sample
    config = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
    assert config["data"]["name"] == data_config.stem and config["train"]["run_dir"] == f"runs/{run_dir.name}"
    assert sorted(e["prefix"] for e in config["data"]["blend"]) == prefixes
    assert config["data"]["tokenizer"] == str((ROOT / "qwenpt" / "assets" / "tokenizer" / "tokenizer.json").resolve())
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r["kind"] == "train"]
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)
    assert [r["step"] for r in records if r["kind"] == "valid"] == [0, 4]
    assert (run_dir / "checkpoints" / "step_00000004" / "run_config.yaml").is_file()


def test_later_launches_leave_the_collected_table_as_it_was(first_day):
    """A launch that is refused (other data), one that fails validation, one that halts on its first new step,
    and one that finds training complete (also with checkpoint.override_data=true) leave `scaling collect`'s
    table byte-identical."""
    work, train = first_day["work"], first_day["commands"][2]
    run_dir = work / "runs" / f"tiny-{train[-1].removeprefix('data=')}"

    def collect(name: str) -> bytes:
        out = work / f"{name}.parquet"
        proc = run(work, ["python", "-m", "qwenpt.scaling", "collect", str(run_dir), "--out", str(out)])
        assert proc.returncode == 0, proc.stdout[-3000:]
        return out.read_bytes()

    before = collect("before")
    refused = run(work, train + SHORT + ["train.seed=7"])
    assert refused.returncode == 2, refused.stdout[-3000:]
    assert "other data or batch than it was trained with (train.seed 1234 -> 7)" in refused.stdout
    assert "train.run_dir=<new folder>" in refused.stdout and "checkpoint.override_data=true" in refused.stdout
    assert collect("refused") == before
    bad = run(work, train + SHORT + ["optim.warmup_steps=9"])
    assert bad.returncode == 2 and "optim.warmup_steps" in bad.stdout, bad.stdout[-3000:]
    assert collect("bad") == before
    # begins training 2 more steps (the run's .hydra/config.yaml now says train.steps=6), halts at once
    halted = run(work, train + SHORT + ["train.steps=6", "checkpoint.override_schedule=true", "train.guard.inject=loss*nan@5"])
    assert halted.returncode == 3 and "training halted: step 5" in halted.stdout, halted.stdout[-3000:]
    assert collect("halted") == before  # still the checkpoint's 4-step run, its last evaluation final
    for extra in ([], ["train.seed=7", "checkpoint.override_data=true"]):
        complete = run(work, train + SHORT + extra)
        assert complete.returncode == 0 and "training is complete" in complete.stdout, complete.stdout[-3000:]
        assert collect("complete") == before
