"""Shared by tests/unit/test_data.py and tests/integration/test_data.py."""

from __future__ import annotations


def _data(tmp_path, split="90,10,0", **kw):
    from types import SimpleNamespace

    return SimpleNamespace(blend=[], sample_weights={}, seq_length=32, split=split, cache_dir=str(tmp_path / "cache"),
                           document_mask=True, **kw)
