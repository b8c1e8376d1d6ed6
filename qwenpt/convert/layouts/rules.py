"""One table of rules per tensor group, used both ways: the tensors of a Hugging Face layout ⇄ megatron-core's.

Each :class:`Rule` names a megatron-core tensor (TP=1 name), the HF tensors it is made of, and how they
fuse and split, so import and export cannot disagree and a round trip returns every tensor bit for bit
(no rule changes a value). The rules every Qwen from Qwen2 on shares are here: the embedding, final norm and
output layer; a decoder layer's norms; attention with Q, K and V fused per query group (megatron-core's
``linear_qkv``: per group [its queries, key, value]); the SwiGLU MLP with gate and up fused (``linear_fc1``
= [gate; up]), dense or as routed experts with an optional gated shared expert.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from qwenpt.convert.layouts.base import Getter, Tensors
from qwenpt.models.size import head_dim
from qwenpt.config import ModelConfig

TensorList = list[torch.Tensor]


@dataclass(frozen=True)
class Rule:
    meg: str
    hf: tuple[str, ...]
    fuse: Callable[[TensorList], torch.Tensor]  # HF tensors -> the megatron tensor
    split: Callable[[torch.Tensor], TensorList]  # the inverse


def copy(meg: str, hf: str) -> Rule:
    return Rule(meg, (hf,), lambda ts: ts[0], lambda t: [t])


def concat(meg: str, hf: tuple[str, ...], sizes: Callable[[], list[int]]) -> Rule:
    return Rule(meg, hf, lambda ts: torch.cat(ts), lambda t: list(t.split(sizes())))


def head_split(m: ModelConfig) -> tuple[int, int, int]:
    """(query groups, query heads per group, head width) of megatron-core's fused QKV layout."""
    return m.num_query_groups, m.num_attention_heads // m.num_query_groups, head_dim(m)


def plain_qkv(m: ModelConfig, meg: str, hf: str, kind: str = "weight") -> Rule:
    """megatron [per query group: queries, key, value] <- q_proj, k_proj, v_proj (weight or bias)."""
    groups, per_group, d = head_split(m)

    def fuse(ts: TensorList) -> torch.Tensor:
        q, k, v = ts
        rest = q.shape[1:]
        return torch.cat([q.reshape(groups, per_group * d, *rest), k.reshape(groups, d, *rest),
                          v.reshape(groups, d, *rest)], dim=1).reshape(-1, *rest)

    def split(t: torch.Tensor) -> TensorList:
        rest = t.shape[1:]
        return [x.reshape(-1, *rest) for x in t.reshape(groups, (per_group + 2) * d, *rest).split([per_group * d, d, d], dim=1)]

    return Rule(f"{meg}.linear_qkv.{kind}", tuple(f"{hf}.{p}_proj.{kind}" for p in "qkv"), fuse, split)


def attention_rules(m: ModelConfig, meg: str, hf: str, qkv: Callable[[Any, str, str], Rule] = plain_qkv) -> list[Rule]:
    """Self-attention (``qkv``: how its weight fuses; the hybrids' gated attention brings its own)."""
    rules = [qkv(m, meg, hf)]
    if m.qkv_bias:
        rules.append(plain_qkv(m, meg, hf, "bias"))
    rules.append(copy(f"{meg}.linear_proj.weight", f"{hf}.o_proj.weight"))
    if m.qk_layernorm:
        rules += [copy(f"{meg}.{p}_layernorm.weight", f"{hf}.{p}_norm.weight") for p in "qk"]
    return rules


def mlp_rules(m: ModelConfig, meg: str, hf: str) -> list[Rule]:
    """The SwiGLU MLP: dense, or a router, experts (HF: one set of keys per expert) and a gated shared expert."""
    def swiglu(a: str, b: str, width: int) -> list[Rule]:
        return [concat(f"{a}.linear_fc1.weight", (f"{b}.gate_proj.weight", f"{b}.up_proj.weight"), lambda: [width, width]),
                copy(f"{a}.linear_fc2.weight", f"{b}.down_proj.weight")]

    if m.num_experts is None:
        return swiglu(meg, hf, m.ffn_hidden_size)
    rules = [copy(f"{meg}.router.weight", f"{hf}.gate.weight")]
    for e in range(m.num_experts):
        rules += swiglu(f"{meg}.experts.local_experts.{e}", f"{hf}.experts.{e}", m.moe_ffn_hidden_size)
    if m.moe_shared_expert_ffn_hidden_size:
        rules += swiglu(f"{meg}.shared_experts", f"{hf}.shared_expert", m.moe_shared_expert_ffn_hidden_size)
        rules.append(copy(f"{meg}.shared_experts.gate_weight", f"{hf}.shared_expert_gate.weight"))
    return rules


def layer_rules(m: ModelConfig, meg: str, hf: str, mixer: list[Rule]) -> list[Rule]:
    """A decoder layer: its two norms, its token mixer's rules (attention, or the hybrids' linear attention), the MLP."""
    return [copy(f"{meg}.input_layernorm.weight", f"{hf}.input_layernorm.weight"),
            copy(f"{meg}.pre_mlp_layernorm.weight", f"{hf}.post_attention_layernorm.weight"),
            *mixer, *mlp_rules(m, f"{meg}.mlp", f"{hf}.mlp")]


def outer_rules(m: ModelConfig, root: str) -> list[Rule]:
    """The embedding, the final norm and (untied) the output layer."""
    rules = [copy("embedding.word_embeddings.weight", f"{root}embed_tokens.weight"),
             copy("decoder.final_layernorm.weight", f"{root}norm.weight")]
    if not m.tie_embeddings:
        rules.append(copy("output_layer.weight", "lm_head.weight"))
    return rules


def group_of(name: str) -> Any:
    """The group of a megatron-core parameter (TP=1 name)."""
    parts = name.split(".")
    if parts[0] == "mtp":
        return ("mtp", int(parts[2]))
    if parts[:2] == ["decoder", "layers"]:
        return int(parts[2])
    return "outer"


class RuleTable:
    """A layout's tensors from its rules, ``rules(m, group, root)``: each direction reads the same table."""

    def __init__(self, rules: Callable[[Any, Any, str], list[Rule]]) -> None:
        self.rules = rules

    def to_megatron(self, hf: Tensors, m: ModelConfig, group: Any, root: str = "model.") -> Tensors:
        return {rule.meg: rule.fuse([hf[k] for k in rule.hf]) for rule in self.rules(m, group, root)}

    def to_hf(self, meg: Tensors, m: ModelConfig, group: Any, root: str = "model.") -> Tensors:
        out = {}
        for rule in self.rules(m, group, root):
            out.update(zip(rule.hf, rule.split(meg[rule.meg])))
        return out

    def megatron_params(self, m: ModelConfig, get: Getter, root: str = "model.") -> Getter:
        """Each megatron-core parameter (TP=1 name) made from the HF tensors it is made of, read with ``get``
        when asked for (the current group's rules kept: parameters come group by group)."""
        current: dict[Any, dict[str, Rule]] = {}

        def param(name: str) -> torch.Tensor:
            group = group_of(name)
            if group not in current:
                current.clear()
                current[group] = {rule.meg: rule for rule in self.rules(m, group, root)}
            rule = current[group].get(name)
            if rule is None:
                raise KeyError(f"{name}: no tensor of the Hugging Face layout makes this parameter")
            return rule.fuse([get(k) for k in rule.hf])

        return param
