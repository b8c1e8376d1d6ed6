"""Bad configs fail up front, before any process group, model or dataset exists, naming the field."""

from __future__ import annotations

import pytest
import yaml
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from conftest import compose_cfg
from qwenpt.config import Config, ConfigError, Precision, register, to_container
from qwenpt.validation import configure, validate

register()


def test_default_config_is_valid():
    cfg = compose_cfg()
    validate(cfg)
    assert cfg.model.name == "tiny" and cfg.train.run_dir == "runs/tiny-sample"


@pytest.mark.parametrize(
    "overrides,world,message",
    [
        (["model=qwen2_7b", "parallel.tensor_model_parallel_size=8"], 8,
         "model.num_attention_heads 28 is not divisible by parallel.tensor_model_parallel_size 8"),
        (["model=qwen2_72b", "parallel.pipeline_model_parallel_size=3"], 3,
         "model.num_layers 80 is not divisible into 3 pipeline stages"),
        (["model=qwen2_57b_a14b", "parallel.expert_model_parallel_size=5"], 5,
         "model.num_experts 64 is not divisible by parallel.expert_model_parallel_size 5"),
        (["train.global_batch_size=10", "train.micro_batch_size=4"], 1,
         "train.global_batch_size 10 is not divisible by train.micro_batch_size 4 x data-parallel size 1"),
        (["data.seq_length=4096"], 1, "data.seq_length 4096 exceeds model.max_position_embeddings 2048"),
        (["parallel.tensor_model_parallel_size=2"], 3, "world size 3 is not divisible by tensor x pipeline"),
        (["+data.blend=[{prefix: /nonexistent/en_text_document, weight: 1.0}]"], 1,
         "data.blend[0].prefix: /nonexistent/en_text_document.bin does not exist"),
        (["data.tokenizer=/nonexistent/tok"], 1, "data.tokenizer: /nonexistent/tok is neither a tokenizer.json"),
        (["+data.sample_weights.xx=1.0"], 1, "data.sample_weights: 'xx' is not a language of the bundled sample (de, en, es"),
        (["+data.sample_weights.en=0.0"], 1, "data.sample_weights.en must be positive, got 0.0"),
        (["model=tiny_qwen3", "model.hidden_size=130", "model.kv_channels=null"], 1,
         "model.hidden_size 130 is not divisible by model.num_attention_heads 4; set model.kv_channels"),
    ],
)


def test_validation_names_the_field(overrides, world, message):
    cfg = compose_cfg(*[o.replace("+data.blend", "data.blend") for o in overrides])
    with pytest.raises(ConfigError) as err:
        validate(cfg, world_size=world)
    assert message in str(err.value)


# every closed choice of the schema (a StrEnum): Hydra refuses another value as it composes, naming the key,
# the value and the choices; null stays allowed where the setting is optional
@pytest.mark.parametrize("key,bad,choices", [
    ("model.moe_load_balancing", "global", "aux_loss, global_aux_loss, seq_aux_loss, none"),
    ("parallel.moe_token_dispatcher_type", "flex", "allgather, alltoall"),
    ("parallel.recompute_granularity", "some", "selective, full"),
    ("optim.schedule", "step", "cosine, wsd, linear, constant"),
    ("optim.wsd_decay_style", "sqrt", "linear, cosine, exponential, minus_sqrt"),
    ("train.precision", "fp16", "auto, fp32, bf16"),
    ("train.fp8", "e5m2", "hybrid, e4m3"),
    ("train.fp8_recipe", "nvfp4", "delayed, tensorwise, blockwise, mxfp8"),
    ("train.guard.nonfinite", "ignore", "stop, skip"),
    ("train.guard.spike_action", "skip", "warn, stop"),
    ("logging.wandb.mode", "shared", "offline, online, disabled"),
    ("checkpoint.optim_sharding", "full", "dp_reshardable, fully_reshardable"),
])


def test_a_closed_choice_is_refused_as_hydra_composes(key, bad, choices):
    with pytest.raises(ConfigCompositionException) as err:
        compose_cfg("model=tiny_moe", f"{key}={bad}")
    cause = str(err.value.__cause__)
    assert f"Invalid value '{bad}', expected one of [{choices}]" in cause and f"full_key: {key}" in cause
    good = choices.split(", ")[-1]
    section, _, name = key.rpartition(".")
    assert getattr(OmegaConf.select(compose_cfg("model=tiny_moe", f"{key}={good}"), section), name) == good


def test_typed_config_after_composition():
    """What a run reads: the schema's dataclasses, interpolations resolved, choices as StrEnums equal to their
    strings, and plain strings again wherever the config is logged or saved."""
    cfg = configure(compose_cfg("train.precision=bf16", "parallel.recompute_granularity=null"))
    assert type(cfg) is Config and type(cfg.train.guard).__name__ == "GuardConfig"
    assert cfg.train.run_dir == "runs/tiny-sample" and cfg.train.stop_file == "runs/tiny-sample/STOP"
    assert cfg.train.precision is Precision.bf16 and cfg.train.precision == "bf16"
    assert cfg.parallel.recompute_granularity is None
    plain = to_container(cfg)
    assert type(plain["train"]["precision"]) is str and plain["train"]["run_dir"] == "runs/tiny-sample"
    assert yaml.safe_load(OmegaConf.to_yaml(cfg))["train"]["precision"] == "bf16"
