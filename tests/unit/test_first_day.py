"""A newcomer's first day (issue 27): README "Your own data" walked as written, from a raw multilingual JSONL
file to a trained model in a run folder of its own; and what a run folder then holds steady (`scaling collect`
reads the config that produced its checkpoints, whatever later launches did)."""

from __future__ import annotations


import yaml

from conftest import ROOT


def test_mix_picks_a_model_whose_vocabulary_fits_the_tokenizer():
    from data_pipeline.manifest import Manifest
    from data_pipeline.mixture import TINY_VOCAB, model_overrides, run_folder, train_command

    def manifest(tokenizer: str, vocab: int) -> Manifest:
        return Manifest(table=None, meta={"tokenizer": tokenizer, "vocab_size": str(vocab)})

    def vocab_of(model: str) -> int:
        return yaml.safe_load((ROOT / "conf" / "model" / f"{model}.yaml").read_text())["vocab_size"]

    assert vocab_of("tiny") == TINY_VOCAB
    for name, ids in {"qwen2": 151646, "qwen2.5": 151665, "qwen3": 151669, "qwen3.5": 248077}.items():
        (model,) = model_overrides(manifest(name, ids))  # a model of that family
        assert model.startswith(f"model={name}_") and vocab_of(model.removeprefix("model=")) >= ids
    assert model_overrides(manifest("qwen3.6", 248077)) == ["model=qwen3.5_0.8b"]  # the same tokenizer
    assert model_overrides(manifest("/tok/tokenizer.json", 8192)) == ["model=tiny"]
    assert model_overrides(manifest("/tok/tokenizer.json", 32001)) == ["model=tiny", "model.vocab_size=32128"]
    qwen = manifest("qwen2.5", 151665)
    assert train_command("conf/data/web.yaml", qwen) == "python train.py model=qwen2.5_0.5b data=web"
    assert run_folder("conf/data/web.yaml", qwen) == "runs/qwen2.5_0.5b-web"


def test_every_data_config_names_itself_and_so_its_run_folder():
    """Another data config is another default run folder (runs/<model>-<data>), so `data=x` never resumes
    the run of other data."""
    from conftest import compose_cfg

    names = set()
    for path in sorted((ROOT / "conf" / "data").rglob("*.yaml")):
        name = yaml.safe_load(path.read_text()).get("name")
        assert name, f"{path} sets no name"
        names.add(name)
    assert len(names) == len(list((ROOT / "conf" / "data").rglob("*.yaml")))
    assert compose_cfg().train.run_dir == "runs/tiny-sample"
    assert compose_cfg("data=sample_mix/m1").train.run_dir == "runs/tiny-sample_mix_m1"
