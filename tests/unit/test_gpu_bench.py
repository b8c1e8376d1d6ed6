"""bench/gpu_mfu.py's Megatron-LM side, checked without a GPU: the pretrain_gpt.py flags it builds from a
qwenpt model config pass Megatron-LM's own argument parser and validation, and describe the same model
and run. megatron.training ships in megatron-core's wheel from 0.19 on, so this runs in CI's second lane
(Python 3.12, newest megatron-core); the default lane's 0.16.1 has no megatron.training."""

from __future__ import annotations

import argparse
import importlib.util
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import gpu_mfu  # noqa: E402

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("megatron.training") is None,
    reason="megatron-core < 0.19 ships no megatron.training (CI lane 2, .ci/lane_py312.sh, runs this)",
)


@pytest.mark.parametrize("model, te, fp8", [("qwen2.5_1.5b", False, None), ("qwen3_0.6b", False, None),
                                           ("qwen2.5_0.5b", True, "hybrid")])


def test_megatron_lm_accepts_the_same_run(model, te, fp8, tmp_path, monkeypatch):
    from megatron.training.arguments import parse_args, validate_args

    from qwenpt.models.size import head_dim

    args = argparse.Namespace(model=model, seq=4096, micro_batch=2, global_batch=16, steps=20, fp8=fp8,
                              fp8_recipe="delayed", tp=1, te=te, gpus=1)
    m = gpu_mfu.compose_cfg(args, tmp_path / "plan").model
    monkeypatch.setattr(sys, "argv", ["pretrain_gpt.py", *gpu_mfu.megatron_args(args, m)])
    for key, value in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0")):
        monkeypatch.setenv(key, value)
    got = validate_args(parse_args(), {})
    assert (got.num_layers, got.hidden_size, got.ffn_hidden_size) == (m.num_layers, m.hidden_size, m.ffn_hidden_size)
    assert (got.num_attention_heads, got.num_query_groups, got.kv_channels) == (
        m.num_attention_heads, m.num_query_groups, head_dim(m))
    assert got.vocab_size + 1 == m.vocab_size  # NullTokenizer adds the EOD id: the exact vocabulary, unpadded
    assert got.untie_embeddings_and_output_weights == (not m.tie_embeddings)
    assert got.add_qkv_bias == m.qkv_bias and got.qk_layernorm == m.qk_layernorm
    assert got.rotary_base == int(m.rope_theta) and got.layernorm_epsilon == m.norm_eps  # --norm-epsilon
    assert (got.seq_length, got.micro_batch_size, got.global_batch_size) == (4096, 2, 16)
    assert got.bf16 and not got.use_distributed_optimizer and got.recompute_granularity is None
    assert got.transformer_impl == ("transformer_engine" if te else "local")
    # without TE: no fusion that is a TE or apex kernel (pretrain_gpt.py would fail on the first step)
    assert got.masked_softmax_fusion == te and got.gradient_accumulation_fusion == te and got.apply_rope_fusion == te
    assert got.fp8 == fp8
