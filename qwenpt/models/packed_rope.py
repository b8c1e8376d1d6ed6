"""RoPE for packed sequences in one gather, with no host sync.

Without Transformer Engine's fused kernel, megatron-core's THD RoPE reads ``cu_seqlens`` back to the
host and applies the rotation document by document, for q and for k, in every layer: 0.16.1 takes
one ``.tolist()`` and a split/concatenate per document, 0.19.2 a ``.tolist()``, a ``.item()`` and one
rotation per document (measured: 19K kernel-like ops per micro-batch of the 1.5B's structure with 10
documents, against 3.8K unpacked; bench/step_budget.py). A packed token's rotation depends only on its
position within its document, which :func:`qwenpt.packing.pack` already knows and attaches to the
``cu_seqlens`` tensor megatron-core hands over; so the frequencies are gathered once per call
(``freqs[positions]``) and megatron-core's own unpacked rotation runs once over all tokens. Under
context parallelism the attached positions are those of this rank's chunks, so the same gather holds.

Installed by :func:`install` (from :func:`qwenpt.models.build_model`) in place of the name
``apply_rotary_pos_emb`` in megatron-core's attention module; any call it does not recognise (TE's
fused RoPE, unpacked input, a ``cu_seqlens`` without positions) goes to megatron-core's function.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from megatron.core.transformer import attention as megatron_attention

from qwenpt.packing import positions_of

_megatron_apply: Optional[Callable[..., torch.Tensor]] = None


def apply_rotary_pos_emb(t: torch.Tensor, freqs: torch.Tensor, config: Any, cu_seqlens: Optional[torch.Tensor] = None,
                         *args: Any, **kwargs: Any) -> torch.Tensor:
    """megatron-core's ``apply_rotary_pos_emb`` with packed (THD) input [t, heads, dim] rotated in one call."""
    positions = positions_of(cu_seqlens)
    if positions is None or config.apply_rope_fusion or positions.numel() != t.shape[0]:
        return _megatron_apply(t, freqs, config, cu_seqlens, *args, **kwargs)
    # freqs [max_s, 1, 1, d] -> [t, 1, 1, d]; t [t, h, d] -> [t, 1, h, d]: megatron's sbhd rotation
    return _megatron_apply(t.unsqueeze(1), freqs[positions], config, None, *args, **kwargs).squeeze(1)


def install() -> None:
    """Route megatron-core's attention through :func:`apply_rotary_pos_emb` (once; idempotent)."""
    global _megatron_apply
    if megatron_attention.apply_rotary_pos_emb is apply_rotary_pos_emb:
        return
    _megatron_apply = megatron_attention.apply_rotary_pos_emb
    megatron_attention.apply_rotary_pos_emb = apply_rotary_pos_emb
