"""Hugging Face checkpoint directories: config.json ⇄ model config, safetensors read tensor by
tensor, sharded writing with an index (the layout ``save_pretrained`` produces)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Optional

import torch

from qwenpt.config import ConfigError, ModelConfig
from qwenpt.convert import qwen3_next
from qwenpt.extras import require
from qwenpt.models import rope

# the base install lacks safetensors: converting says which extra to install (exit 2), no traceback
_FEATURE = "reading and writing Hugging Face checkpoints (python -m qwenpt.convert, checkpoint.init_from_hf)"
safe_open = require("safetensors", "hf", _FEATURE).safe_open
save_file = require("safetensors.torch", "hf", _FEATURE).save_file

# model_type of the hybrid generation's config.json (text models, and the released multimodal checkpoints)
HYBRID_MODEL_TYPES = ("qwen3_next", "qwen3_5_text", "qwen3_5_moe_text", "qwen3_5", "qwen3_5_moe")

TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json",
    "added_tokens.json", "qwen.tiktoken", "generation_config.json",
)


def read_hf_config(hf_dir: str | Path) -> dict:
    path = Path(hf_dir) / "config.json"
    if not path.is_file():
        raise ConfigError(f"{path} does not exist: --hf must be a Hugging Face model directory")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None


def _open_safetensors(path: Path) -> Any:
    """safe_open, with a truncated or corrupt file reported by name instead of a SafetensorError."""
    try:
        return safe_open(str(path), framework="pt")
    except Exception as e:  # safetensors raises SafetensorError (header) or OSError
        raise ConfigError(f"{path}: not a readable safetensors file ({e}); it is truncated or corrupt, "
                          "download or copy it again") from None


def _rope_theta(cfg: dict, default: float) -> float:
    """Hub configs say rope_theta (v1: rotary_emb_base); transformers 5 writes rope_parameters."""
    params = cfg.get("rope_parameters") or {}
    for value in (params.get("rope_theta"), cfg.get("rope_theta"), cfg.get("rotary_emb_base")):
        if value is not None:
            return float(value)
    return default


class _Fields(dict):
    """config.json's fields; a missing one is a ConfigError naming the file and the key."""

    source: str = "config.json"

    def __missing__(self, key: str) -> Any:
        raise ConfigError(f"{self.source}: no {key!r}, which a {self.get('model_type', 'Qwen')} config needs; "
                          "is it a complete Hugging Face config.json?")


def model_config_from_hf(cfg: dict, name: str, family: Optional[str] = None,
                         source: str = "config.json") -> ModelConfig:
    """The qwenpt model config of a Hugging Face Qwen config.json (Hub or transformers 5 form);
    ``source`` names the file in errors."""
    cfg = _Fields(cfg)
    cfg.source = source
    arch = (cfg.get("architectures") or [""])[0]
    mtype = cfg.get("model_type", "")
    if mtype == "qwen" or arch == "QWenLMHeadModel":
        heads = cfg["num_attention_heads"]
        return ModelConfig(
            name=name, family=family or "qwen", num_layers=cfg["num_hidden_layers"], hidden_size=cfg["hidden_size"],
            ffn_hidden_size=cfg["intermediate_size"] // 2,  # v1 lists twice the SwiGLU width
            num_attention_heads=heads, num_query_groups=heads, vocab_size=cfg["vocab_size"],
            max_position_embeddings=cfg.get("max_position_embeddings") or cfg.get("seq_length", 8192),
            rope_theta=_rope_theta(cfg, 10000.0), norm_eps=cfg.get("layer_norm_epsilon", 1e-6),
            tie_embeddings=bool(cfg.get("tie_word_embeddings", False)), qkv_bias=True,
        )
    if mtype in HYBRID_MODEL_TYPES:
        text = cfg
        if mtype in ("qwen3_5", "qwen3_5_moe"):  # Qwen3_5(Moe)ForConditionalGeneration: the language model's config
            text = _Fields({**cfg["text_config"], **({"tie_word_embeddings": cfg["tie_word_embeddings"]}
                                                     if "tie_word_embeddings" in cfg else {})})
            text.source = f"{source} (text_config)"
        fields = qwen3_next.model_fields(text, mtype, source)
        if family is not None:
            fields["family"] = family
        return ModelConfig(name=name, **fields)
    if mtype not in ("qwen2", "qwen2_moe", "qwen3", "qwen3_moe"):
        raise ConfigError(
            f"{source}: model_type {mtype!r} ({arch}) is not a Qwen layout this converter knows "
            "(qwen: QWenLMHeadModel; qwen2: Qwen2ForCausalLM; qwen2_moe: Qwen2MoeForCausalLM; "
            "qwen3: Qwen3ForCausalLM; qwen3_moe: Qwen3MoeForCausalLM; qwen3_next: Qwen3NextForCausalLM; "
            "qwen3_5_text / qwen3_5_moe_text: Qwen3_5(Moe)ForCausalLM; qwen3_5 / qwen3_5_moe: the released "
            "Qwen3.5/3.6 Qwen3_5(Moe)ForConditionalGeneration)"
        )
    qwen3 = mtype.startswith("qwen3")
    fields = dict(
        name=name, family=family or ("qwen3" if qwen3 else "qwen2"), num_layers=cfg["num_hidden_layers"],
        hidden_size=cfg["hidden_size"], ffn_hidden_size=cfg["intermediate_size"],
        num_attention_heads=cfg["num_attention_heads"],
        num_query_groups=cfg.get("num_key_value_heads") or cfg["num_attention_heads"], vocab_size=cfg["vocab_size"],
        max_position_embeddings=cfg.get("max_position_embeddings", 32768), rope_theta=_rope_theta(cfg, 1e6),
        norm_eps=cfg.get("rms_norm_eps", 1e-6), tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        qkv_bias=True, rope_scaling=rope.from_hf(cfg, source),
    )
    if qwen3:
        if cfg.get("attention_bias", False):
            raise ConfigError(f"{source}: Qwen3 with attention_bias=true (a bias on q/k/v and o_proj) is not supported; "
                              "every public Qwen3 has attention_bias false")
        fields.update(qkv_bias=False, qk_layernorm=True, kv_channels=cfg.get("head_dim") or None)
    if mtype.endswith("_moe"):
        if cfg.get("decoder_sparse_step", 1) != 1 or cfg.get("mlp_only_layers"):
            raise ConfigError(f"{source}: an MoE with dense layers (decoder_sparse_step != 1 or mlp_only_layers) "
                              "is not supported; every public Qwen MoE has MoE in every layer")
        # transformers 5 writes Qwen3-MoE's num_experts as num_local_experts
        experts = next((k for k in ("num_experts", "num_local_experts") if k in cfg), "num_experts")
        fields.update(
            num_experts=cfg[experts], moe_ffn_hidden_size=cfg["moe_intermediate_size"],
            moe_router_topk=cfg["num_experts_per_tok"],
            moe_shared_expert_ffn_hidden_size=cfg.get("shared_expert_intermediate_size") or None,
            moe_norm_topk_prob=bool(cfg.get("norm_topk_prob", False)),
            moe_aux_loss_coeff=float(cfg.get("router_aux_loss_coef", 0.001)),
            # Qwen3-MoE balances expert load over the global batch (Qwen3 technical report, section 2)
            moe_load_balancing="global_aux_loss" if qwen3 else "aux_loss",
        )
    return ModelConfig(**fields)


class SafetensorsReader:
    """Tensors of a Hugging Face directory (one file or an index of shards), opened lazily and
    read one at a time: memory holds only what the caller keeps."""

    def __init__(self, hf_dir: str | Path) -> None:
        self.dir = Path(hf_dir)
        index = self.dir / "model.safetensors.index.json"
        if index.is_file():
            self.where = dict(json.loads(index.read_text())["weight_map"])
        else:
            files = sorted(self.dir.glob("*.safetensors"))
            if not files:
                raise ConfigError(f"{self.dir} holds no *.safetensors files (and no model.safetensors.index.json)")
            self.where = {}
            for f in files:
                with _open_safetensors(f) as st:
                    self.where.update({k: f.name for k in st.keys()})
        self._open: dict[str, Any] = {}

    def keys(self) -> set[str]:
        return set(self.where)

    def _file(self, key: str) -> Any:
        if key not in self.where:
            raise ConfigError(f"{self.dir}: the checkpoint has no tensor {key!r}, which this architecture needs")
        name = self.where[key]
        if name not in self._open:
            self._open[name] = _open_safetensors(self.dir / name)
        return self._open[name]

    def shape(self, key: str) -> tuple:
        """A tensor's shape, read from the file header (no data)."""
        return tuple(self._file(key).get_slice(key).get_shape())

    def get(self, key: str) -> torch.Tensor:
        return self._file(key).get_tensor(key)


class ShardedSafetensorsWriter:
    """Writes tensors into model-0000i-of-0000N.safetensors files of at most ``max_shard_bytes``,
    then model.safetensors.index.json (a single model.safetensors when one shard suffices)."""

    def __init__(self, out: str | Path, max_shard_bytes: int = 5 * 1024**3) -> None:
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.max = max_shard_bytes
        self.pending: dict[str, torch.Tensor] = {}
        self.pending_bytes = 0
        self.shards: list[tuple[str, list[str]]] = []
        self.total_bytes = 0

    def add(self, tensors: dict[str, torch.Tensor]) -> None:
        for key, t in tensors.items():
            size = t.numel() * t.element_size()
            if self.pending and self.pending_bytes + size > self.max:
                self._flush()
            self.pending[key] = t.contiguous()
            self.pending_bytes += size
            self.total_bytes += size

    def _flush(self) -> None:
        name = f".shard-{len(self.shards):05d}.safetensors"
        save_file(self.pending, str(self.out / name), metadata={"format": "pt"})
        self.shards.append((name, list(self.pending)))
        self.pending, self.pending_bytes = {}, 0

    def close(self) -> list[str]:
        if self.pending:
            self._flush()
        n = len(self.shards)
        if n == 1:
            os.replace(self.out / self.shards[0][0], self.out / "model.safetensors")
            return ["model.safetensors"]
        weight_map, names = {}, []
        for i, (tmp, keys) in enumerate(self.shards):
            final = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            os.replace(self.out / tmp, self.out / final)
            weight_map.update({k: final for k in keys})
            names.append(final)
        index = {"metadata": {"total_size": self.total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
        (self.out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        return names


def copy_tokenizer(src: str | Path, out: str | Path) -> list[str]:
    """Copy the tokenizer (and, for Qwen v1, its remote-code .py files) from ``src``: a directory, or a
    Qwen tokenizer name (``qwen2``, ``qwen2.5``, ``qwen3``), rebuilt offline from the bundled vocabulary."""
    from data_pipeline.qwen import resolve

    src, copied = resolve(src), []
    for f in [*(src / n for n in TOKENIZER_FILES), *src.glob("*.py")]:
        if f.is_file():
            shutil.copy2(f, Path(out) / f.name)
            copied.append(f.name)
    if not copied:
        raise ConfigError(f"--tokenizer {src}: no tokenizer files found ({', '.join(TOKENIZER_FILES[:3])}, ...)")
    return copied
