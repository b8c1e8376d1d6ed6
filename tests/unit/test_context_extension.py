"""Long context beyond document masking and YaRN: staged extension (a new run from another's
checkpoint), validation loss by position, the planner at 32K, and Dual Chunk Attention."""

from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F

from conftest import model_config
from qwenpt import eval_positions
from qwenpt.config import ConfigError, DualChunkConfig, ParallelConfig
from qwenpt.validation import validate
from qwenpt.models import dca
from conftest import compose_cfg


# ---- Dual Chunk Attention -------------------------------------------------------------------------


def _rope(x: torch.Tensor, pos: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """Plain RoPE of [b, h, s, d] at positions ``pos`` (megatron-core's non-interleaved layout)."""
    angles = pos.double()[:, None] * inv_freq.double()[None]
    angles = torch.cat([angles, angles], -1)
    half = x.shape[-1] // 2
    return x * angles.cos().float() + torch.cat([-x[..., half:], x[..., :half]], -1) * angles.sin().float()


def test_dca_index_rules_by_hand():
    # chunk_size 4, local_size 1: chunks of L = 3 tokens; keys at j mod 3; queries at i mod 3 in their own
    # chunk, min(i mod 3 + 3, 4) in the previous one, min(2 x 3 - 1, 4) = 4 in older ones
    assert dca.relative_positions(8, 4, 1).tolist() == [
        [0, -1, -1, -1, -1, -1, -1, -1],
        [1, 0, -1, -1, -1, -1, -1, -1],
        [2, 1, 0, -1, -1, -1, -1, -1],
        [3, 2, 1, 0, -1, -1, -1, -1],  # successive chunk, inside the local window: exact (3 - j)
        [4, 3, 2, 1, 0, -1, -1, -1],  # i mod 3 = 1 = local_size: still exact
        [4, 3, 2, 2, 1, 0, -1, -1],   # past the window: capped at chunk_size 4 (exact would be 5, 4, 3)
        [4, 3, 2, 3, 2, 1, 0, -1],    # chunk 2: inter-chunk to chunk 0 (query at 4), successive to chunk 1
        [4, 3, 2, 4, 3, 2, 1, 0],
    ]
    # no distance ever exceeds chunk_size, whatever the length
    assert dca.relative_positions(200, 32, 8).max().item() == 32


def test_dca_is_plain_attention_up_to_chunk_size_and_a_softmax_over_its_positions_beyond():
    torch.manual_seed(0)
    b, heads, groups, seq, d = 2, 4, 2, 40, 16
    inv_freq = 1.0 / (10000 ** (torch.arange(0, d, 2).float() / d))
    q, k, v = torch.randn(b, heads, seq, d), torch.randn(b, groups, seq, d), torch.randn(b, groups, seq, d)
    index = torch.arange(seq)
    q_rot, k_rot = _rope(q, index, inv_freq), _rope(k, index, inv_freq)  # as megatron-core hands them over
    plain = F.scaled_dot_product_attention(q_rot, k_rot, v, is_causal=True, scale=0.3, enable_gqa=True)
    for chunk_size, local_size in ((40, 10), (64, 8), (48, 20)):  # seq <= chunk_size: 1 or 2 chunks
        out = dca.attention(q_rot, k_rot, v, dca.DualChunk(chunk_size, local_size, inv_freq), 0.3)
        assert (out - plain).abs().max().item() <= 1e-6
    # beyond: the same as one softmax whose every (query, key) pair is rotated by DCA's rule for it
    chunk_size, local_size = 8, 3
    out = dca.attention(q_rot, k_rot, v, dca.DualChunk(chunk_size, local_size, inv_freq), 0.3)
    pos, chunk = dca.positions(seq, chunk_size, local_size), index // (chunk_size - local_size)
    keys = _rope(k, pos["key"], inv_freq).repeat_interleave(2, 1)
    queries = {part: _rope(q, pos[part], inv_freq) for part in ("intra", "successive", "inter")}
    scores = torch.full((b, heads, seq, seq), float("-inf"))
    for i in range(seq):
        for j in range(i + 1):
            gap = chunk[i] - chunk[j]
            part = "intra" if gap == 0 else "successive" if gap == 1 else "inter"
            scores[:, :, i, j] = (queries[part][:, :, i] * keys[:, :, j]).sum(-1) * 0.3
    reference = torch.softmax(scores, -1) @ v.repeat_interleave(2, 1)
    assert (out - reference).abs().max().item() <= 1e-5
    assert (out - plain).abs().max().item() > 1e-2  # and that differs from plain attention


def test_dca_in_the_model_is_evaluation_only(megatron_world):
    from qwenpt.models import build_model

    seq = 64
    tokens = torch.randint(0, 8192, (1, seq), generator=torch.Generator().manual_seed(0))
    positions = torch.arange(seq)[None]

    def logits(dual_chunk: DualChunkConfig, train: bool) -> torch.Tensor:
        torch.manual_seed(0)
        model = build_model(model_config("tiny", dual_chunk_attention=dual_chunk), ParallelConfig())[0]
        model.train(train)
        with torch.no_grad():
            return model(tokens, positions, None)

    plain = logits(DualChunkConfig(), False)
    assert (logits(DualChunkConfig(chunk_size=64, local_size=16), False) - plain).abs().max().item() <= 1e-5
    assert (logits(DualChunkConfig(chunk_size=16, local_size=4), False) - plain).abs().max().item() > 1e-3
    assert (logits(DualChunkConfig(chunk_size=16, local_size=4), True) - logits(DualChunkConfig(), True)).abs().max() == 0


def test_dca_and_extension_validation():
    for overrides, message in [
        (["model.dual_chunk_attention.chunk_size=256"], "needs both chunk_size"),
        (["model.dual_chunk_attention.chunk_size=256", "model.dual_chunk_attention.local_size=256"],
         "need 0 < local_size < chunk_size"),
        (["model.dual_chunk_attention.chunk_size=256", "model.dual_chunk_attention.local_size=32"],
         "set data.document_mask=false with it"),
        (["checkpoint.init_optimizer=true"], "set checkpoint.init_from"),
        (["checkpoint.previous_stage=['+experiment=x']"], "set checkpoint.init_from to its checkpoints directory"),
        (["train.eval_position_buckets=-1"], "train.eval_position_buckets must be 0"),
    ]:
        with pytest.raises(ConfigError, match=message):
            validate(compose_cfg(*overrides), check_files=False)
    validate(compose_cfg("model.dual_chunk_attention.chunk_size=256", "model.dual_chunk_attention.local_size=32",
                      "data.document_mask=false"), check_files=False)


# ---- position buckets -----------------------------------------------------------------------------


def test_position_bucket_sums_by_hand():
    losses = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]])
    mask = torch.tensor([[1, 1, 1, 0, 1, 1, 1, 1]])
    positions = torch.tensor([[0, 1, 2, 3, 0, 1, 6, 7]])  # two documents: positions restart
    sums = eval_positions.bucket_sums(losses, mask, positions, 4, 8)  # buckets of 2 positions
    assert sums.tolist() == [1 + 2 + 5 + 6, 3, 0, 7 + 8, 4, 1, 0, 2]
    assert eval_positions.bucket_means(sums) == [14 / 4, 3.0, None, 7.5]
    assert eval_positions.bounds(4, 8) == [0, 2, 4, 6]


# ---- planner at 32K -------------------------------------------------------------------------------


# ---- a two-stage run ------------------------------------------------------------------------------
