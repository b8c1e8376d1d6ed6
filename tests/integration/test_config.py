"""Bad configs fail up front, before any process group, model or dataset exists, naming the field."""

from __future__ import annotations


from conftest import run_train
from qwenpt.config import register

register()


def test_train_py_names_a_bad_choice_without_a_traceback(tmp_path):
    proc = run_train(tmp_path / "run", "train.precision=fp16")
    assert proc.returncode != 0 and "Traceback" not in proc.stdout
    assert "Invalid value 'fp16', expected one of [auto, fp32, bf16]" in proc.stdout and "full_key: train.precision" in proc.stdout
    assert not (tmp_path / "run").exists()


def test_train_py_rejects_bad_layout_before_allocating(tmp_path):
    """A 7B model at TP=8 in a world of 8 would take minutes and GBs to build; validation answers at once."""
    proc = run_train(tmp_path / "run", "model=qwen2_7b", "parallel.tensor_model_parallel_size=8", env={"WORLD_SIZE": "8"})
    assert proc.returncode != 0
    assert "model.num_attention_heads 28 is not divisible by parallel.tensor_model_parallel_size 8" in proc.stdout
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
    assert not (tmp_path / "cache").exists()  # no data was prepared either


def test_train_py_unknown_model_lists_choices(tmp_path):
    proc = run_train(tmp_path / "run", "model=qwen9_7b")
    assert proc.returncode != 0
    assert "Could not find 'model/qwen9_7b'" in proc.stdout
    assert "qwen2_7b" in proc.stdout  # Hydra lists the available model configs
