"""GPU tests: collected on every machine, run only where CUDA exists (marker ``gpu``).

On a machine without a GPU each test is reported as skipped for that reason alone; on a GPU machine
they all run (``python -m pytest -q -m gpu tests/gpu``, or ``scripts/gpu/run.sh`` on a bare one).
"""

from __future__ import annotations

import pytest
import torch


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (marker gpu); this machine has none")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
