"""The hybrid generation's sizes (Qwen3-Next, Qwen3.5, Qwen3.6): every public config's parameter count equals
transformers' model on the meta device plus the MTP layer transformers drops, and the Hub's published totals; the
FLOPs formula equals counted matmuls (and Megatron-LM's formula, up to the documented differences); the planner's
per-GPU parameters and memory for the hybrid presets, derived here independently."""

from __future__ import annotations

import importlib
from types import SimpleNamespace

import pytest
import torch
import transformers
from hydra import compose, initialize_config_dir
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from conftest import ROOT, model_config
from qwenpt.config import ConfigError, ParallelConfig, register
from qwenpt.flops import forward_flops_per_token, training_flops_per_token
from qwenpt.models import build_model, param_counts
from qwenpt.models.size import gdn_widths, num_gdn_layers
from qwenpt.plan import Gpu, make_plan
from qwenpt.plan.memory import GiB, layer_activation_bytes, stage_params

HYBRID = ["qwen3_next_80b_a3b", "qwen3.5_0.8b", "qwen3.5_2b", "qwen3.5_4b", "qwen3.5_9b", "qwen3.5_27b",
          "qwen3.5_35b_a3b", "qwen3.5_122b_a10b", "qwen3.5_397b_a17b", "qwen3.6_27b", "qwen3.6_35b_a3b"]

# The Hub's safetensors parameter totals (Qwen3.5/3.6: the whole Qwen3_5(Moe)ForConditionalGeneration checkpoint,
# language model + MTP layer + vision tower; sources in each conf/model file's header).
PUBLISHED_TOTAL = {
    "qwen3_next_80b_a3b": 81_324_862_720, "qwen3.5_0.8b": 873_438_784, "qwen3.5_2b": 2_274_069_824,
    "qwen3.5_4b": 4_659_865_088, "qwen3.5_9b": 9_653_104_368, "qwen3.5_27b": 27_781_427_952,
    "qwen3.5_35b_a3b": 35_951_822_704, "qwen3.5_122b_a10b": 125_086_497_008, "qwen3.5_397b_a17b": 403_397_928_944,
    "qwen3.6_27b": 27_781_427_952, "qwen3.6_35b_a3b": 35_951_822_704,
}
# Published splits of those totals (language model without MTP, vision tower, MTP), from files that read the
# checkpoints' safetensors headers; and Qwen3.6's index total_size in bytes (every tensor BF16).
PUBLISHED_SPLIT = {
    "qwen3.5_2b": (1_881_825_088, 331_416_576, 60_828_160),
    "qwen3.5_4b": (4_205_751_296, 333_514_240, 120_599_552),
    "qwen3.5_397b_a17b": (396_346_350_336, 456_010_480, 6_595_568_128),
}
PUBLISHED_BF16_BYTES = {"qwen3.6_27b": 55_562_855_904, "qwen3.6_35b_a3b": 71_903_645_408}
# The vision towers of the published checkpoints (vision_config: depth, hidden, intermediate, heads; the others
# are transformers' defaults, the 27-layer tower; out_hidden_size is the language model's hidden size)
VISION = {"qwen3.5_0.8b": (12, 768, 3072, 12), "qwen3.5_2b": (24, 1024, 4096, 16), "qwen3.5_4b": (24, 1024, 4096, 16)}
ACTIVE_IN_NAME = {"qwen3_next_80b_a3b": 3, "qwen3.5_35b_a3b": 3, "qwen3.5_122b_a10b": 10, "qwen3.5_397b_a17b": 17,
                  "qwen3.6_35b_a3b": 3}


def hf_model_on_meta(m):
    """transformers' causal LM of ``m`` on the meta device, from a config written here field by field."""
    layer_types = ["full_attention" if (i + 1) % m.full_attention_interval == 0 else "linear_attention"
                   for i in range(m.num_layers)]
    common = dict(
        vocab_size=m.vocab_size, hidden_size=m.hidden_size, num_hidden_layers=m.num_layers,
        num_attention_heads=m.num_attention_heads, num_key_value_heads=m.num_query_groups, head_dim=m.kv_channels,
        linear_num_key_heads=m.linear_num_key_heads, linear_num_value_heads=m.linear_num_value_heads,
        linear_key_head_dim=m.linear_key_head_dim, linear_value_head_dim=m.linear_value_head_dim,
        linear_conv_kernel_dim=m.linear_conv_kernel_dim, layer_types=layer_types,
        tie_word_embeddings=m.tie_embeddings, attention_bias=m.qkv_bias, rms_norm_eps=m.norm_eps)
    moe = dict(num_experts=m.num_experts, num_experts_per_tok=m.moe_router_topk,
               moe_intermediate_size=m.moe_ffn_hidden_size,
               shared_expert_intermediate_size=m.moe_shared_expert_ffn_hidden_size)
    if m.family == "qwen3-next":
        config = transformers.Qwen3NextConfig(intermediate_size=m.ffn_hidden_size, decoder_sparse_step=1,
                                              mlp_only_layers=[], **common, **moe)
        cls = transformers.Qwen3NextForCausalLM
    elif m.num_experts is None:
        config = transformers.Qwen3_5TextConfig(intermediate_size=m.ffn_hidden_size, **common)
        cls = transformers.Qwen3_5ForCausalLM
    else:
        config, cls = transformers.Qwen3_5MoeTextConfig(**common, **moe), transformers.Qwen3_5MoeForCausalLM
    assert config.layer_types == layer_types
    with torch.device("meta"):
        return cls(config)


def vision_tower_params(name: str, m) -> int:
    depth, hidden, intermediate, heads = VISION.get(name, (27, 1152, 4304, 16))
    moe = m.num_experts is not None
    module = (transformers.models.qwen3_5_moe.modeling_qwen3_5_moe if moe
              else transformers.models.qwen3_5.modeling_qwen3_5)
    config_cls = transformers.Qwen3_5MoeVisionConfig if moe else transformers.Qwen3_5VisionConfig
    config = config_cls(depth=depth, hidden_size=hidden, intermediate_size=intermediate, num_heads=heads,
                        out_hidden_size=m.hidden_size)
    with torch.device("meta"):
        tower = (module.Qwen3_5MoeVisionModel if moe else module.Qwen3_5VisionModel)(config)
    return sum(p.numel() for p in tower.parameters())


def test_every_hybrid_config_is_listed():
    names = {p.stem for p in (ROOT / "conf" / "model").glob("qwen3*.yaml")
             if p.stem.startswith(("qwen3.5", "qwen3.6", "qwen3_next"))}
    assert names == set(HYBRID) == set(PUBLISHED_TOTAL)
    for name in HYBRID:  # every number's source is named in the file
        assert (ROOT / "conf" / "model" / f"{name}.yaml").read_text().startswith("# Qwen3")


@pytest.mark.parametrize("name", HYBRID)
def test_param_count_equals_transformers_on_meta_plus_mtp(name):
    m = model_config(name)
    counts = param_counts(m)
    model = hf_model_on_meta(m)
    assert sum(p.numel() for p in model.parameters()) == counts.total - counts.mtp == counts.without_mtp
    # the MTP layer transformers drops (HF mtp.*): pre_fc_norm_embedding + pre_fc_norm_hidden (h each), fc (2h -> h),
    # one full-attention decoder layer as transformers builds it, and a final norm
    h = m.hidden_size
    full = next(i for i in range(m.num_layers) if (i + 1) % m.full_attention_interval == 0)
    decoder_layer = sum(p.numel() for p in model.model.layers[full].parameters())
    assert m.mtp_num_layers == 1
    assert counts.mtp == 2 * h + 2 * h * h + decoder_layer + h
    assert counts.embedding == m.vocab_size * h * (1 if m.tie_embeddings else 2)
    if m.num_experts is None:
        assert counts.active == counts.total
    else:  # routed experts: top-k of them per token; the name's "A<n>B" lies between the active counts
        experts_left_out = (m.num_experts - m.moe_router_topk) * 3 * h * m.moe_ffn_hidden_size * (m.num_layers + 1)
        assert counts.active == counts.total - experts_left_out
        low = round((counts.active - counts.mtp_active - counts.embedding) / 1e9)
        high = round((counts.active - counts.mtp_active) / 1e9)
        assert low <= ACTIVE_IN_NAME[name] <= high


@pytest.mark.parametrize("name", HYBRID)
def test_megatron_core_builds_as_many_parameters(name, megatron_world):
    m = model_config(name)
    with torch.device("meta"):
        model = build_model(m, ParallelConfig(), perform_initialization=False)[0]
    assert sum(p.numel() for p in model.parameters()) == param_counts(m).total
    assert sum(p.numel() for p in model.mtp.parameters()) == param_counts(m).mtp


@pytest.mark.parametrize("name", HYBRID)
def test_param_count_equals_the_published_total(name):
    m = model_config(name)
    counts = param_counts(m)
    vision = 0 if m.family == "qwen3-next" else vision_tower_params(name, m)
    assert counts.total + vision == PUBLISHED_TOTAL[name]
    if name in PUBLISHED_SPLIT:
        assert (counts.without_mtp, vision, counts.mtp) == PUBLISHED_SPLIT[name]
    if name in PUBLISHED_BF16_BYTES:
        assert 2 * (counts.total + vision) == PUBLISHED_BF16_BYTES[name]


def test_qwen3_6_has_qwen3_5_shapes():
    for size in ("27b", "35b_a3b"):
        a, b = model_config(f"qwen3.5_{size}"), model_config(f"qwen3.6_{size}")
        assert (a.family, b.family) == ("qwen3.5", "qwen3.6")
        assert {**vars(a), "name": 0, "family": 0} == {**vars(b), "name": 0, "family": 0}


def _recurrent_gated_delta_rule(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False,
                                use_qk_l2norm_in_kernel=False, cu_seqlens=None, **_):
    """The gated delta rule token by token in the form Megatron-LM's FLOPs count, per value head:
    S <- a (S - b k (k^T S)) + b k v^T, o = S^T q: four dk x dv products (k^T S, k (k^T S), k v^T, S^T q)."""
    assert initial_state is None and cu_seqlens is None and not use_qk_l2norm_in_kernel
    B, T, H, dk = k.shape
    scale = dk ** -0.5 if scale is None else scale
    q, k, v = (t.transpose(1, 2).float() for t in (q, k, v))
    g, beta = g.transpose(1, 2).float(), beta.transpose(1, 2).float()
    state = torch.zeros(B, H, dk, v.shape[-1])
    out = []
    for t in range(T):
        kt, vt, qt = k[:, :, t, None], v[:, :, t, None], q[:, :, t, None] * scale  # [B, H, 1, d]
        a, b = g[:, :, t, None, None].exp(), beta[:, :, t, None, None]
        state = a * (state - b * (kt.transpose(-1, -2) @ (kt @ state))) + b * (kt.transpose(-1, -2) @ vt)
        out.append(qt @ state)
    return torch.cat(out, 2).transpose(1, 2).to(v.dtype), None


@pytest.mark.parametrize("name", ["tiny_qwen3_5", "tiny_qwen3_5_moe"], ids=["hybrid-dense", "hybrid-moe"])
def test_flops_formula_matches_counted_matmuls(name, megatron_world, monkeypatch):
    """The documented formula (GDN layers, gated attention, MoE, the MTP layer and its head) equals torch's
    count of every matmul in megatron-core's forward pass, with the delta rule run as the recurrence the
    formula counts (the chunked kernels do more arithmetic for speed)."""
    m = model_config(name)
    model = build_model(m, ParallelConfig())[0].eval()
    for module in ("megatron.core.ssm.gated_delta_net", "megatron.core.ssm.gated_delta_net.gdn"):
        try:
            monkeypatch.setattr(importlib.import_module(module), "chunk_gated_delta_rule", _recurrent_gated_delta_rule)
        except (ImportError, AttributeError):
            pass
    batch, seq = 2, 64
    tokens = torch.randint(0, m.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(0))
    # the math backend decomposes attention into matmuls the counter sees; labels make the MTP layer run
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(tokens, torch.arange(seq).expand(batch, -1), None, labels=tokens)
    # nn.Conv1d pads both ends by kernel - 1 and megatron-core keeps the first seq outputs: the counter sees
    # kernel - 1 extra output positions per sequence and channel
    qk, v = gdn_widths(m)
    kernel = m.linear_conv_kernel_dim
    conv_padding = num_gdn_layers(m) * batch * 2 * (2 * qk + v) * kernel * (kernel - 1)
    expected = forward_flops_per_token(m, seq, causal=False) * batch * seq + conv_padding
    assert counter.get_total_flops() == pytest.approx(expected, rel=1e-12)
    # causal counting removes the masked half of the scores in every full-attention layer, the MTP layer's too
    q = m.num_attention_heads * m.kv_channels
    attention_layers = m.num_layers - num_gdn_layers(m) + m.mtp_num_layers
    assert attention_layers == 2
    saved = attention_layers * 4 * q * (seq - (seq + 1) / 2)
    assert forward_flops_per_token(m, seq) == pytest.approx(forward_flops_per_token(m, seq, causal=False) - saved)


def megatron_lm_flops(args, batch_size):
    """Megatron-LM's num_floating_point_operations (megatron/training/training.py, NVIDIA/Megatron-LM d98e8a64,
    2026-08), transformer_flops() on its GQA + gated-delta-net + MoE + MTP path, for a BSHD batch, transcribed."""
    tokens = batch_size * args.seq_length
    seqlen_squared_sum = batch_size * args.seq_length * args.seq_length
    moe_layer_pattern = [1 if (i % args.moe_layer_freq == 0) else 0 for i in range(args.num_layers)]
    if args.num_experts is None:
        num_dense_layers, num_moe_layers, num_experts_routed_to, last_layer_is_moe = args.num_layers, 0, 0, 0
    else:
        num_moe_layers = sum(moe_layer_pattern)
        num_dense_layers = args.num_layers - num_moe_layers
        num_experts_routed_to = args.moe_router_topk
        last_layer_is_moe = moe_layer_pattern[-1]
    mtp_num_layers = args.mtp_num_layers
    num_moe_layers += last_layer_is_moe * mtp_num_layers
    num_dense_layers += (1 - last_layer_is_moe) * mtp_num_layers
    num_layers = args.num_layers + mtp_num_layers
    moe_ffn_hidden_size = args.moe_ffn_hidden_size if args.moe_ffn_hidden_size is not None else args.ffn_hidden_size
    shared_expert_ffn_hidden_size = args.moe_shared_expert_intermediate_size or 0
    fb, fma, ffn = 3, 2, 3 if args.swiglu else 2
    query_projection_size = args.kv_channels * args.num_attention_heads
    key_projection_size = value_projection_size = args.kv_channels * args.num_query_groups
    gate_projection_size = query_projection_size if args.attention_output_gate else 0
    standard_self_attn_term = fb * fma * (
        args.hidden_size * (query_projection_size + key_projection_size + value_projection_size + gate_projection_size)
        + query_projection_size * args.hidden_size)
    standard_self_attn_core_term = fb * fma * query_projection_size / 2 * 2
    linear_attention_pattern = [0 if ((i + 1) % args.linear_attention_freq == 0) else 1 for i in range(num_layers)]
    num_linear_attention_layers = sum(linear_attention_pattern)
    num_standard_attention_layers = num_layers - num_linear_attention_layers
    qk_dim = args.linear_key_head_dim * args.linear_num_key_heads
    v_dim = args.linear_value_head_dim * args.linear_num_value_heads
    in_proj_dim = 2 * qk_dim + 2 * v_dim + 2 * args.linear_num_value_heads
    linear_self_attn_term = fb * fma * (
        args.hidden_size * in_proj_dim + args.linear_conv_kernel_dim * (2 * qk_dim + v_dim)
        + args.linear_num_value_heads * (args.linear_value_head_dim ** 2) * 4 + args.hidden_size * v_dim)
    self_attn_term = (linear_self_attn_term * num_linear_attention_layers
                      + standard_self_attn_term * num_standard_attention_layers)
    self_attn_core_term = standard_self_attn_core_term * num_standard_attention_layers
    return tokens * (
        fb * fma * args.hidden_size * (
            (args.ffn_hidden_size * ffn) * num_dense_layers
            + (moe_ffn_hidden_size * num_experts_routed_to * ffn) * num_moe_layers
            + (shared_expert_ffn_hidden_size * ffn) * num_moe_layers)
        + self_attn_term
        + fb * fma * mtp_num_layers * (3 * args.hidden_size + 2 * args.hidden_size * args.hidden_size)
        + fb * fma * args.hidden_size * args.padded_vocab_size * (mtp_num_layers + 1)
    ) + seqlen_squared_sum * self_attn_core_term


@pytest.mark.parametrize("name", ["qwen3_next_80b_a3b", "qwen3.5_9b", "qwen3.5_27b", "qwen3.5_397b_a17b"])
def test_flops_match_megatron_lm_up_to_the_documented_differences(name):
    m = model_config(name)
    args = SimpleNamespace(
        seq_length=4096, num_layers=m.num_layers, hidden_size=m.hidden_size, ffn_hidden_size=m.ffn_hidden_size,
        num_attention_heads=m.num_attention_heads, num_query_groups=m.num_query_groups, kv_channels=m.kv_channels,
        attention_output_gate=True, swiglu=True, num_experts=m.num_experts, moe_layer_freq=1,
        moe_router_topk=m.moe_router_topk, moe_ffn_hidden_size=m.moe_ffn_hidden_size,
        moe_shared_expert_intermediate_size=m.moe_shared_expert_ffn_hidden_size, mtp_num_layers=m.mtp_num_layers,
        linear_attention_freq=m.full_attention_interval, linear_key_head_dim=m.linear_key_head_dim,
        linear_value_head_dim=m.linear_value_head_dim, linear_num_key_heads=m.linear_num_key_heads,
        linear_num_value_heads=m.linear_num_value_heads, linear_conv_kernel_dim=m.linear_conv_kernel_dim,
        padded_vocab_size=m.vocab_size)
    s, h = 4096, m.hidden_size
    megatron = megatron_lm_flops(args, batch_size=1) / s / 3  # forward FLOPs per token
    ours = forward_flops_per_token(m, s)
    q, kv = m.num_attention_heads * m.kv_channels, m.num_query_groups * m.kv_channels
    qk, v = gdn_widths(m)
    nv = m.linear_num_value_heads
    dk, dv, kernel = m.linear_key_head_dim, m.linear_value_head_dim, m.linear_conv_kernel_dim
    assert dk == dv == 128  # Megatron-LM writes the delta rule's products as dv^2
    gdn = 2 * (h * (2 * qk + 2 * v + 2 * nv) + kernel * (2 * qk + v) + 4 * nv * dk * dv + v * h)
    attention = 2 * h * (2 * q + 2 * kv) + 2 * q * h + 2 * q * (s + 1)
    router = 2 * (m.num_experts * h + h) if m.num_experts else 0  # the router and the shared expert's gate
    full = m.num_layers // 4
    differences = (
        full * 2 * q  # causal scores: (s + 1) / 2 keys per token here, s / 2 there
        + (m.num_layers + 1) * router  # Megatron-LM leaves the routers out
        + attention - gdn  # the MTP layer is full attention (megatron-core's); Megatron-LM's pattern makes it GDN
        - 2 * 3 * h  # Megatron-LM counts the MTP norms as 3h multiply-adds
    )
    assert ours - megatron == pytest.approx(differences, rel=1e-12)
    assert abs(ours / megatron - 1) < 0.03


def _cfg(*overrides: str):
    register()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        return compose("config", overrides=list(overrides))


H100 = Gpu.named("H100")


def _gdn_rank_params(h, qk, v, nv, dv, kernel, tp):
    return (h * (2 * qk + 2 * v + 2 * nv) + (2 * qk + v) * kernel + 2 * nv + v * h) // tp + dv


def test_35b_a3b_preset_parameters_and_memory():
    """Qwen3.5-35B-A3B at TP 2 (SP) PP 2 EP 8 on 16 GPUs: every number derived here from the shapes."""
    plan = make_plan(_cfg("+experiment=pretrain_qwen3.5_35b_a3b"), 16, H100)
    assert (plan.dp, plan.expert_dp, plan.num_microbatches) == (4, 1, 128)
    h, V, tp = 2048, 248320, 2
    gdn = _gdn_rank_params(h, 16 * 128, 32 * 128, 32, 128, 4, tp)
    attention = h * (4096 + 4096 + 2 * 512) // tp + 4096 * h // tp + 2 * 256  # gated q (4096 + 4096), k, v; o; QK-norm
    moe_dense = 256 * h + 3 * h * 512 // tp + h  # router, shared expert, its gate
    experts = 32 * 3 * h * 512  # 256 / EP 8 experts per GPU, no expert-TP
    norms = 2 * h
    # 20 layers per stage: layers 0-19 and 20-39, 15 GDN and 5 attention each (every 4th is attention)
    layers = 15 * (gdn + norms + moe_dense) + 5 * (attention + norms + moe_dense)
    first = layers + V * h // tp
    mtp = 3 * h + 2 * h * h // tp + attention + norms + moe_dense  # enorm, hnorm, final norm, eh_proj, its layer
    last = layers + h + V * h // tp + mtp + V * h // tp  # final norm, output layer, MTP + its embedding copy
    assert [s.params.dense for s in plan.stages] == [first, last]
    assert [s.params.expert for s in plan.stages] == [20 * experts, 21 * experts]
    assert [s.params.total for s in plan.stages] == [2_630_660_960, 3_005_541_728]  # megatron-core's count too
    # activations of one layer, one micro-batch of 4096 tokens (bf16, TP 2 with SP)
    t, e = 4096, 2
    norm_side = 4 * e * t * h / tp
    gdn_act = t / tp * (2 * e * (2 * 2048 + 4096) + 2 * e * 2048 + 2 * e * 32 * 128 + e * 4096 + (4 + e) * 32
                        + e * 64 * 32 + 2 * 4 * 32 + 3 * e * 4096 + 2 * 4 * 4096)
    attention_act = e * t / tp * (2 * 4096 + 2 * 512 + (4096 + 512) + 2 * 4096)  # q k v out, QK-norm inputs, gate
    moe_act = 8 * t / tp * (e * h + 3 * e * 512) + 2 * 4 * t / tp * 256 + 3 * e * t * 512 / tp
    cfg = _cfg("+experiment=pretrain_qwen3.5_35b_a3b")
    gdn_layer = layer_activation_bytes(cfg.model, cfg.parallel, t, 1, linear=True)
    assert gdn_layer == pytest.approx(norm_side + gdn_act + moe_act)
    assert layer_activation_bytes(cfg.model, cfg.parallel, t, 1) == pytest.approx(norm_side + attention_act + moe_act)
    mean_layer = (15 * (norm_side + gdn_act + moe_act) + 5 * (norm_side + attention_act + moe_act)) / 20
    head = 6 * t * V / tp  # bf16 logits + fp32 softmax
    mtp_act = norm_side + attention_act + moe_act + 5 * e * t * h / tp + head
    first_stage, last_stage = plan.stages
    assert first_stage.activations == pytest.approx(2 * 20 * mean_layer)  # 1F1B: 2 micro-batches in flight
    assert last_stage.activations == pytest.approx(20 * mean_layer + head + mtp_act)
    assert plan.fits and plan.peak_stage.pp_rank == 1
    assert last_stage.total / GiB == pytest.approx(55.94, abs=0.01)


def test_397b_a17b_preset_fits_with_full_recompute():
    plan = make_plan(_cfg("+experiment=pretrain_qwen3.5_397b_a17b"), 256, H100)
    assert (plan.dp, plan.expert_dp, plan.num_microbatches) == (32, 2, 32)
    m, p = model_config("qwen3.5_397b_a17b"), _cfg("+experiment=pretrain_qwen3.5_397b_a17b").parallel
    # 15 layers per stage: stage 0 holds layers 0-14 (11 GDN, 4 attention), stage 1 15-29 (12 GDN, 3 attention)
    assert [stage_params(m, p, r).total for r in range(4)] == [s.params.total for s in plan.stages]
    assert plan.stages[1].params.total == plan.stages[2].params.total != plan.stages[0].params.total
    t, e, h, tp = 4096, 2, 4096, 2
    layer_input = e * t * h / tp  # full recompute keeps each layer's input (SP: split by TP)
    whole_layer = max(layer_activation_bytes(m, p, t, 1, linear=kind) for kind in (False, True))
    assert plan.stages[0].activations == pytest.approx(4 * 15 * layer_input + whole_layer)  # 4 micro-batches in flight
    head = 6 * t * 248320 / tp
    assert plan.stages[3].activations > 2 * head  # the main and the MTP head
    assert plan.fits and plan.peak_stage.total / GiB == pytest.approx(55.66, abs=0.01)
    # the anchor's pipeline (PP 8) needs uneven stages
    with pytest.raises(ConfigError, match="not divisible into 8 pipeline stages"):
        make_plan(_cfg("+experiment=pretrain_qwen3.5_397b_a17b", "parallel.pipeline_model_parallel_size=8"), 256, H100)
    # training FLOPs: 3 x forward, per trained token
    assert plan.flops_per_step == pytest.approx(training_flops_per_token(m, 4096) * 1024 * 4096)
