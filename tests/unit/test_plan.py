"""The layout planner: exact per-GPU parameters (checked against megatron-core's model on the meta
device), memory arithmetic, and rejections in the user's terms."""

from __future__ import annotations


import pytest
from hydra import compose, initialize_config_dir

from conftest import ROOT
from qwenpt.config import ConfigError, register
from qwenpt.plan import Gpu, make_plan
from qwenpt.plan.memory import GiB

H100 = Gpu.named("H100")


def _cfg(*overrides: str):
    register()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        return compose("config", overrides=list(overrides))


def test_72b_memory_and_step_time():
    plan = make_plan(_cfg("+experiment=pretrain_qwen2_72b"), 128, H100)
    assert (plan.dp, plan.num_microbatches) == (4, 128)
    first = plan.stages[0]
    assert first.params.total == 2_350_212_096  # 20 layers / TP8 + embedding shard, counted by megatron-core too
    assert first.optimizer == pytest.approx(12 * first.params.total / 4)  # fp32 master + 2 moments over dp 4
    # interleaved 1F1B: stage 0 holds pp*vpp + pp - 1 = 23 chunks of 4 layers, each layer
    # (4096 tokens, TP8+SP) 2 x 4096 x (4 x 8192 + 2 x 8192 + 2048 + 3 x 29568) / 8 bytes
    layer = 2 * 4096 * (4 * 8192 + 2 * 8192 + 2048 + 3 * 29568) / 8
    assert first.activations == pytest.approx(23 * 4 * layer)
    last = plan.stages[-1]  # (vpp - 1) x pp + 1 = 17 chunks, plus fp32 + bf16 logits of 4096 x 152064 / TP8
    assert last.activations == pytest.approx(17 * 4 * layer + 6 * 4096 * 152064 / 8)
    assert plan.fits and plan.peak_stage.pp_rank == 0
    # 6.1 TFLOP per token ... x 2.1M tokens, at 40% of 989 TFLOP/s on 128 GPUs
    assert plan.step_time_s == pytest.approx(plan.flops_per_step / (128 * 989e12 * 0.4))
    full = make_plan(_cfg("+experiment=pretrain_qwen2_72b", "parallel.recompute_granularity=full"), 128, H100)
    assert full.stages[0].activations < first.activations / 10


def test_qwen3_memory_counts_the_head_width_and_qk_norm():
    """Qwen3-30B-A3B's heads are 32 x 128 = 4096 wide on a 2048 hidden size: activations and parameters
    follow the head width, not hidden / heads."""
    plan = make_plan(_cfg("+experiment=pretrain_qwen3_30b_a3b"), 16, H100)
    (stage,) = plan.stages
    assert (plan.dp, plan.expert_dp, plan.num_microbatches) == (16, 1, 32)
    # 16 GPUs: embeddings x 2 (untied) + 48 layers x (attention 2048 x (4096 + 2 x 512) + 4096 x 2048, QK-norm 2 x 128,
    # two RMSNorms, router 128 x 2048, and 8 of the 128 experts 3 x 2048 x 768) + the final norm
    layer = 2048 * (4096 + 1024) + 4096 * 2048 + 2 * 128 + 2 * 2048 + 128 * 2048 + 8 * 3 * 2048 * 768
    assert stage.params.total == 2 * 151936 * 2048 + 48 * layer + 2048 == 3_353_032_704
    assert stage.optimizer == pytest.approx(12 * (stage.params.dense / 16 + stage.params.expert / 1))
    # one layer, one micro-batch of 4096 tokens (bf16, no TP): norm and projection inputs 4 x 2048; q, k, v,
    # attention output (2 x 4096 + 2 x 512) and QK-norm inputs (4096 + 512); 8 routed copies of each token
    # (2048 in, 2 x 768 fc1 out, 768 activation out); fp32 router logits and probabilities over 128 experts
    tokens = 4096
    layer_act = 2 * tokens * (4 * 2048 + 2 * 4096 + 2 * 512 + 4096 + 512) + 8 * tokens * (2 * 2048 + 3 * 2 * 768) \
        + 2 * 4 * tokens * 128
    assert stage.activations == pytest.approx(48 * layer_act + 6 * tokens * 151936)  # + logits (bf16 + fp32)
    assert plan.fits and plan.peak_stage.total / GiB == pytest.approx(64.54, abs=0.01)


@pytest.mark.parametrize("overrides,gpus,message", [
    (["model=qwen2_7b", "parallel.tensor_model_parallel_size=8"], 8,
     "model.num_attention_heads 28 is not divisible by parallel.tensor_model_parallel_size 8"),
    (["model=qwen2_72b", "parallel.pipeline_model_parallel_size=3"], 3,
     "model.num_layers 80 is not divisible into 3 pipeline stages"),
    (["+experiment=pretrain_qwen2_57b_a14b", "parallel.expert_model_parallel_size=5"], 40,
     "model.num_experts 64 is not divisible by parallel.expert_model_parallel_size 5"),
    (["+experiment=pretrain_qwen2_72b"], 80,
     "world size 80 is not divisible by tensor x pipeline x context parallel sizes (8 x 4 x 1 = 32)"),
    (["+experiment=pretrain_qwen2_72b", "train.global_batch_size=510"], 128,
     "train.global_batch_size 510 is not divisible by train.micro_batch_size 1 x data-parallel size 4"),
    (["model=qwen2_57b_a14b", "parallel.tensor_model_parallel_size=2"], 2,
     "needs parallel.sequence_parallel=true"),
    # the anchor's Qwen3-235B-A22B layout (PP 8) needs uneven pipeline stages
    (["+experiment=pretrain_qwen3_235b_a22b", "parallel.tensor_model_parallel_size=2",
      "parallel.pipeline_model_parallel_size=8"], 256, "model.num_layers 94 is not divisible into 8 pipeline stages"),
])


def test_rejects_layouts_that_do_not_divide(overrides, gpus, message):
    with pytest.raises(ConfigError, match=None) as err:
        make_plan(_cfg(*overrides), gpus, H100)
    assert message in str(err.value)
