"""Dual Chunk Attention (An et al. 2024, "Training-Free Long-Context Scaling of Large Language
Models"; Qwen2 uses it with YaRN for 128K): evaluation at lengths beyond the training length
without ever showing the model a relative position it has not trained on.

The sequence is cut into chunks of ``L = chunk_size - local_size`` tokens. Keys sit at position
``j mod L``; a query ``i`` (in chunk ``n = i // L``) is given one of three positions, depending on
the key's chunk:

- **intra-chunk** (same chunk, causal): ``i mod L`` — the exact distance ``i - j``;
- **successive-chunk** (chunk ``n - 1``): ``min(i mod L + L, chunk_size)`` — exact distances for the
  first ``local_size`` queries of a chunk (the local window), capped at ``chunk_size`` after it;
- **inter-chunk** (chunks ``<= n - 2``): the constant ``min(2L - 1, chunk_size)``.

So every distance is at most ``chunk_size`` (set it to the training length). Each part is one
attention with its own query rotation; the three are merged by their log-sum-exp into the softmax
over all keys (what a single attention with these per-pair positions gives). Up to ``chunk_size``
tokens every distance is exact: DCA is plain attention there. The index rules are vLLM's
(``DualChunkRotaryEmbedding``); the computation here is blockwise in plain torch (no [s, s] scores:
one [L, L] block at a time), for the SDPA path on CPU or GPU.

megatron-core applies RoPE before the core attention, so queries and keys arrive rotated by their
sequence index ``t``; rotating them again by ``p - t`` puts them at position ``p`` (rotations of the
same frequencies compose; YaRN's attention factor is kept). The frequencies are the model's own
(:func:`attach` takes them from the GPTModel's rotary embedding, YaRN included).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch

from qwenpt.errors import ConfigError


@dataclass
class DualChunk:
    chunk_size: int
    local_size: int
    inv_freq: torch.Tensor

    @property
    def chunk_len(self) -> int:
        return self.chunk_size - self.local_size


def sizes(m: Any) -> tuple[Optional[int], Optional[int]]:
    """(chunk_size, local_size) of a model config (dataclass, DictConfig or a plain dict's section)."""
    dc = getattr(m, "dual_chunk_attention", None)
    if dc is None:
        return None, None
    get = dc.get if isinstance(dc, dict) or hasattr(dc, "get") else lambda key: getattr(dc, key, None)
    return get("chunk_size"), get("local_size")


def enabled(m: Any) -> bool:
    return sizes(m)[0] is not None


def validate(m: Any) -> None:
    """model.dual_chunk_attention in the user's terms (from :func:`qwenpt.models.checks.validate_model`)."""
    cs, ls = sizes(m)
    if cs is None and ls is None:
        return
    if cs is None or ls is None:
        raise ConfigError("model.dual_chunk_attention needs both chunk_size (at most the training length) and local_size "
                          "(the exact window into the previous chunk), e.g. {chunk_size: 2048, local_size: 256}")
    if not 0 < ls < cs:
        raise ConfigError(f"model.dual_chunk_attention: need 0 < local_size < chunk_size, got local_size {ls} and "
                          f"chunk_size {cs}")


def positions(seq_len: int, chunk_size: int, local_size: int) -> dict[str, torch.Tensor]:
    """The RoPE positions DCA gives each token: as a key, and as a query in each of the three parts."""
    chunk_len = chunk_size - local_size
    local = torch.arange(seq_len) % chunk_len
    return {
        "key": local,
        "intra": local,
        "successive": (local + chunk_len).clamp(max=chunk_size),
        "inter": torch.full((seq_len,), min(2 * chunk_len - 1, chunk_size)),
    }


def relative_positions(seq_len: int, chunk_size: int, local_size: int) -> torch.Tensor:
    """[query, key] -> the relative position DCA uses (query position - key position); -1 above the
    diagonal (causal). What :func:`attention` computes, as a table."""
    pos = positions(seq_len, chunk_size, local_size)
    chunk = torch.arange(seq_len) // (chunk_size - local_size)
    gap = chunk[:, None] - chunk[None, :]
    query = torch.where(gap == 0, pos["intra"][:, None], torch.where(gap == 1, pos["successive"][:, None], pos["inter"][:, None]))
    rel = query - pos["key"][None, :]
    return torch.where(torch.ones(seq_len, seq_len, dtype=torch.bool).tril(), rel, torch.full_like(rel, -1))


def _rotate(x: torch.Tensor, delta: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """Rotate [b, h, s, d] (megatron-core's non-interleaved RoPE layout) by ``delta[s]`` positions;
    angles in float64, as positions here reach the tens of thousands."""
    angles = delta.to(torch.float64)[:, None] * inv_freq.to(torch.float64)[None, :]
    angles = torch.cat([angles, angles], dim=-1)
    cos, sin = angles.cos().to(x), angles.sin().to(x)
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


def _part(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, causal: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention of one block: (normalised output, log-sum-exp of the scores per query)."""
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    if causal:
        mask = torch.ones(q.shape[2], k.shape[2], dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1, keepdim=True)
    return torch.matmul(torch.exp(scores - lse), v), lse


def _merge(parts: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """The softmax over the union of the parts' keys, from each part's output and log-sum-exp."""
    total = torch.logsumexp(torch.cat([lse for _, lse in parts], dim=-1), dim=-1, keepdim=True)
    return sum(torch.exp(lse - total) * out for out, lse in parts)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dc: DualChunk, scale: float) -> torch.Tensor:
    """Causal DCA of [b, heads, s, d] queries over [b, groups, s, d] keys/values (GQA: groups divide
    heads), all RoPE-rotated at their sequence index; returns [b, heads, s, d]."""
    seq, heads, groups = q.shape[2], q.shape[1], k.shape[1]
    dtype = q.dtype
    q, k, v = q.float(), k.float(), v.float()
    if groups != heads:
        k, v = k.repeat_interleave(heads // groups, dim=1), v.repeat_interleave(heads // groups, dim=1)
    pos, index = positions(seq, dc.chunk_size, dc.local_size), torch.arange(seq)
    qs = {part: _rotate(q, pos[part] - index, dc.inv_freq) for part in ("intra", "successive", "inter")}
    k = _rotate(k, pos["key"] - index, dc.inv_freq)
    size, outs = dc.chunk_len, []
    for start in range(0, seq, size):
        end = min(start + size, seq)
        rows = slice(start, end)
        parts = [_part(qs["intra"][:, :, rows], k[:, :, rows], v[:, :, rows], scale, causal=True)]
        if start >= size:
            prev = slice(start - size, start)
            parts.append(_part(qs["successive"][:, :, rows], k[:, :, prev], v[:, :, prev], scale, causal=False))
        for key_start in range(0, start - size, size):
            keys = slice(key_start, key_start + size)
            parts.append(_part(qs["inter"][:, :, rows], k[:, :, keys], v[:, :, keys], scale, causal=False))
        outs.append(_merge(parts))
    return torch.cat(outs, dim=2).to(dtype)
