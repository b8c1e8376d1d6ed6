"""bf16 mixed precision on CPU: megatron-core's Float16Module with fp32 main parameters and gradients and
the distributed optimizer trains like fp32, and a bf16 checkpoint resumes bit for bit."""

from __future__ import annotations


import pytest
import torch
from hydra import compose, initialize_config_dir

from conftest import ROOT
from qwenpt.config import ConfigError, register
from qwenpt.validation import validate


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
@pytest.mark.parametrize(
    "overrides,message",
    [
        (["train.fp8=hybrid"], "train.fp8=hybrid needs an NVIDIA GPU (FP8 GEMMs are Transformer Engine kernels) "
                               "and this machine has none; set train.fp8=null"),
        (["train.fp8=e4m3", "train.precision=fp32"], "train.fp8=e4m3 runs on top of bf16; set train.precision=bf16"),
    ],
)


def test_fp8_is_validated_up_front(overrides, message):
    register()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = compose(config_name="config", overrides=overrides)
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert message in str(err.value)
