"""Hugging Face hybrid layouts (Qwen3-Next; Qwen3.5 and Qwen3.6, dense and MoE) ⇄ megatron-core names.

One table of rules per tensor group, used both ways (:mod:`qwenpt.convert.layouts.rules`: the embedding,
norms, attention and MoE rules are Qwen2's). A group is ``"outer"`` (embedding, final norm, output layer),
a decoder layer's index, or ``("mtp", j)`` (MTP layer j with its norms and projection).

What differs between the two layouts is the Gated DeltaNet input projection: megatron-core's ``in_proj``
holds [q | k | v | z | b | a], each block in head order. Qwen3.5 keeps ``in_proj_qkv`` ([q | k | v]),
``in_proj_z``, ``in_proj_b`` and ``in_proj_a``; Qwen3-Next fuses them per key head g:
``in_proj_qkvz`` = [q_g, k_g, v_g, z_g for each g] and ``in_proj_ba`` = [b_g, a_g for each g], where
v_g, z_g, b_g, a_g hold the value heads g x r ... g x r + r - 1 (r = value heads / key heads).
Gated attention's ``q_proj`` interleaves per head [query_h | gate_h]; megatron-core's ``linear_qkv``
holds per query group [queries | gates | key | value]. Norms are zero-centred on both sides (stored w,
applied 1 + w) except the GDN output norm, plain on both: no tensor changes value, so a round trip
returns every tensor bit for bit. MTP (HF ``mtp.*``, which transformers drops on load) maps onto
megatron-core's MTP layer: ``fc`` = ``eh_proj`` over [embedding | hidden], ``pre_fc_norm_embedding`` =
``enorm``, ``pre_fc_norm_hidden`` = ``hnorm``, ``norm`` = ``final_layernorm``, and its decoder layer.

Released Qwen3.5/3.6 checkpoints are ``Qwen3_5(Moe)ForConditionalGeneration``: the language model under
``model.language_model.``, the vision tower under ``model.visual.``. Import reads the language model and
leaves the vision tower alone; export writes the text model (``Qwen3_5(Moe)ForCausalLM``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from qwenpt.convert.layouts.base import (DECODER_NAMES, MOE_NAMES, Fields, Getter, Layout, Name, from_pretrained, read_names,
                                         refuse_dense_layers, write_names)
from qwenpt.convert.layouts.rules import (Rule, RuleTable, TensorList, attention_rules, concat, copy, head_split, layer_rules,
                                          outer_rules, plain_qkv)
from qwenpt.errors import ConfigError
from qwenpt.models import hybrid
from qwenpt.models.registry import FAMILIES, MODEL_TYPES, hf_architecture
from qwenpt.models.size import head_dim
from qwenpt.config import ModelConfig

# the hybrid config.json keys, read and written alike
NAMES = (
    *DECODER_NAMES, Name("linear_num_key_heads", "linear_num_key_heads"),
    Name("linear_num_value_heads", "linear_num_value_heads"), Name("linear_key_head_dim", "linear_key_head_dim"),
    Name("linear_value_head_dim", "linear_value_head_dim"), Name("linear_conv_kernel_dim", "linear_conv_kernel_dim", 4),
    Name("mtp_num_hidden_layers", "mtp_num_layers", 0, lambda n: int(n or 0)),
)
MULTIMODAL = ("qwen3_5", "qwen3_5_moe")  # Qwen3_5(Moe)ForConditionalGeneration: the language model's config in text_config


def layout(m: ModelConfig) -> str:
    return FAMILIES[m.family].hf_layout


def hf_root(keys: set[str]) -> str:
    """Where the language model's tensors are: ``model.`` (text models) or ``model.language_model.``
    (the released multimodal checkpoints)."""
    return "model.language_model." if "model.language_model.embed_tokens.weight" in keys else "model."


# ---------------------------------------------------------------- per-block rules


def _gated_qkv(m: ModelConfig, meg: str, hf: str) -> Rule:
    """megatron [per group: queries, gates, key, value] <- q_proj [per head: query, gate], k_proj, v_proj."""
    groups, per_group, d = head_split(m)

    def fuse(ts: TensorList) -> torch.Tensor:
        q_gate, k, v = ts
        rest = q_gate.shape[1:]
        qg = q_gate.reshape(groups, per_group, 2, d, *rest)
        return torch.cat([qg[:, :, 0].reshape(groups, per_group * d, *rest), qg[:, :, 1].reshape(groups, per_group * d, *rest),
                          k.reshape(groups, d, *rest), v.reshape(groups, d, *rest)], dim=1).reshape(-1, *rest)

    def split(t: torch.Tensor) -> TensorList:
        rest = t.shape[1:]
        q, g, k, v = t.reshape(groups, (2 * per_group + 2) * d, *rest).split([per_group * d, per_group * d, d, d], dim=1)
        q_gate = torch.stack([q.reshape(groups, per_group, d, *rest), g.reshape(groups, per_group, d, *rest)], dim=2)
        return [q_gate.reshape(-1, *rest), k.reshape(-1, *rest), v.reshape(-1, *rest)]

    return Rule(f"{meg}.linear_qkv.weight", (f"{hf}.q_proj.weight", f"{hf}.k_proj.weight", f"{hf}.v_proj.weight"),
                fuse, split)


def _gdn_sizes(m: ModelConfig) -> tuple[int, int, int, int, int, int]:
    """(key heads, value heads per key head, key dim, value dim, q/k width, v width)."""
    nk, nv, dk, dv = m.linear_num_key_heads, m.linear_num_value_heads, m.linear_key_head_dim, m.linear_value_head_dim
    return nk, nv // nk, dk, dv, nk * dk, nv * dv


def _in_proj(m: ModelConfig, meg: str, hf: str) -> Rule:
    nk, r, dk, dv, qk, v = _gdn_sizes(m)
    nv = nk * r
    if layout(m) == "qwen3_5":
        return concat(f"{meg}.in_proj.weight",
                       (f"{hf}.in_proj_qkv.weight", f"{hf}.in_proj_z.weight", f"{hf}.in_proj_b.weight", f"{hf}.in_proj_a.weight"),
                       lambda: [2 * qk + v, v, nv, nv])

    def fuse(ts: TensorList) -> torch.Tensor:  # Qwen3-Next: per key head [q, k, v, z] and [b, a]
        qkvz, ba = ts
        rest = qkvz.shape[1:]
        q, k, vv, z = qkvz.reshape(nk, 2 * dk + 2 * r * dv, *rest).split([dk, dk, r * dv, r * dv], dim=1)
        b, a = ba.reshape(nk, 2 * r, *rest).split([r, r], dim=1)
        return torch.cat([x.reshape(-1, *rest) for x in (q, k, vv, z, b, a)])

    def split(t: torch.Tensor) -> TensorList:
        rest = t.shape[1:]
        q, k, vv, z, b, a = (x.reshape(nk, -1, *rest) for x in t.split([qk, qk, v, v, nv, nv]))
        return [torch.cat([q, k, vv, z], dim=1).reshape(-1, *rest), torch.cat([b, a], dim=1).reshape(-1, *rest)]

    return Rule(f"{meg}.in_proj.weight", (f"{hf}.in_proj_qkvz.weight", f"{hf}.in_proj_ba.weight"), fuse, split)


def _layer_rules(m: ModelConfig, meg: str, hf: str, linear: bool) -> list[Rule]:
    a = f"{meg}.self_attention"
    if not linear:
        qkv = _gated_qkv if m.attention_output_gate else plain_qkv
        return layer_rules(m, meg, hf, attention_rules(m, a, f"{hf}.self_attn", qkv))
    h = f"{hf}.linear_attn"
    return layer_rules(m, meg, hf, [
        _in_proj(m, a, h), copy(f"{a}.conv1d.weight", f"{h}.conv1d.weight"), copy(f"{a}.A_log", f"{h}.A_log"),
        copy(f"{a}.dt_bias", f"{h}.dt_bias"), copy(f"{a}.out_norm.weight", f"{h}.norm.weight"),
        copy(f"{a}.out_proj.weight", f"{h}.out_proj.weight")])


def rules(m: ModelConfig, group: Any, root: str = "model.") -> list[Rule]:
    """Every rule of one group (``root``: where the HF language model's tensors are)."""
    if group == "outer":
        return outer_rules(m, root)
    if isinstance(group, tuple):  # ("mtp", j)
        j = group[1]
        meg = f"mtp.layers.{j}"
        return [copy(f"{meg}.enorm.weight", "mtp.pre_fc_norm_embedding.weight"),
                copy(f"{meg}.hnorm.weight", "mtp.pre_fc_norm_hidden.weight"),
                copy(f"{meg}.eh_proj.weight", "mtp.fc.weight"),
                copy(f"{meg}.final_layernorm.weight", "mtp.norm.weight"),
                *_layer_rules(m, f"{meg}.{hybrid.mtp_decoder_layer_name()}", f"mtp.layers.{j}", linear=False)]
    return _layer_rules(m, f"decoder.layers.{group}", f"{root}layers.{group}", hybrid.is_linear_layer(m, group))


def groups(m: ModelConfig) -> list:
    return ["outer", *range(m.num_layers), *(("mtp", j) for j in range(m.mtp_num_layers))]


TABLE = RuleTable(rules)
to_hf = TABLE.to_hf
megatron_params = TABLE.megatron_params


def complete(m: ModelConfig, keys: set[str]) -> Any:
    """The MTP layers a checkpoint carries when its config.json does not say (counted from ``mtp.layers.*``)."""
    if not m.mtp_num_layers and "mtp.fc.weight" in keys:
        return dataclasses.replace(m, mtp_num_layers=len({k.split(".")[2] for k in keys if k.startswith("mtp.layers.")}))
    return m


def reference_model(transformers: Any, hf_dir: Path, m: ModelConfig, get: Getter) -> torch.nn.Module:
    """transformers' model, which needs a release that has the hybrid classes."""
    if not hasattr(transformers, hf_architecture(m)):
        raise ConfigError(f"verifying a {m.family} model needs transformers' {hf_architecture(m)} (transformers >= 5.2; "
                          f"installed {transformers.__version__}): pip install -U 'transformers>=5.2'")
    return from_pretrained(transformers, hf_dir, m, get)


# ---------------------------------------------------------------- config.json


def hf_config(m: ModelConfig) -> dict:
    """config.json of the equivalent Hugging Face text model."""
    if m.mtp_num_layers > 1:
        raise ConfigError(f"model.mtp_num_layers {m.mtp_num_layers}: the Hugging Face hybrid layout names one MTP "
                          "layer's projection and norms (mtp.fc, mtp.norm); export supports 0 or 1")
    arch = hf_architecture(m)
    cfg = {
        "architectures": [arch], "model_type": MODEL_TYPES[arch], **write_names(m, NAMES),
        "intermediate_size": m.ffn_hidden_size, "num_key_value_heads": m.num_query_groups, "head_dim": head_dim(m),
        "rope_parameters": {"rope_type": "default", "rope_theta": float(m.rope_theta),
                            "partial_rotary_factor": m.rotary_percent},
        "hidden_act": "silu", "attention_bias": False, "attention_dropout": 0.0,
        "layer_types": hybrid.layer_types(m), "full_attention_interval": m.full_attention_interval,
    }
    if m.num_experts is not None:
        cfg.update(write_names(m, MOE_NAMES), num_experts=m.num_experts,
                   shared_expert_intermediate_size=m.moe_shared_expert_ffn_hidden_size or 0)
        if layout(m) == "qwen3_next":
            cfg.update(norm_topk_prob=m.moe_norm_topk_prob, decoder_sparse_step=1, mlp_only_layers=[])
    elif layout(m) == "qwen3_next":  # Qwen3NextConfig defaults to 512 experts: 0 makes every layer dense
        cfg["num_experts"] = 0
    return cfg


def _interval(layer_types: list, source: str) -> int:
    """full_attention_interval of an HF ``layer_types`` list: every k-th layer full attention, the rest linear."""
    full = [i for i, t in enumerate(layer_types) if t == "full_attention"]
    unknown = sorted(set(layer_types) - {"full_attention", "linear_attention"})
    k = full[0] + 1 if full else 0
    if unknown or not full or [t == "full_attention" for t in layer_types] != [(i + 1) % k == 0 for i in range(len(layer_types))]:
        raise ConfigError(f"{source}: layer_types {layer_types} is not 'every k-th layer full attention, the others "
                          "linear attention', the pattern qwenpt builds (every released hybrid Qwen has k = 4)")
    return k


def model_fields(cfg: Fields, mtype: str, source: str) -> dict:
    """The qwenpt ModelConfig fields of a hybrid config.json (the released multimodal checkpoints': of its
    text_config, the language model's)."""
    if mtype in MULTIMODAL:
        cfg = Fields({**cfg["text_config"], **({"tie_word_embeddings": cfg["tie_word_embeddings"]}
                                               if "tie_word_embeddings" in cfg else {})}, f"{source} (text_config)")
    rope = cfg.get("rope_parameters") or {}
    moe = mtype in ("qwen3_5_moe_text", "qwen3_5_moe") or (mtype == "qwen3_next" and cfg.get("num_experts"))
    if cfg.get("attention_bias", False):
        raise ConfigError(f"{source}: attention_bias=true is not supported; every released hybrid Qwen has false")
    layer_types = cfg.get("layer_types") or [
        "full_attention" if (i + 1) % cfg.get("full_attention_interval", 4) == 0 else "linear_attention"
        for i in range(cfg["num_hidden_layers"])]
    fields = dict(
        read_names(cfg, NAMES), family="qwen3-next" if mtype == "qwen3_next" else "qwen3.5",
        ffn_hidden_size=cfg.get("intermediate_size") or cfg.get("moe_intermediate_size"),
        num_query_groups=cfg["num_key_value_heads"], kv_channels=cfg.get("head_dim"),
        rope_theta=float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0))),
        rotary_percent=float(rope.get("partial_rotary_factor", cfg.get("partial_rotary_factor", 1.0))),
        qkv_bias=False, qk_layernorm=True, attention_output_gate=True, norm_zero_centered=True,
        full_attention_interval=_interval(layer_types, source),
    )
    if moe:
        refuse_dense_layers(cfg, source, "released hybrid Qwen MoE")
        fields.update(
            read_names(cfg, MOE_NAMES), num_experts=cfg["num_experts"],
            moe_shared_expert_ffn_hidden_size=cfg.get("shared_expert_intermediate_size") or None,
            # Qwen3.5-MoE always renormalises the top-k probabilities; Qwen3-Next says so in norm_topk_prob
            moe_norm_topk_prob=bool(cfg.get("norm_topk_prob", True)),
            moe_load_balancing="global_aux_loss",
        )
    return fields


LAYOUT = Layout(
    name="qwen3_next", hf_layouts=("qwen3_next", "qwen3_5"),
    # the text models, and the released multimodal checkpoints (their language model is read)
    model_types=("qwen3_next", "qwen3_5_text", "qwen3_5_moe_text", *MULTIMODAL),
    known_as="qwen3_next: Qwen3NextForCausalLM; qwen3_5_text / qwen3_5_moe_text: Qwen3_5(Moe)ForCausalLM; "
             "qwen3_5 / qwen3_5_moe: the released Qwen3.5/3.6 Qwen3_5(Moe)ForConditionalGeneration",
    model_fields=model_fields, hf_config=hf_config, groups=groups, to_hf=to_hf, megatron_params=megatron_params,
    hf_root=hf_root, complete=complete, reference_model=reference_model,
)
