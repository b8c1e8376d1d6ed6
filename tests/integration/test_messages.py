"""A newcomer's first day (issue 27): a missing optional package, a misspelt key, overrides after the
planner's options, a JSONL file with another text field and a small model's parameter count each get
one clear line, not a traceback or a misleading hint."""

from __future__ import annotations

import json
import subprocess
import sys


from conftest import ROOT


def _without(module: str, *argv: str) -> subprocess.CompletedProcess:
    """``python -m qwenpt.convert ARGV`` in an install that lacks ``module``."""
    code = (f"import runpy, sys; sys.modules[{module!r}] = None; sys.argv = ['qwenpt.convert', *{list(argv)!r}]; "
            "runpy.run_module('qwenpt.convert', run_name='__main__', alter_sys=True)")
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=300)


def test_convert_without_safetensors_says_which_extra(tmp_path):
    proc = _without("safetensors", "import", "--hf", str(tmp_path / "hf"), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2, proc.stdout[-3000:]
    assert "Traceback" not in proc.stdout
    errors = [line for line in proc.stdout.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "safetensors, which is not installed: run pip install 'qwenpt[hf]'" in errors[0]
    assert json.loads(proc.stdout.splitlines()[-1])["error"] == errors[0].removeprefix("error: ")
    assert not (tmp_path / "out").exists()


def test_convert_verify_without_transformers_says_which_extra(tmp_path):
    proc = _without("transformers", "verify", "--hf", str(tmp_path / "hf"), "--ckpt", str(tmp_path / "ckpt"))
    assert proc.returncode == 2, proc.stdout[-3000:]
    assert "Traceback" not in proc.stdout
    assert "error: python -m qwenpt.convert verify (the Hugging Face reference model) needs the package " \
           "transformers, which is not installed: run pip install 'qwenpt[hf]'" in proc.stdout


def test_a_misspelt_key_gets_the_closest_settings_not_hydras_plus_advice():
    proc = subprocess.run([sys.executable, "train.py", "train.stpes=10"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out and "+train.stpes" not in out
    assert proc.stderr.strip().splitlines() == [
        "error: train.stpes is not a setting (closest: train.steps, train.stop_file, train.seed; "
        "all of them: qwenpt/config.py)"]
