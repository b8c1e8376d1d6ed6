"""RMSNorm for the non-Transformer-Engine layer spec, usable with sequence parallelism.

megatron-core's local spec wraps ``torch.nn.RMSNorm`` and refuses sequence parallelism: with SP
each tensor-parallel rank normalises a different slice of the sequence, so the norm weight's
gradient is partial and must be all-reduced over the TP group. megatron-core does that in
``finalize_model_grads`` for every parameter marked ``sequence_parallel`` (as TE's and apex's
norms are); this is torch's RMSNorm with that mark.

Zero-centred (``config.layernorm_zero_centered_gamma``, the hybrid Qwen generation): the weight is
stored as w and applied as 1 + w, initialised to 0, as TE's ``zero_centered_gamma`` and the released
checkpoints do, so weight decay pulls the scale towards 1, not 0.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from megatron.core.transformer.transformer_config import TransformerConfig


class RMSNorm(torch.nn.RMSNorm):
    def __init__(self, config: TransformerConfig, hidden_size: int, eps: float = 1e-6,
                 zero_centered: Optional[bool] = None, **_: object) -> None:
        super().__init__(hidden_size, eps=eps)
        self.zero_centered = config.layernorm_zero_centered_gamma if zero_centered is None else zero_centered
        if self.zero_centered:
            torch.nn.init.zeros_(self.weight)
        setattr(self.weight, "sequence_parallel", config.sequence_parallel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.zero_centered:
            return super().forward(x)
        return F.rms_norm(x.float(), self.normalized_shape, 1.0 + self.weight.float(), self.eps).type_as(x)
