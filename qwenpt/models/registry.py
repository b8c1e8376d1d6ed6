"""The Qwen family: what is common to a generation, beyond the per-size numbers in conf/model/.

Every generation is the same decoder — pre-RMSNorm, RoPE (non-interleaved), SwiGLU MLP,
untied or tied embeddings — and differs in how its Hugging Face checkpoints are laid out and
named. Qwen3 keeps the Qwen2 layout and names, drops the QKV bias, adds an RMSNorm on each query
and key head (``q_norm``/``k_norm``) and decouples the head width from hidden / heads; those are
model fields (``qkv_bias``, ``qk_layernorm``, ``kv_channels``), so one builder serves every
generation. Per-size facts (widths, heads, theta, vocab, experts) live once each in
conf/model/<name>.yaml.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    name: str
    # "qwen" (QWenLMHeadModel: fused c_attn, w1/w2), "qwen2" (Qwen2/Qwen2Moe/Qwen3/Qwen3Moe), or the hybrids'
    # "qwen3_next" (Qwen3Next: q/k/v/z and b/a projections fused per key head) and "qwen3_5" (Qwen3.5/3.6:
    # in_proj_qkv, in_proj_z, in_proj_b, in_proj_a)
    hf_layout: str
    hf_architecture: str  # dense architecture class in config.json
    hf_moe_architecture: str | None  # MoE architecture class, where the generation has MoE models


FAMILIES: dict[str, Family] = {
    "qwen": Family("qwen", "qwen", "QWenLMHeadModel", None),
    "qwen1.5": Family("qwen1.5", "qwen2", "Qwen2ForCausalLM", "Qwen2MoeForCausalLM"),
    "qwen2": Family("qwen2", "qwen2", "Qwen2ForCausalLM", "Qwen2MoeForCausalLM"),
    "qwen2.5": Family("qwen2.5", "qwen2", "Qwen2ForCausalLM", None),
    "qwen3": Family("qwen3", "qwen2", "Qwen3ForCausalLM", "Qwen3MoeForCausalLM"),
    # the hybrid generation: Gated DeltaNet + gated attention (qwenpt/models/hybrid.py)
    "qwen3-next": Family("qwen3-next", "qwen3_next", "Qwen3NextForCausalLM", "Qwen3NextForCausalLM"),
    "qwen3.5": Family("qwen3.5", "qwen3_5", "Qwen3_5ForCausalLM", "Qwen3_5MoeForCausalLM"),
    "qwen3.6": Family("qwen3.6", "qwen3_5", "Qwen3_5ForCausalLM", "Qwen3_5MoeForCausalLM"),  # Qwen3.5's architecture
}

# config.json model_type of each HF architecture class
MODEL_TYPES = {"Qwen2ForCausalLM": "qwen2", "Qwen2MoeForCausalLM": "qwen2_moe", "Qwen3ForCausalLM": "qwen3",
               "Qwen3MoeForCausalLM": "qwen3_moe", "Qwen3NextForCausalLM": "qwen3_next",
               "Qwen3_5ForCausalLM": "qwen3_5_text", "Qwen3_5MoeForCausalLM": "qwen3_5_moe_text"}


def hf_architecture(m: object) -> str:
    """The transformers class of model config ``m`` (its family's MoE class when it has experts)."""
    family = FAMILIES[m.family]  # type: ignore[attr-defined]
    if m.num_experts is None:  # type: ignore[attr-defined]
        return family.hf_architecture
    if family.hf_moe_architecture is None:
        raise ValueError(f"model family {family.name} has no MoE architecture on Hugging Face")
    return family.hf_moe_architecture
