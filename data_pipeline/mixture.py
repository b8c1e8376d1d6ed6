"""Blend weights over a prepared corpus's datasets for a token budget, and the ``data`` config for them.

Methods (``n_i``: tokens of dataset i, ``B``: budget, ``p_i``: sampling share):

- ``natural``: ``p_i = n_i / Σn``.
- ``temperature``: ``p_i ∝ n_i^α`` (α = 1/T; α = 0.3 as in mT5 and XLM-R up-weights small languages).
- ``unimax`` (Chung et al. 2023, Algorithm 1): go through datasets from smallest to largest, giving each
  an equal share of the budget left, capped at ``max_epochs · n_i``; ``p_i = b_i / B``.
- ``explicit``: the user's weights, normalised; datasets not named get 0.

Epochs of dataset i = ``p_i · B / n_i``: how often its tokens are seen at that budget.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import yaml

from data_pipeline.manifest import Manifest

log = logging.getLogger(__name__)
METHODS = ("natural", "temperature", "unimax", "explicit")


@dataclass(frozen=True)
class Mixture:
    method: str
    budget: int  # tokens
    weights: dict[str, float]  # group -> sampling share, summing to 1
    tokens: dict[str, int]  # group -> tokens available

    def epochs(self) -> dict[str, float]:
        return {g: self.weights[g] * self.budget / self.tokens[g] if self.tokens[g] else 0.0 for g in self.weights}

    def as_dict(self) -> dict:
        return {"method": self.method, "budget": self.budget, "weights": self.weights, "tokens": self.tokens, "epochs": self.epochs()}


def natural(tokens: Mapping[str, int]) -> dict[str, float]:
    total = sum(tokens.values())
    return {g: n / total for g, n in tokens.items()}


def temperature(tokens: Mapping[str, int], alpha: float) -> dict[str, float]:
    if not 0 <= alpha:
        raise ValueError(f"temperature alpha must be >= 0, got {alpha}")
    scaled = {g: n**alpha for g, n in tokens.items()}
    total = sum(scaled.values())
    return {g: v / total for g, v in scaled.items()}


def unimax(tokens: Mapping[str, int], budget: int, max_epochs: float) -> dict[str, float]:
    """UniMax: uniform over datasets, each capped at ``max_epochs`` of its tokens; when every cap binds
    before the budget is spent, the shares are of what the caps allow (epochs show it)."""
    if max_epochs <= 0:
        raise ValueError(f"unimax max_epochs must be > 0, got {max_epochs}")
    left, alloc = float(budget), {}
    order = sorted(tokens, key=lambda g: (tokens[g], g))
    for i, g in enumerate(order):
        alloc[g] = min(left / (len(order) - i), max_epochs * tokens[g])
        left -= alloc[g]
    total = sum(alloc.values())
    return {g: alloc[g] / total for g in tokens}


def explicit(tokens: Mapping[str, int], given: Mapping[str, float]) -> dict[str, float]:
    unknown = sorted(set(given) - set(tokens))
    if unknown:
        raise ValueError(f"weights name {unknown}, which the manifest does not have; it has {sorted(tokens)}")
    if any(w < 0 for w in given.values()) or not sum(given.values()) > 0:
        raise ValueError(f"weights must be >= 0 with a positive sum, got {dict(given)}")
    total = sum(given.values())
    return {g: given.get(g, 0.0) / total for g in tokens}


def compute_mixture(
    manifest: Manifest,
    budget: int,
    method: str = "natural",
    alpha: float = 0.3,
    max_epochs: float = 4.0,
    weights: Mapping[str, float] | None = None,
) -> Mixture:
    """Shares per dataset group of ``manifest`` for ``budget`` tokens."""
    tokens = {g: s["tokens"] for g, s in manifest.groups().items()}
    if not tokens:
        raise ValueError(f"manifest {manifest.path} has no datasets with tokens")
    if budget <= 0:
        raise ValueError(f"token budget must be positive, got {budget}")
    if method == "natural":
        p = natural(tokens)
    elif method == "temperature":
        p = temperature(tokens, alpha)
    elif method == "unimax":
        p = unimax(tokens, budget, max_epochs)
        if budget > max_epochs * sum(tokens.values()):
            log.warning(
                "budget %d exceeds what %.3g epochs of every dataset hold (%d tokens): every dataset is repeated "
                "%.2f times; raise --max-epochs or add data", budget, max_epochs, max_epochs * sum(tokens.values()),
                budget / sum(tokens.values()),
            )
    elif method == "explicit":
        if not weights:
            raise ValueError("method explicit needs weights, e.g. --weights en=0.5,zh-cn=0.3,de=0.2")
        p = explicit(tokens, weights)
    else:
        raise ValueError(f"mixture method {method!r} is not one of {METHODS}")
    return Mixture(method=method, budget=int(budget), weights=p, tokens=tokens)


def parse_tokens(text: str) -> int:
    """``10B``, ``500M``, ``2.5T``, ``1e9`` or ``123456`` → tokens."""
    s = str(text).strip().upper().replace("_", "")
    scale = {"K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9, "T": 1e12}.get(s[-1:], None)
    try:
        value = float(s[:-1]) * scale if scale else float(s)
    except ValueError:
        raise ValueError(f"token budget {text!r}: expected a number with an optional K/M/B/T suffix, e.g. 10B") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"token budget {text!r} must be a positive number")
    return int(value)


def parse_weights(text: str) -> dict[str, float]:
    """``en=0.5,zh-cn=0.3`` → {"en": 0.5, "zh-cn": 0.3}."""
    out = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise ValueError(f"weight {item!r}: expected NAME=NUMBER, e.g. en=0.5") from None
        if not sep:
            raise ValueError(f"weight {item!r}: expected NAME=NUMBER, e.g. en=0.5")
    return out


def data_config(name: str, manifest: Manifest, mixture: Mixture, seq_length: int | None = None) -> dict:
    """The ``data`` group config for train.py: its name (which names the run folder), absolute dataset
    prefixes with their shares, and the tokenizer the corpus was prepared with. Datasets with share 0 are
    left out."""
    root = Path(manifest.path).resolve().parent if manifest.path else Path.cwd()
    groups = manifest.groups()
    blend = [
        {"prefix": str(root / groups[g]["prefix"]), "weight": round(w, 10)}
        for g, w in mixture.weights.items()
        if w > 0
    ]
    config: dict = {"name": name, "blend": blend, "tokenizer": manifest.tokenizer}
    if seq_length is not None:
        config["seq_length"] = seq_length
    return config


# The smallest model config (conf/model/) of each Qwen tokenizer's vocabulary; any other tokenizer trains the
# tiny CPU model, whose vocabulary (conf/model/tiny.yaml) is the bundled 8192-token BPE's
QWEN_MODELS = {"qwen2": "qwen2_0.5b", "qwen2.5": "qwen2.5_0.5b", "qwen3": "qwen3_0.6b", "qwen3.5": "qwen3.5_0.8b",
               "qwen3.6": "qwen3.5_0.8b"}
TINY_VOCAB = 8192


def model_overrides(manifest: Manifest) -> list[str]:
    """train.py's model overrides for a model whose vocabulary holds the corpus's token ids: the
    default ``data.tokenizer`` follows the model, so a printed ``data=`` alone could pick a model the ids
    do not fit (or resume another run)."""
    if manifest.tokenizer.lower() in QWEN_MODELS:
        return [f"model={QWEN_MODELS[manifest.tokenizer.lower()]}"]
    vocab = int(manifest.meta.get("vocab_size") or 0)
    if vocab <= TINY_VOCAB:
        return ["model=tiny"]
    return ["model=tiny", f"model.vocab_size={-(-vocab // 128) * 128}"]  # padded to a multiple of 128, as Qwen's


def train_command(path: str | Path, manifest: Manifest) -> str:
    """The train.py command for the data config at ``path`` (once in conf/data/): a new run, in
    runs/<model>-<data name>."""
    return " ".join(["python train.py", *model_overrides(manifest), f"data={Path(path).stem}"])


def run_folder(path: str | Path, manifest: Manifest) -> str:
    """The default run folder of :func:`train_command`'s run (conf/train: runs/${model.name}-${data.name})."""
    model = model_overrides(manifest)[0].removeprefix("model=")
    return f"runs/{model}-{Path(path).stem}"


def write_data_config(path: str | Path, manifest: Manifest, mixture: Mixture, seq_length: int | None = None) -> Path:
    """Write the Hydra ``data`` YAML (named after the file), with the mixture's shares and epochs and the
    command that trains on it as a comment header."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    epochs = mixture.epochs()
    header = [
        f"# Written by `python -m data_pipeline mix` from {manifest.path}",
        f"# method {mixture.method}, budget {mixture.budget:,} tokens; per dataset: share, tokens available, epochs",
        *(f"#   {g}: {w:.4f}, {mixture.tokens[g]:,}, {epochs[g]:.3f}" for g, w in mixture.weights.items()),
        f"# Use it: put this file in conf/data/ and run `{train_command(path, manifest)}` "
        f"(a new run in {run_folder(path, manifest)}).",
    ]
    body = yaml.safe_dump(data_config(path.stem, manifest, mixture, seq_length), sort_keys=False, allow_unicode=True)
    path.write_text("\n".join(header) + "\n" + body, encoding="utf-8")
    return path
