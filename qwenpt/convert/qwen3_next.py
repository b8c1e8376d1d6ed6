"""Hugging Face hybrid layouts (Qwen3-Next; Qwen3.5 and Qwen3.6, dense and MoE) ⇄ megatron-core names.

One table of rules per tensor group, used both ways: each rule names a megatron-core tensor (TP=1), the
HF tensors it is made of, and how they fuse and split. A group is ``"outer"`` (embedding, final norm,
output layer), a decoder layer's index, or ``("mtp", j)`` (MTP layer j with its norms and projection).

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

from dataclasses import dataclass
from typing import Any, Callable

import torch

from qwenpt.errors import ConfigError
from qwenpt.models import hybrid
from qwenpt.models.registry import FAMILIES, MODEL_TYPES, hf_architecture
from qwenpt.models.size import head_dim

Tensors = list[torch.Tensor]


@dataclass(frozen=True)
class Rule:
    meg: str
    hf: tuple[str, ...]
    fuse: Callable[[Tensors], torch.Tensor]  # HF tensors -> the megatron tensor
    split: Callable[[torch.Tensor], Tensors]  # the inverse


def _copy(meg: str, hf: str) -> Rule:
    return Rule(meg, (hf,), lambda ts: ts[0], lambda t: [t])


def _concat(meg: str, hf: tuple[str, ...], sizes: Callable[[], list[int]]) -> Rule:
    return Rule(meg, hf, lambda ts: torch.cat(ts), lambda t: list(t.split(sizes())))


def layout(m: Any) -> str:
    return FAMILIES[m.family].hf_layout


def hf_root(keys: set[str]) -> str:
    """Where the language model's tensors are: ``model.`` (text models) or ``model.language_model.``
    (the released multimodal checkpoints)."""
    return "model.language_model." if "model.language_model.embed_tokens.weight" in keys else "model."


# ---------------------------------------------------------------- per-block rules


def _gated_qkv(m: Any, meg: str, hf: str) -> Rule:
    """megatron [per group: queries, gates, key, value] <- q_proj [per head: query, gate], k_proj, v_proj."""
    groups, per_group, d = m.num_query_groups, m.num_attention_heads // m.num_query_groups, head_dim(m)

    def fuse(ts: Tensors) -> torch.Tensor:
        q_gate, k, v = ts
        rest = q_gate.shape[1:]
        qg = q_gate.reshape(groups, per_group, 2, d, *rest)
        return torch.cat([qg[:, :, 0].reshape(groups, per_group * d, *rest), qg[:, :, 1].reshape(groups, per_group * d, *rest),
                          k.reshape(groups, d, *rest), v.reshape(groups, d, *rest)], dim=1).reshape(-1, *rest)

    def split(t: torch.Tensor) -> Tensors:
        rest = t.shape[1:]
        q, g, k, v = t.reshape(groups, (2 * per_group + 2) * d, *rest).split([per_group * d, per_group * d, d, d], dim=1)
        q_gate = torch.stack([q.reshape(groups, per_group, d, *rest), g.reshape(groups, per_group, d, *rest)], dim=2)
        return [q_gate.reshape(-1, *rest), k.reshape(-1, *rest), v.reshape(-1, *rest)]

    return Rule(f"{meg}.linear_qkv.weight", (f"{hf}.q_proj.weight", f"{hf}.k_proj.weight", f"{hf}.v_proj.weight"),
                fuse, split)


def _plain_qkv(m: Any, meg: str, hf: str) -> Rule:
    """megatron [per group: queries, key, value] <- q_proj, k_proj, v_proj (attention without an output gate)."""
    groups, per_group, d = m.num_query_groups, m.num_attention_heads // m.num_query_groups, head_dim(m)

    def fuse(ts: Tensors) -> torch.Tensor:
        q, k, v = ts
        rest = q.shape[1:]
        return torch.cat([q.reshape(groups, per_group * d, *rest), k.reshape(groups, d, *rest),
                          v.reshape(groups, d, *rest)], dim=1).reshape(-1, *rest)

    def split(t: torch.Tensor) -> Tensors:
        rest = t.shape[1:]
        return [x.reshape(-1, *rest) for x in t.reshape(groups, (per_group + 2) * d, *rest).split([per_group * d, d, d], dim=1)]

    return Rule(f"{meg}.linear_qkv.weight", (f"{hf}.q_proj.weight", f"{hf}.k_proj.weight", f"{hf}.v_proj.weight"),
                fuse, split)


def _gdn_sizes(m: Any) -> tuple[int, int, int, int, int, int]:
    """(key heads, value heads per key head, key dim, value dim, q/k width, v width)."""
    nk, nv, dk, dv = m.linear_num_key_heads, m.linear_num_value_heads, m.linear_key_head_dim, m.linear_value_head_dim
    return nk, nv // nk, dk, dv, nk * dk, nv * dv


def _in_proj(m: Any, meg: str, hf: str) -> Rule:
    nk, r, dk, dv, qk, v = _gdn_sizes(m)
    nv = nk * r
    if layout(m) == "qwen3_5":
        return _concat(f"{meg}.in_proj.weight",
                       (f"{hf}.in_proj_qkv.weight", f"{hf}.in_proj_z.weight", f"{hf}.in_proj_b.weight", f"{hf}.in_proj_a.weight"),
                       lambda: [2 * qk + v, v, nv, nv])

    def fuse(ts: Tensors) -> torch.Tensor:  # Qwen3-Next: per key head [q, k, v, z] and [b, a]
        qkvz, ba = ts
        rest = qkvz.shape[1:]
        q, k, vv, z = qkvz.reshape(nk, 2 * dk + 2 * r * dv, *rest).split([dk, dk, r * dv, r * dv], dim=1)
        b, a = ba.reshape(nk, 2 * r, *rest).split([r, r], dim=1)
        return torch.cat([x.reshape(-1, *rest) for x in (q, k, vv, z, b, a)])

    def split(t: torch.Tensor) -> Tensors:
        rest = t.shape[1:]
        q, k, vv, z, b, a = (x.reshape(nk, -1, *rest) for x in t.split([qk, qk, v, v, nv, nv]))
        return [torch.cat([q, k, vv, z], dim=1).reshape(-1, *rest), torch.cat([b, a], dim=1).reshape(-1, *rest)]

    return Rule(f"{meg}.in_proj.weight", (f"{hf}.in_proj_qkvz.weight", f"{hf}.in_proj_ba.weight"), fuse, split)


def _mlp_rules(m: Any, meg: str, hf: str) -> list[Rule]:
    def swiglu(a: str, b: str, width: int) -> list[Rule]:
        return [_concat(f"{a}.linear_fc1.weight", (f"{b}.gate_proj.weight", f"{b}.up_proj.weight"), lambda: [width, width]),
                _copy(f"{a}.linear_fc2.weight", f"{b}.down_proj.weight")]

    if m.num_experts is None:
        return swiglu(meg, hf, m.ffn_hidden_size)
    rules = [_copy(f"{meg}.router.weight", f"{hf}.gate.weight")]
    for e in range(m.num_experts):
        rules += swiglu(f"{meg}.experts.local_experts.{e}", f"{hf}.experts.{e}", m.moe_ffn_hidden_size)
    if m.moe_shared_expert_ffn_hidden_size:
        rules += swiglu(f"{meg}.shared_experts", f"{hf}.shared_expert", m.moe_shared_expert_ffn_hidden_size)
        rules.append(_copy(f"{meg}.shared_experts.gate_weight", f"{hf}.shared_expert_gate.weight"))
    return rules


def _layer_rules(m: Any, meg: str, hf: str, linear: bool) -> list[Rule]:
    rules = [_copy(f"{meg}.input_layernorm.weight", f"{hf}.input_layernorm.weight"),
             _copy(f"{meg}.pre_mlp_layernorm.weight", f"{hf}.post_attention_layernorm.weight")]
    if linear:
        a, h = f"{meg}.self_attention", f"{hf}.linear_attn"
        rules += [_in_proj(m, a, h), _copy(f"{a}.conv1d.weight", f"{h}.conv1d.weight"),
                  _copy(f"{a}.A_log", f"{h}.A_log"), _copy(f"{a}.dt_bias", f"{h}.dt_bias"),
                  _copy(f"{a}.out_norm.weight", f"{h}.norm.weight"), _copy(f"{a}.out_proj.weight", f"{h}.out_proj.weight")]
    else:
        a, h = f"{meg}.self_attention", f"{hf}.self_attn"
        rules += [(_gated_qkv if m.attention_output_gate else _plain_qkv)(m, a, h),
                  _copy(f"{a}.linear_proj.weight", f"{h}.o_proj.weight"),
                  _copy(f"{a}.q_layernorm.weight", f"{h}.q_norm.weight"),
                  _copy(f"{a}.k_layernorm.weight", f"{h}.k_norm.weight")]
    return rules + _mlp_rules(m, f"{meg}.mlp", f"{hf}.mlp")


def rules(m: Any, group: Any, root: str = "model.") -> list[Rule]:
    """Every rule of one group (``root``: where the HF language model's tensors are)."""
    if group == "outer":
        out = [_copy("embedding.word_embeddings.weight", f"{root}embed_tokens.weight"),
               _copy("decoder.final_layernorm.weight", f"{root}norm.weight")]
        if not m.tie_embeddings:
            out.append(_copy("output_layer.weight", "lm_head.weight"))
        return out
    if isinstance(group, tuple):  # ("mtp", j)
        j = group[1]
        meg = f"mtp.layers.{j}"
        return [_copy(f"{meg}.enorm.weight", "mtp.pre_fc_norm_embedding.weight"),
                _copy(f"{meg}.hnorm.weight", "mtp.pre_fc_norm_hidden.weight"),
                _copy(f"{meg}.eh_proj.weight", "mtp.fc.weight"),
                _copy(f"{meg}.final_layernorm.weight", "mtp.norm.weight"),
                *_layer_rules(m, f"{meg}.transformer_layer", f"mtp.layers.{j}", linear=False)]
    return _layer_rules(m, f"decoder.layers.{group}", f"{root}layers.{group}", hybrid.is_linear_layer(m, group))


def groups(m: Any) -> list:
    return ["outer", *range(m.num_layers), *(("mtp", j) for j in range(m.mtp_num_layers))]


def hf_keys(m: Any, group: Any, root: str = "model.") -> list[str]:
    return [k for rule in rules(m, group, root) for k in rule.hf]


def to_megatron(hf: dict[str, torch.Tensor], m: Any, group: Any, root: str = "model.") -> dict[str, torch.Tensor]:
    return {rule.meg: rule.fuse([hf[k] for k in rule.hf]) for rule in rules(m, group, root)}


def to_hf(meg: dict[str, torch.Tensor], m: Any, group: Any) -> dict[str, torch.Tensor]:
    out = {}
    for rule in rules(m, group):
        out.update(zip(rule.hf, rule.split(meg[rule.meg])))
    return out


def megatron_param(name: str, get: Callable[[str], torch.Tensor], m: Any, root: str = "model.") -> torch.Tensor:
    """One megatron-core parameter (TP=1 name) from the HF tensors it is made of, read with ``get``."""
    parts = name.split(".")
    if parts[0] == "mtp":
        group: Any = ("mtp", int(parts[2]))
    elif parts[:2] == ["decoder", "layers"]:
        group = int(parts[2])
    else:
        group = "outer"
    for rule in rules(m, group, root):
        if rule.meg == name:
            return rule.fuse([get(k) for k in rule.hf])
    raise KeyError(f"{name} is not a parameter of a {layout(m)}-layout model")


# ---------------------------------------------------------------- config.json


def hf_config(m: Any) -> dict:
    """config.json of the equivalent Hugging Face text model."""
    if m.mtp_num_layers > 1:
        raise ConfigError(f"model.mtp_num_layers {m.mtp_num_layers}: the Hugging Face hybrid layout names one MTP "
                          "layer's projection and norms (mtp.fc, mtp.norm); export supports 0 or 1")
    arch = hf_architecture(m)
    cfg = {
        "architectures": [arch],
        "model_type": MODEL_TYPES[arch],
        "hidden_size": m.hidden_size,
        "intermediate_size": m.ffn_hidden_size,
        "num_hidden_layers": m.num_layers,
        "num_attention_heads": m.num_attention_heads,
        "num_key_value_heads": m.num_query_groups,
        "head_dim": head_dim(m),
        "vocab_size": m.vocab_size,
        "max_position_embeddings": m.max_position_embeddings,
        "rope_parameters": {"rope_type": "default", "rope_theta": float(m.rope_theta),
                            "partial_rotary_factor": m.rotary_percent},
        "rms_norm_eps": m.norm_eps,
        "tie_word_embeddings": m.tie_embeddings,
        "hidden_act": "silu",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "layer_types": hybrid.layer_types(m),
        "full_attention_interval": m.full_attention_interval,
        "linear_conv_kernel_dim": m.linear_conv_kernel_dim,
        "linear_key_head_dim": m.linear_key_head_dim,
        "linear_value_head_dim": m.linear_value_head_dim,
        "linear_num_key_heads": m.linear_num_key_heads,
        "linear_num_value_heads": m.linear_num_value_heads,
        "mtp_num_hidden_layers": m.mtp_num_layers,
    }
    if m.num_experts is not None:
        cfg.update(num_experts=m.num_experts, num_experts_per_tok=m.moe_router_topk,
                   moe_intermediate_size=m.moe_ffn_hidden_size,
                   shared_expert_intermediate_size=m.moe_shared_expert_ffn_hidden_size or 0,
                   router_aux_loss_coef=m.moe_aux_loss_coeff)
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


def model_fields(cfg: Any, mtype: str, source: str) -> dict:
    """The qwenpt ModelConfig fields of a hybrid text config (``cfg``: config.json's fields, or its text_config)."""
    rope = cfg.get("rope_parameters") or {}
    moe = mtype in ("qwen3_5_moe_text", "qwen3_5_moe") or (mtype == "qwen3_next" and cfg.get("num_experts"))
    if cfg.get("attention_bias", False):
        raise ConfigError(f"{source}: attention_bias=true is not supported; every released hybrid Qwen has false")
    layer_types = cfg.get("layer_types") or [
        "full_attention" if (i + 1) % cfg.get("full_attention_interval", 4) == 0 else "linear_attention"
        for i in range(cfg["num_hidden_layers"])]
    fields = dict(
        family="qwen3-next" if mtype == "qwen3_next" else "qwen3.5",
        num_layers=cfg["num_hidden_layers"], hidden_size=cfg["hidden_size"],
        ffn_hidden_size=cfg.get("intermediate_size") or cfg.get("moe_intermediate_size"),
        num_attention_heads=cfg["num_attention_heads"], num_query_groups=cfg["num_key_value_heads"],
        kv_channels=cfg.get("head_dim"), vocab_size=cfg["vocab_size"],
        max_position_embeddings=cfg.get("max_position_embeddings", 32768),
        rope_theta=float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0))),
        rotary_percent=float(rope.get("partial_rotary_factor", cfg.get("partial_rotary_factor", 1.0))),
        norm_eps=cfg.get("rms_norm_eps", 1e-6), tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        qkv_bias=False, qk_layernorm=True, attention_output_gate=True, norm_zero_centered=True,
        full_attention_interval=_interval(layer_types, source),
        linear_num_key_heads=cfg["linear_num_key_heads"], linear_num_value_heads=cfg["linear_num_value_heads"],
        linear_key_head_dim=cfg["linear_key_head_dim"], linear_value_head_dim=cfg["linear_value_head_dim"],
        linear_conv_kernel_dim=cfg.get("linear_conv_kernel_dim", 4),
        mtp_num_layers=int(cfg.get("mtp_num_hidden_layers", 0) or 0),
    )
    if moe:
        if cfg.get("decoder_sparse_step", 1) != 1 or cfg.get("mlp_only_layers"):
            raise ConfigError(f"{source}: an MoE with dense layers (decoder_sparse_step != 1 or mlp_only_layers) "
                              "is not supported; every released hybrid Qwen MoE has MoE in every layer")
        fields.update(
            num_experts=cfg["num_experts"], moe_ffn_hidden_size=cfg["moe_intermediate_size"],
            moe_router_topk=cfg["num_experts_per_tok"],
            moe_shared_expert_ffn_hidden_size=cfg.get("shared_expert_intermediate_size") or None,
            # Qwen3.5-MoE always renormalises the top-k probabilities; Qwen3-Next says so in norm_topk_prob
            moe_norm_topk_prob=bool(cfg.get("norm_topk_prob", True)),
            moe_aux_loss_coeff=float(cfg.get("router_aux_loss_coef", 0.001)),
            moe_load_balancing="global_aux_loss",
        )
    return fields
