"""RMSNorm for the non-Transformer-Engine layer spec, usable with sequence parallelism.

megatron-core's local spec wraps ``torch.nn.RMSNorm`` and refuses sequence parallelism: with SP
each tensor-parallel rank normalises a different slice of the sequence, so the norm weight's
gradient is partial and must be all-reduced over the TP group. megatron-core does that in
``finalize_model_grads`` for every parameter marked ``sequence_parallel`` (as TE's and apex's
norms are); this is torch's RMSNorm with that mark.
"""

from __future__ import annotations

import torch
from megatron.core.transformer.transformer_config import TransformerConfig


class RMSNorm(torch.nn.RMSNorm):
    def __init__(self, config: TransformerConfig, hidden_size: int, eps: float = 1e-6, **_: object) -> None:
        super().__init__(hidden_size, eps=eps)
        setattr(self.weight, "sequence_parallel", config.sequence_parallel)
