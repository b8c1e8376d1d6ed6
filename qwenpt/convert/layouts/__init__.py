"""The Hugging Face layouts qwenpt converts, one module each, and which one a checkpoint or a model uses.

Import picks a layout by config.json's ``model_type`` (:func:`for_hf_config`); export and verify by the
model family's ``hf_layout`` (:func:`for_model`, from ``FAMILIES`` in qwenpt/models/registry.py). Each
module implements :class:`~qwenpt.convert.layouts.base.Layout`; docs/adding-a-model.md walks through
adding one.
"""

from __future__ import annotations


from qwenpt.convert.layouts import qwen1, qwen2, qwen3_next
from qwenpt.convert.layouts.base import Fields, Layout
from qwenpt.errors import ConfigError
from qwenpt.models.registry import FAMILIES
from qwenpt.config import ModelConfig

LAYOUTS: tuple[Layout, ...] = (qwen1.LAYOUT, qwen2.LAYOUT, qwen3_next.LAYOUT)


def for_model(m: ModelConfig) -> Layout:
    """The layout model config ``m`` is exported in (its family's ``hf_layout``)."""
    hf_layout = FAMILIES[m.family].hf_layout
    for layout in LAYOUTS:
        if hf_layout in layout.hf_layouts:
            return layout
    raise ConfigError(f"model family {m.family}: no converter module for its Hugging Face layout {hf_layout!r}")


def for_hf_config(cfg: Fields, source: str) -> Layout:
    """The layout of a config.json (by ``model_type``, else by its architecture class)."""
    mtype = cfg.get("model_type", "")
    arch = (cfg.get("architectures") or [""])[0]
    for layout in LAYOUTS:
        if mtype in layout.model_types or arch in layout.architectures:
            return layout
    raise ConfigError(f"{source}: model_type {mtype!r} ({arch}) is not a Qwen layout this converter knows "
                      f"({'; '.join(layout.known_as for layout in LAYOUTS)})")
