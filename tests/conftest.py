"""Shared fixtures: a single-process megatron-core world, model configs, tiny HF models, and runs."""

from __future__ import annotations

import os
import subprocess
import sys
import traceback
from pathlib import Path

import pytest
import torch
import yaml

from qwenpt.config import ModelConfig, ParallelConfig

ROOT = Path(__file__).resolve().parents[1]
# fixtures shared by a topic's unit and integration tests (tests/helpers/)
pytest_plugins = ["helpers.convert", "helpers.hybrid"]


UNIT = ROOT / "tests" / "unit"


@pytest.fixture(autouse=True)
def unit_tests_start_no_process(request, monkeypatch):
    """The tiers' contract: a test in tests/unit starts no process of qwenpt's (no train.py, torchrun, CLI,
    script or notebook kernel); one that does belongs in tests/integration. What torch starts itself
    (torch.compile's compiler) is left alone."""
    if not request.node.path.is_relative_to(UNIT):
        return

    popen = subprocess.Popen.__init__

    def refuse(self, args, *rest, **kwargs):
        if not any(f"{os.sep}torch{os.sep}" in frame.filename for frame in traceback.extract_stack()):
            raise AssertionError(f"a unit test started a process ({args!r}); move it to tests/integration")
        popen(self, args, *rest, **kwargs)  # torch.compile's compiler and its library check

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)


@pytest.fixture(scope="module")
def tokenizer():
    """The bundled 8192-token BPE (what the tiny models use)."""
    from data_pipeline.tokenizer import TextTokenizer
    from qwenpt.data import BUNDLED_TOKENIZER

    return TextTokenizer(BUNDLED_TOKENIZER)


def compose_cfg(*overrides: str):
    """conf/ composed by Hydra with ``overrides``, as train.py composes it (untyped, before validation)."""
    from hydra import compose, initialize_config_dir

    from qwenpt.config import register

    register()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        return compose(config_name="config", overrides=list(overrides))


def model_config(name: str, **overrides) -> ModelConfig:
    data = yaml.safe_load((ROOT / "conf" / "model" / f"{name}.yaml").read_text())
    data.update(overrides)
    return ModelConfig(**data)


@pytest.fixture(scope="session")
def megatron_world():
    """megatron-core initialised for one process (TP=PP=EP=1) on the CPU layer."""
    from qwenpt import distributed

    return distributed.initialize(ParallelConfig(), seed=1234)


def hf_model(m: ModelConfig, seed: int = 0):
    """A random transformers model with the architecture of model config ``m`` (fp32, eval)."""
    import transformers

    from qwenpt.convert.layouts import qwen2, qwen3_next
    from qwenpt.models import hybrid

    # Qwen v1: the equivalent Qwen2 model (tests/helpers/convert.py writes its v1 checkpoint by hand)
    cfg = qwen3_next.hf_config(m) if hybrid.enabled(m) else qwen2.hf_config(m)
    fields = {k: v for k, v in cfg.items() if k not in ("architectures", "model_type")}
    arch = cfg["architectures"][0]  # Qwen2ForCausalLM, ..., Qwen3NextForCausalLM, Qwen3_5ForCausalLM, ...
    config = transformers.AutoConfig.for_model(cfg["model_type"], **fields)
    torch.manual_seed(seed)
    model = getattr(transformers, arch)(config).eval()
    with torch.no_grad():  # random norms (QK-norms too) and biases, so parity exercises them too
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(0.0 if m.norm_zero_centered and not name.endswith("linear_attn.norm.weight") else 1.0, 0.2)
            elif name.endswith("bias") and not name.endswith("dt_bias"):
                p.normal_(0.0, 0.2)
    return model


def logits_error(ref, m: ModelConfig, ckpt: Path, tokens: torch.Tensor) -> float:
    """Largest |logit difference| between transformers' model ``ref`` and the megatron-core model ``m`` loaded
    from the checkpoint ``ckpt`` (one process, eval mode)."""
    from qwenpt import checkpoint
    from qwenpt.convert.hf import megatron_logits
    from qwenpt.models import build_model

    model = build_model(m, ParallelConfig(), perform_initialization=False)
    checkpoint.load_model(ckpt, model)
    model[0].eval()
    with torch.no_grad():
        return (megatron_logits(model, tokens) - ref(tokens).logits).abs().max().item()


def run_train(run_dir: Path, *overrides: str, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python train.py`` as a user runs it, in its own process, into ``run_dir``; stderr is merged
    into ``.stdout`` (Hydra logs to stdout, tracebacks go to stderr)."""
    cmd = [
        sys.executable, str(ROOT / "train.py"), f"train.run_dir={run_dir}", "logging.progress=false",
        f"data.cache_dir={run_dir.parent / 'cache'}", *overrides,
    ]
    if not any(o.startswith("logging.wandb.mode=") for o in overrides):
        cmd.append("logging.wandb.mode=disabled")
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    return subprocess.run(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout, cwd=ROOT, env=full_env
    )
