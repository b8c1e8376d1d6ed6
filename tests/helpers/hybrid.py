"""Shared by tests/unit/test_hybrid.py and tests/integration/test_hybrid.py."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import hf_model, model_config
from qwenpt.config import ParallelConfig
from qwenpt.models import hybrid

PACKS_GDN = hybrid.megatron_packs_gdn()

MODELS = {  # key: (conf/model name, overrides)
    "qwen3_5": ("tiny_qwen3_5", {}),  # Qwen3_5ForCausalLM: dense, tied
    "qwen3_5_moe": ("tiny_qwen3_5_moe", {}),  # Qwen3_5MoeForCausalLM: routed + gated shared expert
    "qwen3_next": ("tiny_qwen3_5_moe", {"family": "qwen3-next"}),  # Qwen3NextForCausalLM: fused in_proj_qkvz / ba
}


def _add_mtp(hf_dir, m, seed: int) -> dict:
    """The MTP tensors a released checkpoint carries (transformers neither builds nor saves them), random."""
    from qwenpt import distributed
    from qwenpt.convert.layouts import qwen3_next
    from qwenpt.models import build_model

    distributed.initialize(ParallelConfig(), seed=0)
    with torch.device("meta"):
        meta = build_model(m, ParallelConfig(), perform_initialization=False)[0].state_dict()
    g = torch.Generator().manual_seed(seed)
    mtp = {k: torch.randn(v.shape, generator=g) for k, v in qwen3_next.to_hf(meta, m, ("mtp", 0)).items()}
    tensors = load_file(str(hf_dir / "model.safetensors"))
    save_file({**tensors, **mtp}, str(hf_dir / "model.safetensors"), metadata={"format": "pt"})
    return mtp


@pytest.fixture(scope="module")
def converted_hybrids(tmp_path_factory):
    """Each hybrid: its transformers reference, its HF directory (with MTP tensors added), and its import."""
    from qwenpt.convert.hf import import_hf

    out = tmp_path_factory.mktemp("hybrid_convert")
    made = {}
    for i, (key, (name, overrides)) in enumerate(MODELS.items()):
        m = model_config(name, **overrides)
        ref = hf_model(dataclasses.replace(m, mtp_num_layers=0), seed=i)
        ref.save_pretrained(out / key)
        mtp = _add_mtp(out / key, m, seed=100 + i)
        summary = import_hf(out / key, out / f"{key}_ckpt")
        made[key] = (ref, out / key, out / f"{key}_ckpt", summary, mtp)
    return made
