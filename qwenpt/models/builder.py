"""Model config → megatron-core TransformerConfig + layer spec → GPTModel chunks."""

from __future__ import annotations


import megatron.core
import torch
import torch.nn.functional as F
from megatron.core import parallel_state
from packaging.version import Version
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import (
    get_gpt_layer_local_spec,
    get_gpt_layer_with_transformer_engine_spec,
)
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_block import TransformerBlockSubmodules, get_num_layers_to_build
from megatron.core.transformer.transformer_layer import get_transformer_layer_offset
from megatron.core.transformer.transformer_config import TransformerConfig

from qwenpt.models.attention import SDPAttention, attach_dual_chunk
from qwenpt.models import dca, hybrid, packed_rope, rope
from qwenpt.models.norm import RMSNorm
from qwenpt.models.size import head_dim
from qwenpt.config import ModelConfig, ParallelConfig


def use_transformer_engine() -> bool:
    """Transformer Engine's fused spec when it imports and a GPU is present; else the SDPA spec."""
    if not torch.cuda.is_available():
        return False
    try:
        import transformer_engine  # noqa: F401
    except ImportError:
        return False
    return True


def gradient_accumulation_fusion_available() -> bool:
    """megatron-core's fused weight-gradient GEMM: a GPU plus TE or apex's CUDA extension."""
    if not torch.cuda.is_available():
        return False
    if use_transformer_engine():
        return True
    try:
        import fused_weight_gradient_mlp_cuda  # noqa: F401  (apex)
    except ImportError:
        return False
    return True


def _aux_loss_layout_factor(model: ModelConfig, parallel: ParallelConfig) -> int:
    """Undo megatron-core <= 0.16's layout-dependent weight of the MoE load-balancing loss.

    With per-token loss, megatron-core scales each rank's aux loss by its *local* token count, and
    the rank sees 1/(TP x CP) of the sequence under sequence/context parallelism, so the aux loss
    gradient shrinks by TP x CP against one device (fixed upstream in Megatron-LM PR #5047, after
    0.16). ``global_aux_loss`` also divides by the tokens of every data-parallel replica, while the
    gradients are then summed over them, so it shrinks by TP x CP x DP = world / PP; 0.17+ (tested:
    0.19.2) undoes the TP x CP part itself, not the DP part. Multiplying the coefficient back makes
    every layout train the same model.
    """
    tp_cp = parallel.tensor_model_parallel_size * parallel.context_parallel_size
    newer = Version(megatron.core.__version__) >= Version("0.17")
    if model.moe_load_balancing == "global_aux_loss":
        world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        layout = world // parallel.pipeline_model_parallel_size
        return layout // tp_cp if newer else layout
    return 1 if newer else tp_cp


def transformer_config(
    model: ModelConfig,
    parallel: ParallelConfig,
    dtype: torch.dtype = torch.float32,
    *,
    perform_initialization: bool = True,
    fp8: str | None = None,
    fp8_recipe: str = "delayed",
) -> TransformerConfig:
    """The megatron-core config for a Qwen model under a parallel layout (``fp8``: TE's FP8 format,
    hybrid or e4m3, validated by :func:`qwenpt.models.checks.validate_fp8`)."""
    on_gpu = torch.cuda.is_available()
    moe = model.num_experts is not None
    yarn = rope.rope_scaling(model) is not None
    config = TransformerConfig(
        # architecture
        num_layers=model.num_layers,
        hidden_size=model.hidden_size,
        ffn_hidden_size=model.ffn_hidden_size,
        num_attention_heads=model.num_attention_heads,
        num_query_groups=model.num_query_groups,
        kv_channels=head_dim(model),
        qk_layernorm=model.qk_layernorm,
        normalization="RMSNorm",
        layernorm_epsilon=model.norm_eps,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=model.qkv_bias,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        init_method_std=model.init_std,
        # mixture of experts
        num_moe_experts=model.num_experts,
        moe_ffn_hidden_size=model.moe_ffn_hidden_size if moe else None,
        moe_router_topk=model.moe_router_topk if moe else 2,
        # softmax then top-k (Qwen1.5/2-MoE); with norm_topk_prob (Qwen3-MoE) top-k of the logits then
        # softmax over those k, which is HF's softmax -> top-k -> divide by their sum, in closed form
        moe_router_pre_softmax=moe and not model.moe_norm_topk_prob,
        moe_router_load_balancing_type=model.moe_load_balancing if moe else "aux_loss",
        moe_aux_loss_coeff=model.moe_aux_loss_coeff * _aux_loss_layout_factor(model, parallel) if moe else 0.0,
        moe_shared_expert_intermediate_size=model.moe_shared_expert_ffn_hidden_size if moe else None,
        moe_shared_expert_gate=moe and model.moe_shared_expert_ffn_hidden_size is not None,
        moe_token_dispatcher_type=parallel.moe_token_dispatcher_type,
        moe_grouped_gemm=moe and use_transformer_engine(),
        # parallelism
        tensor_model_parallel_size=parallel.tensor_model_parallel_size,
        pipeline_model_parallel_size=parallel.pipeline_model_parallel_size,
        virtual_pipeline_model_parallel_size=parallel.virtual_pipeline_model_parallel_size,
        context_parallel_size=parallel.context_parallel_size,
        expert_model_parallel_size=parallel.expert_model_parallel_size,
        expert_tensor_parallel_size=parallel.expert_tensor_parallel_size or parallel.tensor_model_parallel_size,
        sequence_parallel=parallel.sequence_parallel,
        # interleaved pipelines overlap their p2p with compute, as Megatron-LM does by default; the
        # unbatched p2p path is also the one that keeps messages ordered when PP=2 (both neighbours
        # are the same rank: batched isend/irecv would pair a gradient with an activation)
        overlap_p2p_comm=parallel.virtual_pipeline_model_parallel_size is not None,
        batch_p2p_comm=parallel.virtual_pipeline_model_parallel_size is None,
        recompute_granularity=parallel.recompute_granularity,
        recompute_method="uniform" if parallel.recompute_granularity == "full" else None,
        recompute_num_layers=parallel.recompute_num_layers if parallel.recompute_granularity == "full" else None,
        # numerics
        params_dtype=dtype,
        pipeline_dtype=dtype,
        bf16=dtype == torch.bfloat16,
        fp8=fp8,
        fp8_recipe=fp8_recipe,
        calculate_per_token_loss=True,
        # kernels: fusions need CUDA (and apex/TE for some); CPU takes the plain torch paths
        use_cpu_initialization=not on_gpu,
        perform_initialization=perform_initialization,
        bias_activation_fusion=on_gpu,
        bias_dropout_fusion=on_gpu,
        masked_softmax_fusion=False,
        persist_layer_norm=False,
        gradient_accumulation_fusion=parallel.gradient_accumulation_fusion,
        # TE's fused RoPE kernel, as Megatron-LM uses; not with YaRN, whose attention factor the fused
        # packed-sequence (THD) kernel would drop
        apply_rope_fusion=use_transformer_engine() and not yarn,
        # the hybrid generation: GDN layers, gated attention, zero-centred norms, MTP
        **hybrid.transformer_config_fields(model),
    )
    if yarn:  # megatron-core reads YaRN's settings as attributes the TransformerConfig does not declare
        for key, value in rope.megatron_fields(model).items():
            setattr(config, key, value)
    return config


def layer_spec(model: ModelConfig) -> ModuleSpec:
    moe, qk_norm = model.num_experts, model.qk_layernorm
    if use_transformer_engine():
        return get_gpt_layer_with_transformer_engine_spec(
            num_experts=moe, moe_grouped_gemm=moe is not None, qk_layernorm=qk_norm)
    spec = get_gpt_layer_local_spec(num_experts=moe, normalization="RMSNorm", qk_layernorm=qk_norm)
    attention = spec.submodules.self_attention.submodules
    attention.core_attention = SDPAttention
    if qk_norm:  # per-head norms; megatron-core all-reduces their gradients over TP (heads are split)
        attention.q_layernorm = attention.k_layernorm = RMSNorm
    spec.submodules.input_layernorm = RMSNorm
    spec.submodules.pre_mlp_layernorm = RMSNorm
    return spec


def block_spec(model: ModelConfig, config: TransformerConfig, vp_stage: int | None) -> ModuleSpec | TransformerBlockSubmodules:
    """The decoder of one model chunk: its layers (Gated DeltaNet or attention, by the model's pattern)
    and, without TE, a final norm that supports SP."""
    spec = layer_spec(model)
    offset = get_transformer_layer_offset(config, vp_stage=vp_stage)
    layers = range(offset, offset + get_num_layers_to_build(config, vp_stage=vp_stage))
    if use_transformer_engine() and not hybrid.enabled(model):
        return spec  # megatron-core builds the block: the layer repeated, TE's final norm
    specs = hybrid.layer_specs(model, spec, layers, use_transformer_engine())
    if use_transformer_engine():
        from megatron.core.extensions.transformer_engine import TENorm

        return TransformerBlockSubmodules(layer_specs=specs, layer_norm=TENorm)
    return TransformerBlockSubmodules(layer_specs=specs, layer_norm=RMSNorm)


def build_model(
    model: ModelConfig,
    parallel: ParallelConfig,
    dtype: torch.dtype = torch.float32,
    *,
    perform_initialization: bool = True,
    fp8: str | None = None,
    fp8_recipe: str = "delayed",
) -> list[GPTModel]:
    """This rank's model chunks: one per virtual pipeline stage (one without interleaving).

    megatron-core's parallel state must be initialised (see :mod:`qwenpt.distributed`).
    """
    config = transformer_config(
        model, parallel, dtype, perform_initialization=perform_initialization, fp8=fp8, fp8_recipe=fp8_recipe
    )
    packed_rope.install()  # packed sequences: RoPE in one gather, no per-document loop (without TE's fused kernel)
    if hybrid.enabled(model):
        hybrid.install_cpu_kernels()  # Gated DeltaNet's kernels in torch where CUDA is absent
    vpp = parallel.virtual_pipeline_model_parallel_size
    chunks = []
    for vp_stage in range(vpp or 1):
        stage = vp_stage if vpp else None
        chunks.append(
            GPTModel(
                config=config,
                transformer_layer_spec=block_spec(model, config, stage),
                mtp_block_spec=hybrid.mtp_block_spec(model, config, layer_spec(model), use_transformer_engine(), stage),
                vocab_size=model.vocab_size,
                max_sequence_length=model.max_position_embeddings,
                pre_process=parallel_state.is_pipeline_first_stage(ignore_virtual=False, vp_stage=stage),
                post_process=parallel_state.is_pipeline_last_stage(ignore_virtual=False, vp_stage=stage),
                share_embeddings_and_output_weights=model.tie_embeddings,
                position_embedding_type="yarn" if rope.rope_scaling(model) is not None else "rope",
                rotary_percent=model.rotary_percent,
                rotary_base=int(model.rope_theta),
                vp_stage=stage,
            )
        )
        if dca.enabled(model):  # evaluation-time Dual Chunk Attention with the model's own RoPE frequencies
            attach_dual_chunk(chunks[-1], model)
        if torch.cuda.is_available():  # megatron-core's layers are built there; ours (norms, buffers) follow,
            chunks[-1].cuda(torch.cuda.current_device())  # as Megatron-LM's get_model moves them
    return chunks
