"""The Qwen family: what is common to a generation, beyond the per-size numbers in conf/model/.

Every generation is the same decoder — pre-RMSNorm, RoPE (non-interleaved), SwiGLU MLP,
bias only on the QKV projection, untied or tied embeddings — and differs in how its Hugging Face
checkpoints are laid out and named. Per-size facts (widths, heads, theta, vocab, experts) live
once each in conf/model/<name>.yaml.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    name: str
    hf_layout: str  # "qwen" (QWenLMHeadModel: fused c_attn, w1/w2) or "qwen2" (Qwen2/Qwen2Moe)
    hf_architecture: str  # dense architecture class in config.json
    hf_moe_architecture: str | None  # MoE architecture class, where the generation has MoE models


FAMILIES: dict[str, Family] = {
    "qwen": Family("qwen", "qwen", "QWenLMHeadModel", None),
    "qwen1.5": Family("qwen1.5", "qwen2", "Qwen2ForCausalLM", "Qwen2MoeForCausalLM"),
    "qwen2": Family("qwen2", "qwen2", "Qwen2ForCausalLM", "Qwen2MoeForCausalLM"),
    "qwen2.5": Family("qwen2.5", "qwen2", "Qwen2ForCausalLM", None),
}
