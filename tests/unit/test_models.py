"""Every public Qwen config builds with the published size; logits match transformers exactly."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from conftest import ROOT, hf_model, model_config
from qwenpt.config import ParallelConfig
from qwenpt.convert.layouts.qwen2 import hf_to_megatron, load_into, megatron_to_hf
from qwenpt.flops import forward_flops_per_token
from qwenpt.packing import packed_seq_params
from qwenpt.models import build_model, param_counts

# Published totals in billions (Hugging Face model cards, or the safetensors parameter count where
# the card rounds more coarsely than 0.5%: Qwen2/2.5-0.5B 494M, Qwen2.5-14B 14.77B, -32B 32.76B),
# and activated parameters for the MoE models.
PUBLISHED = {
    "qwen_1.8b": 1.84, "qwen_7b": 7.72, "qwen_14b": 14.17, "qwen_72b": 72.29,
    "qwen1.5_0.5b": 0.62, "qwen1.5_1.8b": 1.84, "qwen1.5_4b": 3.95, "qwen1.5_7b": 7.72,
    "qwen1.5_14b": 14.17, "qwen1.5_32b": 32.51, "qwen1.5_72b": 72.29, "qwen1.5_110b": 111.21,
    "qwen1.5_moe_a2.7b": 14.32,
    "qwen2_0.5b": 0.494, "qwen2_1.5b": 1.54, "qwen2_7b": 7.62, "qwen2_72b": 72.71, "qwen2_57b_a14b": 57.41,
    "qwen2.5_0.5b": 0.494, "qwen2.5_1.5b": 1.54, "qwen2.5_3b": 3.09, "qwen2.5_7b": 7.61,
    "qwen2.5_14b": 14.77, "qwen2.5_32b": 32.76, "qwen2.5_72b": 72.7,
    # Qwen3: the exact counts keras-hub publishes for its presets (qwen3_presets.py, qwen3_moe_presets.py)
    "qwen3_0.6b": 0.596049920, "qwen3_1.7b": 1.720574976, "qwen3_4b": 4.022468096, "qwen3_8b": 8.190735360,
    "qwen3_14b": 14.768307200, "qwen3_32b": 32.762123264, "qwen3_30b_a3b": 30.532122624,
    "qwen3_235b_a22b": 235.093634560,
}
PUBLISHED_ACTIVE = {"qwen1.5_moe_a2.7b": 2.7, "qwen2_57b_a14b": 14.2}
# Qwen3's model cards give activated parameters truncated, not rounded: 3.3B (of 30.5B) and 22B (of 235B)
PUBLISHED_ACTIVE_TRUNCATED = {"qwen3_30b_a3b": (3.3, 0.1), "qwen3_235b_a22b": (22.0, 1.0)}
TINY = {"tiny", "tiny_moe", "tiny_qwen3", "tiny_qwen3_moe", "tiny_qwen3_5", "tiny_qwen3_5_moe"}


def test_every_public_config_is_listed():
    """Each public config has its published size checked: here, or (the hybrids) in test_hybrid_sizes."""
    from unit.test_hybrid_sizes import HYBRID, PUBLISHED_TOTAL

    names = {p.stem for p in (ROOT / "conf" / "model").glob("*.yaml")} - TINY
    assert set(HYBRID) == set(PUBLISHED_TOTAL)
    assert names == set(PUBLISHED) | set(HYBRID)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_public_config_size_on_meta_device(name, megatron_world):
    m = model_config(name)
    with torch.device("meta"):
        model = build_model(m, ParallelConfig(), perform_initialization=False)[0]
    built = sum(p.numel() for p in model.parameters())
    counts = param_counts(m)
    assert built == counts.total
    assert counts.total / 1e9 == pytest.approx(PUBLISHED[name], rel=5e-3)
    if name in PUBLISHED_ACTIVE:
        assert counts.active / 1e9 == pytest.approx(PUBLISHED_ACTIVE[name], rel=5e-3)
    elif name in PUBLISHED_ACTIVE_TRUNCATED:
        value, step = PUBLISHED_ACTIVE_TRUNCATED[name]
        assert value <= counts.active / 1e9 < value + step
    else:
        assert counts.active == counts.total


@pytest.mark.parametrize(
    "name,overrides",
    [("tiny", {}), ("tiny", {"tie_embeddings": False, "num_query_groups": 4}), ("tiny_moe", {}),
     ("tiny_qwen3", {}), ("tiny_qwen3_moe", {})],
    ids=["dense-gqa-tied", "dense-mha-untied", "moe-shared-expert", "qwen3-qknorm-head64", "qwen3-moe-renormalised"],
)


def test_logits_match_transformers(name, overrides, megatron_world):
    m = model_config(name, **overrides)
    reference = hf_model(m)
    model = build_model(m, ParallelConfig())[0].eval()
    load_into(model, hf_to_megatron(reference.state_dict(), m))
    tokens = torch.randint(0, m.vocab_size, (2, 96), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference(tokens).logits
        got = model(tokens, torch.arange(96).expand(2, -1), None)
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() <= 1e-5


@pytest.mark.parametrize("name", ["tiny", "tiny_moe", "tiny_qwen3", "tiny_qwen3_moe"])
def test_mapping_round_trip_is_exact(name):
    m = model_config(name)
    state = hf_model(m).state_dict()
    from qwenpt.convert.layouts.qwen2 import unfuse_experts

    state = unfuse_experts(state)
    back = megatron_to_hf(hf_to_megatron(state, m), m)
    expected = {k for k in state if not (m.tie_embeddings and k == "lm_head.weight")}
    assert set(back) == expected
    assert all(torch.equal(back[k], state[k]) for k in back)


@pytest.mark.parametrize("name", ["tiny", "tiny_moe", "tiny_qwen3", "tiny_qwen3_moe"])
def test_flops_formula_matches_counted_matmuls(name, megatron_world):
    """The documented formula equals torch's count of every matmul in the real forward pass."""
    m = model_config(name)
    model = build_model(m, ParallelConfig())[0].eval()
    batch, seq = 2, 64
    tokens = torch.randint(0, m.vocab_size, (batch, seq))
    # the math backend decomposes attention into matmuls the counter sees (the fused CPU kernel it does not)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(tokens, torch.arange(seq).expand(batch, -1), None)
    expected = forward_flops_per_token(m, seq, causal=False) * batch * seq
    assert counter.get_total_flops() == pytest.approx(expected, rel=1e-9)
    # causal counting removes exactly the masked half of the score matrix (plus the diagonal); the
    # scores are as wide as all query heads together: heads x head width (Qwen3: not hidden_size)
    q = m.num_attention_heads * (m.kv_channels or m.hidden_size // m.num_attention_heads)
    saved = m.num_layers * 4 * q * (seq - (seq + 1) / 2)
    assert forward_flops_per_token(m, seq) == pytest.approx(forward_flops_per_token(m, seq, causal=False) - saved)
    # packed documents (document masking): each attends within itself, so the score matrices are L x L
    lengths = [10, 24, 30]
    position_ids = torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(tokens[:1], position_ids, None, packed_seq_params=packed_seq_params(position_ids))
    full_keys = sum(n * n for n in lengths) / seq  # the math backend computes every L x L score
    counted = (forward_flops_per_token(m, seq, causal=False) - m.num_layers * 4 * q * (seq - full_keys)) * seq
    assert counter.get_total_flops() == pytest.approx(counted, rel=1e-9)
    causal_keys = sum(n * (n + 1) / 2 for n in lengths) / seq  # what causal kernels compute of them
    assert forward_flops_per_token(m, seq, document_lengths=lengths) == pytest.approx(
        forward_flops_per_token(m, seq) - m.num_layers * 4 * q * ((seq + 1) / 2 - causal_keys))
    assert forward_flops_per_token(m, seq, document_lengths=[seq]) == pytest.approx(forward_flops_per_token(m, seq))
