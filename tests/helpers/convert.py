"""Shared by tests/unit/test_convert.py and tests/integration/test_convert.py."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from conftest import hf_model, model_config

MODELS = {
    "dense_gqa": dict(name="tiny", tie_embeddings=False),  # GQA, untied
    "tied": dict(name="tiny"),  # GQA, tied embeddings
    "moe": dict(name="tiny_moe"),  # 8 experts top-2 + shared expert behind a sigmoid gate
    "qwen_v1": dict(name="tiny", num_query_groups=4, tie_embeddings=False, family="qwen", rope_theta=10000.0),
    "qwen3": dict(name="tiny_qwen3"),  # Qwen3ForCausalLM: q_norm/k_norm, no bias, head_dim 64 != 128 / 4, tied
    "qwen3_moe": dict(name="tiny_qwen3_moe"),  # Qwen3MoeForCausalLM: per-expert keys, norm_topk_prob, no shared expert
}


def _write_qwen_v1(ref: torch.nn.Module, m, out) -> None:
    """A QWenLMHeadModel directory written by hand from an equivalent Qwen2 model, with v1's semantics:
    c_attn = [q; k; v], mlp(x) = c_proj(w1(x) * silu(w2(x))) so w2 is the gate."""
    sd = ref.state_dict()
    v1 = {"transformer.wte.weight": sd["model.embed_tokens.weight"], "transformer.ln_f.weight": sd["model.norm.weight"],
          "lm_head.weight": sd["lm_head.weight"]}
    for i in range(m.num_layers):
        a, b = f"model.layers.{i}", f"transformer.h.{i}"
        for kind in ("weight", "bias"):
            v1[f"{b}.attn.c_attn.{kind}"] = torch.cat([sd[f"{a}.self_attn.{p}_proj.{kind}"] for p in "qkv"])
        v1[f"{b}.attn.c_proj.weight"] = sd[f"{a}.self_attn.o_proj.weight"]
        v1[f"{b}.ln_1.weight"] = sd[f"{a}.input_layernorm.weight"]
        v1[f"{b}.ln_2.weight"] = sd[f"{a}.post_attention_layernorm.weight"]
        v1[f"{b}.mlp.w2.weight"] = sd[f"{a}.mlp.gate_proj.weight"]
        v1[f"{b}.mlp.w1.weight"] = sd[f"{a}.mlp.up_proj.weight"]
        v1[f"{b}.mlp.c_proj.weight"] = sd[f"{a}.mlp.down_proj.weight"]
        v1[f"{b}.attn.rotary_emb.inv_freq"] = torch.zeros(16)  # a buffer old checkpoints carry: ignored
    out.mkdir()
    save_file({k: v.contiguous() for k, v in v1.items()}, str(out / "model.safetensors"))
    config = {"architectures": ["QWenLMHeadModel"], "model_type": "qwen", "hidden_size": m.hidden_size,
              "intermediate_size": 2 * m.ffn_hidden_size, "num_hidden_layers": m.num_layers,
              "num_attention_heads": m.num_attention_heads, "kv_channels": m.hidden_size // m.num_attention_heads,
              "vocab_size": m.vocab_size, "seq_length": 2048, "rotary_emb_base": 10000, "layer_norm_epsilon": m.norm_eps,
              "no_bias": True, "tie_word_embeddings": False, "torch_dtype": "float32"}
    (out / "config.json").write_text(json.dumps(config))


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """Each model: its transformers reference, its HF directory, and its import."""
    from qwenpt.convert.hf import import_hf

    out = tmp_path_factory.mktemp("convert")
    made = {}
    for key, spec in MODELS.items():
        spec = dict(spec)
        m = model_config(spec.pop("name"), **spec)
        ref = hf_model(m, seed=len(made))
        if m.family == "qwen":
            _write_qwen_v1(ref, m, out / key)
        else:
            ref.save_pretrained(out / key)
        summary = import_hf(out / key, out / f"{key}_ckpt")
        made[key] = (ref, out / key, out / f"{key}_ckpt", summary)
    return made
