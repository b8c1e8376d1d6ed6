"""Hugging Face checkpoint directories: config.json ⇄ model config, safetensors read tensor by
tensor, sharded writing with an index (the layout ``save_pretrained`` produces)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Optional

import torch

from qwenpt.config import ModelConfig
from qwenpt.errors import ConfigError, check
from qwenpt.convert import layouts
from qwenpt.convert.layouts.base import Fields
from qwenpt.extras import require
from qwenpt.models.size import head_dim

# the base install lacks safetensors: converting says which extra to install (exit 2), no traceback
_FEATURE = "reading and writing Hugging Face checkpoints (python -m qwenpt.convert, checkpoint.init_from_hf)"
safe_open = require("safetensors", "hf", _FEATURE).safe_open
save_file = require("safetensors.torch", "hf", _FEATURE).save_file

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


def model_config_from_hf(cfg: dict, name: str, family: Optional[str] = None,
                         source: str = "config.json") -> ModelConfig:
    """The qwenpt model config of a Hugging Face Qwen config.json (Hub or transformers 5 form), read by
    its layout's module (``family``: instead of the one config.json implies); ``source`` names the file in errors."""
    cfg = Fields(cfg, source)
    fields = layouts.for_hf_config(cfg, source).model_fields(cfg, cfg.get("model_type", ""), source)
    if family:
        fields["family"] = family
    return ModelConfig(name=name, **fields)


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


def check_init_from_hf(hf_dir: str | Path, model: ModelConfig) -> None:
    """checkpoint.init_from_hf holds the architecture of ``model`` (its config.json against the model config)."""
    hf = model_config_from_hf(read_hf_config(hf_dir), model.name, model.family, source=str(Path(hf_dir) / "config.json"))
    differ = [
        f"{k} {getattr(model, k)} vs {getattr(hf, k)}"
        for k in ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups",
                  "vocab_size", "tie_embeddings", "qkv_bias", "qk_layernorm", "num_experts",
                  "moe_ffn_hidden_size", "moe_router_topk", "moe_shared_expert_ffn_hidden_size")
        if getattr(model, k) != getattr(hf, k)
    ]
    if head_dim(model) != head_dim(hf):
        differ.append(f"head width (kv_channels) {head_dim(model)} vs {head_dim(hf)}")
    check(not differ, f"checkpoint.init_from_hf: {hf_dir} is not model={model.name} "
                      f"(model vs its config.json: {'; '.join(differ)}); pick the matching model config")
