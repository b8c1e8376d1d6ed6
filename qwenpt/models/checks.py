"""The model's checks in the user's terms: its architecture, its fit to a parallel layout, and FP8.

Called by :func:`qwenpt.validation.validate` before anything is built, and by the converter and the
planner; each architecture module (rope, dca, hybrid) checks its own fields.
"""

from __future__ import annotations


from qwenpt.errors import check
from qwenpt.models import dca, hybrid, rope
from qwenpt.models.builder import gradient_accumulation_fusion_available, use_transformer_engine
from qwenpt.models.registry import FAMILIES
from qwenpt.config import ModelConfig, ParallelConfig, TrainConfig


def validate_model(m: ModelConfig, parallel: ParallelConfig | None = None) -> None:
    """Architecture and its fit to a parallel layout (shared by train.py, the planner and the converter)."""
    check(m.family in FAMILIES, f"model.family {m.family!r} is unknown; use one of {sorted(FAMILIES)}")
    for name in ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups", "vocab_size"):
        check(getattr(m, name) > 0, f"model.{name} must be positive, got {getattr(m, name)}")
    if m.kv_channels is None:
        check(
            m.hidden_size % m.num_attention_heads == 0,
            f"model.hidden_size {m.hidden_size} is not divisible by model.num_attention_heads {m.num_attention_heads}; "
            "set model.kv_channels (the head width) explicitly",
        )
    else:
        check(m.kv_channels > 0, f"model.kv_channels must be positive (or null), got {m.kv_channels}")
    check(
        m.num_attention_heads % m.num_query_groups == 0,
        f"model.num_attention_heads {m.num_attention_heads} is not divisible by "
        f"model.num_query_groups {m.num_query_groups}",
    )
    rope.validate(m)
    dca.validate(m)
    check(not (dca.enabled(m) and use_transformer_engine()),
          "model.dual_chunk_attention runs in qwenpt's SDPA attention, not Transformer Engine's; "
          "evaluate on a machine without TE (or set model.dual_chunk_attention.chunk_size=null)")
    hybrid.validate(m, parallel)
    if m.num_experts is not None:
        check(m.moe_ffn_hidden_size is not None, "model.moe_ffn_hidden_size must be set when model.num_experts is")
        check(
            1 <= m.moe_router_topk <= m.num_experts,
            f"model.moe_router_topk {m.moe_router_topk} must be between 1 and model.num_experts {m.num_experts}",
        )
    if parallel is None:
        return
    tp, pp = parallel.tensor_model_parallel_size, parallel.pipeline_model_parallel_size
    for key, num in (("num_attention_heads", m.num_attention_heads), ("num_query_groups", m.num_query_groups)):
        check(num % tp == 0, f"model.{key} {num} is not divisible by parallel.tensor_model_parallel_size {tp}")
    check(
        m.vocab_size % tp == 0,
        f"model.vocab_size {m.vocab_size} is not divisible by parallel.tensor_model_parallel_size {tp}",
    )
    stages = pp * (parallel.virtual_pipeline_model_parallel_size or 1)
    check(
        m.num_layers % stages == 0,
        f"model.num_layers {m.num_layers} is not divisible into {stages} pipeline stages "
        f"(parallel.pipeline_model_parallel_size {pp} x virtual_pipeline_model_parallel_size "
        f"{parallel.virtual_pipeline_model_parallel_size or 1})",
    )
    if parallel.virtual_pipeline_model_parallel_size is not None:
        check(pp > 1, "parallel.virtual_pipeline_model_parallel_size needs pipeline_model_parallel_size > 1")
    ep = parallel.expert_model_parallel_size
    if m.num_experts is None:
        check(ep == 1, f"parallel.expert_model_parallel_size {ep} needs an MoE model (model.num_experts is null)")
    else:
        check(
            m.num_experts % ep == 0,
            f"model.num_experts {m.num_experts} is not divisible by parallel.expert_model_parallel_size {ep}",
        )
    if parallel.sequence_parallel:
        check(tp > 1, "parallel.sequence_parallel needs tensor_model_parallel_size > 1")
    if m.num_experts is not None and tp > 1:
        check(
            parallel.sequence_parallel,
            f"an MoE model with parallel.tensor_model_parallel_size {tp} needs parallel.sequence_parallel=true "
            "(megatron-core's MoE layers train with TP only under sequence parallelism)",
        )
    if parallel.overlap_param_gather:
        check(parallel.use_distributed_optimizer, "parallel.overlap_param_gather needs parallel.use_distributed_optimizer=true")
    if parallel.gradient_accumulation_fusion:
        check(
            gradient_accumulation_fusion_available(),
            "parallel.gradient_accumulation_fusion needs a GPU with Transformer Engine or apex "
            "(fused_weight_gradient_mlp_cuda); set it to false here",
        )


FP8_RECIPES = {"delayed": (8, 9), "tensorwise": (8, 9), "blockwise": (9, 0), "mxfp8": (10, 0)}  # minimum GPU


def validate_fp8(t: TrainConfig) -> None:
    """train.fp8: a known format and recipe, bf16 underneath, and a GPU with Transformer Engine that has FP8."""
    if t.fp8 is None:
        return
    check(t.precision in ("auto", "bf16"), f"train.fp8={t.fp8} runs on top of bf16; set train.precision=bf16, not {t.precision}")
    import torch

    check(
        torch.cuda.is_available(),
        f"train.fp8={t.fp8} needs an NVIDIA GPU (FP8 GEMMs are Transformer Engine kernels) and this machine has none; "
        "set train.fp8=null",
    )
    check(
        use_transformer_engine(),
        f"train.fp8={t.fp8} needs Transformer Engine, which does not import here; install it "
        "(pip install -e '.[gpu]', or scripts/gpu_setup.sh on a machine without network) or set train.fp8=null",
    )
    need, have = FP8_RECIPES[t.fp8_recipe], torch.cuda.get_device_capability()
    check(
        have >= need,
        f"train.fp8_recipe={t.fp8_recipe} needs compute capability {need[0]}.{need[1]} or newer; "
        f"{torch.cuda.get_device_name()} has {have[0]}.{have[1]} (FP8 needs Ada/Hopper, mxfp8 Blackwell); "
        "set train.fp8=null",
    )
