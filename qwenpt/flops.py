"""Exact training FLOPs of a Qwen model, and MFU.

Per token and layer, counting 2 FLOPs per multiply-accumulate of every matmul:

    attention projections  2 * h * (q + 2*kv) + 2 * q * h        q = heads*d, kv = groups*d (GQA), d the
                                                                  head width (Qwen3: 128, not h/heads)
    attention scores/values 2 * 2 * q * (s + 1) / 2               causal: token i attends to i keys; with
                                                                  document masking, to its own document's
                                                                  keys only: (L + 1) / 2 on average in a
                                                                  document of L tokens
    MLP, dense SwiGLU      2 * 3 * h * f
    MLP, MoE               2 * h * E (router) + k * 2 * 3 * h * f_e + 2 * 3 * h * f_s + 2 * h (shared gate)
plus the LM head, 2 * h * V per token. Training is 3x the forward (backward = 2x forward);
activation recomputation is not counted (model FLOPs, as MFU is defined in the PaLM paper).
Norms (QK-norm included: elementwise, no matmul), RoPE, softmax and the loss are O(h) per token and
left out.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch

from qwenpt.models.size import attention_widths, mlp_params

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity), by substring of the device name.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "H800": 989.0, "A100": 312.0, "A800": 312.0, "L40S": 362.0}


def mean_attended_keys(document_lengths: Sequence[int]) -> float:
    """Keys a token attends to on average under document masking: sum of L (L + 1) / 2 over sum of L."""
    return sum(n * (n + 1) / 2 for n in document_lengths) / sum(document_lengths)


def forward_flops_per_token(m: Any, seq_length: int, causal: bool = True,
                            document_lengths: Optional[Sequence[int]] = None) -> float:
    """Forward FLOPs per token; ``causal=False`` counts the full s x s score matrix (as kernels
    without causal skipping, and torch's FlopCounterMode, do); ``document_lengths``: the documents of
    packed samples under document masking, each attending within itself."""
    q, kv = attention_widths(m)
    projections = 2 * m.hidden_size * (q + 2 * kv) + 2 * q * m.hidden_size
    if document_lengths is not None:
        keys = mean_attended_keys(document_lengths)
    else:
        keys = (seq_length + 1) / 2 if causal else seq_length
    scores = 2 * 2 * q * keys
    mlp = 2 * (mlp_params(m, active=True))  # router, active experts, shared expert and its gate
    lm_head = 2 * m.hidden_size * m.vocab_size
    return m.num_layers * (projections + scores + mlp) + lm_head


def training_flops_per_token(m: Any, seq_length: int, document_lengths: Optional[Sequence[int]] = None) -> float:
    return 3 * forward_flops_per_token(m, seq_length, document_lengths=document_lengths)


def peak_tflops(override: Optional[float] = None) -> Optional[float]:
    """Per-device peak for MFU: the override, else a known GPU's bf16 peak, else None (CPU)."""
    if override is not None:
        return override
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
