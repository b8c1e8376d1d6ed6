"""Exact training FLOPs of a Qwen model, and MFU.

Per token and layer, counting 2 FLOPs per multiply-accumulate of every matmul:

    attention projections  2 * h * (q + g + 2*kv) + 2 * q * h    q = heads*d, kv = groups*d (GQA), d the
                                                                  head width (Qwen3: 128, not h/heads);
                                                                  g = q with the output gate (the hybrids'
                                                                  q_proj is twice as wide), else 0
    attention scores/values 2 * 2 * q * (s + 1) / 2               causal: token i attends to i keys; with
                                                                  document masking, to its own document's
                                                                  keys only: (L + 1) / 2 on average in a
                                                                  document of L tokens
    Gated DeltaNet         2 * (h * (2 qk + 2 v + 2 nv)           in_proj (q, k, v, z, beta, alpha)
                                + K * (2 qk + v)                  depthwise causal conv, kernel K
                                + 4 * nv * dk * dv                the delta rule per value head: k^T S,
                                                                  k (k^T S), k v^T and S^T q
                                + v * h)                          out_proj
                           qk = key heads x dk, v = nv x dv (value heads x their width): Megatron-LM's
                           GDN term (num_floating_point_operations in megatron/training/training.py, which
                           writes 4 * nv * dv^2: the same, as every released model has dk = dv = 128)
    MLP, dense SwiGLU      2 * 3 * h * f
    MLP, MoE               2 * h * E (router) + k * 2 * 3 * h * f_e + 2 * 3 * h * f_s + 2 * h (shared gate)
    MTP layer (each)       2 * 2h * h (eh_proj) + a full-attention layer (projections, scores, MLP)
                           + its own LM head 2 * h * V
plus the LM head, 2 * h * V per token. The hybrids' layers are GDN except every full_attention_interval-th;
an MTP layer is always full attention (megatron-core builds it from the attention layer's spec; Megatron-LM's
formula instead extends the GDN pattern over the MTP layer, which for every released hybrid counts it as GDN).
Training is 3x the forward (backward = 2x forward); activation recomputation is not counted (model FLOPs, as
MFU is defined in the PaLM paper). Norms (QK-norm, the GDN output norm, the MTP norms included: elementwise,
no matmul), RoPE, softmax, the GDN gates and L2 norms, and the loss are O(h) per token and left out (Megatron-LM
counts the MTP norms as 3h multiply-adds, not the others). The GDN's chunked kernel does more arithmetic than
the recurrence above (intra-chunk scores and a triangular solve); as Megatron-LM, the model FLOPs count the
recurrence.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from qwenpt.models.size import attention_widths, gate_width, gdn_in_proj_width, gdn_widths, mlp_params, num_gdn_layers
from qwenpt.config import ModelConfig

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity), by substring of the device name.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "H800": 989.0, "A100": 312.0, "A800": 312.0, "L40S": 362.0}


def mean_attended_keys(document_lengths: Sequence[int]) -> float:
    """Keys a token attends to on average under document masking: sum of L (L + 1) / 2 over sum of L."""
    return sum(n * (n + 1) / 2 for n in document_lengths) / sum(document_lengths)


def gdn_flops_per_token(m: ModelConfig) -> float:
    """Forward FLOPs of one Gated DeltaNet mixer per token (its norms and MLP not included)."""
    qk, v = gdn_widths(m)
    h, nv = m.hidden_size, m.linear_num_value_heads
    return 2 * (h * gdn_in_proj_width(m) + m.linear_conv_kernel_dim * (2 * qk + v)
                + 4 * nv * m.linear_key_head_dim * m.linear_value_head_dim + v * h)


def forward_flops_per_token(m: ModelConfig, seq_length: int, causal: bool = True,
                            document_lengths: Optional[Sequence[int]] = None) -> float:
    """Forward FLOPs per token; ``causal=False`` counts the full s x s score matrix (as kernels
    without causal skipping, and torch's FlopCounterMode, do); ``document_lengths``: the documents of
    packed samples under document masking, each attending within itself."""
    q, kv = attention_widths(m)
    h = m.hidden_size
    projections = 2 * h * (q + gate_width(m) + 2 * kv) + 2 * q * h
    if document_lengths is not None:
        keys = mean_attended_keys(document_lengths)
    else:
        keys = (seq_length + 1) / 2 if causal else seq_length
    scores = 2 * 2 * q * keys
    attention = projections + scores
    mlp = 2 * (mlp_params(m, active=True))  # router, active experts, shared expert and its gate
    lm_head = 2 * h * m.vocab_size
    gdn = num_gdn_layers(m)
    mixers = (m.num_layers - gdn) * attention + (gdn * gdn_flops_per_token(m) if gdn else 0)
    mtp_layers = getattr(m, "mtp_num_layers", 0) or 0
    mtp = mtp_layers * (2 * 2 * h * h + attention + mlp + lm_head)
    return mixers + m.num_layers * mlp + lm_head + mtp


def training_flops_per_token(m: ModelConfig, seq_length: int, document_lengths: Optional[Sequence[int]] = None) -> float:
    return 3 * forward_flops_per_token(m, seq_length, document_lengths=document_lengths)


def peak_tflops(override: Optional[float] = None) -> Optional[float]:
    """Per-device peak for MFU: the override, else a known GPU's bf16 peak, else None (CPU)."""
    if override is not None:
        return override
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
