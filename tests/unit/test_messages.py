"""A newcomer's first day (issue 27): a missing optional package, a misspelt key, overrides after the
planner's options, a JSONL file with another text field and a small model's parameter count each get
one clear line, not a traceback or a misleading hint."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from conftest import ROOT
from data_pipeline.clean import CleanConfig
from data_pipeline.prepare import PrepareConfig, prepare
from qwenpt.config import ConfigError, check_override_keys
from qwenpt.data import BUNDLED_TOKENIZER
from qwenpt.extras import MissingExtra, require
from qwenpt.models.size import format_count

CONF = ROOT / "conf"


def test_require_names_the_extra_to_install(monkeypatch):
    for name in ("safetensors", "safetensors.torch"):  # the latter: imported already by earlier tests
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(MissingExtra, match=r"^reading checkpoints needs the package safetensors, which is not "
                                           r"installed: run pip install 'qwenpt\[hf\]'$"):
        require("safetensors.torch", "hf", "reading checkpoints")
    assert require("json", "hf", "anything") is json


@pytest.mark.parametrize("n, text", [
    (0, "0"), (512, "512"), (1_234, "1.23K"), (999_999, "1M"), (1_788_000, "1.79M"), (3_775_104, "3.78M"),
    (494_032_768, "494M"), (7_615_616_512, "7.62B"), (235_093_634_560, "235B"),
])


def test_parameter_counts_print_three_significant_figures_in_a_unit_that_fits(n, text):
    assert format_count(n) == text


def test_override_check_suggests_nested_keys_and_leaves_the_rest_to_hydra():
    with pytest.raises(ConfigError, match=r"^train\.guard\.spike_factr is not a setting \(closest: "
                                          r"train\.guard\.spike_factor,") as err:
        check_override_keys(["train.guard.spike_factr=3", "optim.lr=1e-3"], CONF)
    assert "optim.lr" not in str(err.value)
    with pytest.raises(ConfigError, match=r"^zzz is not a setting \(settings live under model\.\*, parallel\.\*"):
        check_override_keys(["zzz=1"], CONF)
    # settings, sections, + and ++ keys (qwenpt.config's validation refuses what + adds), config-group
    # choices, dict entries, hydra's own keys and flags: not this check's
    check_override_keys(["train.guard.spike_factor=3", "train.guard=null", "+train.foo=1", "++train.bar=2", "~optim",
                         "model=tiny", "data/sample_mix=m1", "experiment=none", "data.sample_weights.en=0.5",
                         "hydra.run.dir=x", "--multirun", "--cfg", "job"], CONF)


def test_plan_takes_overrides_after_its_options_and_checks_their_keys(capsys):
    from qwenpt.plan.__main__ import main

    assert main(["+experiment=pretrain_qwen2_72b", "--gpus", "96", "parallel.tensor_model_parallel_size=3"]) == 1
    assert "model.num_attention_heads 64 is not divisible by parallel.tensor_model_parallel_size 3" in capsys.readouterr().out
    assert main(["--gpus", "4", "parallel.tensor_model_paralel_size=2"]) == 2
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("error: parallel.tensor_model_paralel_size is not a setting (closest: "
                             "parallel.tensor_model_parallel_size,")
    assert json.loads(out[-1])["error"] == out[0].removeprefix("error: ")


def test_a_jsonl_file_with_another_text_field_names_its_fields(tmp_path, caplog):
    src = tmp_path / "src"
    src.mkdir()
    text = "The quick brown fox jumps over the lazy dog, and then it runs back home again."
    (src / "good.jsonl").write_text(json.dumps({"text": text, "lang": "en"}) + "\n")
    (src / "web.jsonl").write_text("".join(json.dumps({"id": i, "content": f"{text} {i}", "lang": "en"}) + "\n"
                                           for i in range(40)))
    with caplog.at_level(logging.WARNING, logger="data_pipeline.prepare"):
        manifest = prepare(PrepareConfig(inputs=(str(src),), output=str(tmp_path / "out"), progress=False,
                                         tokenizer=str(BUNDLED_TOKENIZER), clean=CleanConfig(detect_language=False)))
    assert manifest.drops_by_reason() == {"missing_text_field": 40}
    warned = [r.getMessage() for r in caplog.records if "text field" in r.getMessage()]
    assert warned == [f"{src / 'web.jsonl'}: no record has the text field 'text' (40 dropped as missing_text_field); "
                      "its records have the fields id, content, lang: pass the one that holds the text, "
                      "e.g. --text-field content"]
