"""The training logs: Python warnings go through logging (so ``train.log`` holds them as the console does),
and megatron-core's chatter that tells a user nothing stays out of both.

- Its INFO lines (one "Load the _IndexReader from ..." block per dataset when qwenpt checks a
  ``data.blend`` entry, a line per dataset build and DDP bucket): qwenpt logs a summary instead.
  Its warnings and errors still show.
- The deprecation warning its own default ``cuda_graph_scope="full"`` (0.16) / ``cuda_graph_modules="full"``
  (0.19) raises on every model build, CUDA graphs used or not. Only that message, from that module, is
  ignored; every other warning still shows.
"""

from __future__ import annotations

import logging
import warnings

MEGATRON_DEFAULT_SCOPE = r"full scope is deprecated"


def configure_training_logs() -> None:
    """Call before anything reads a dataset or builds a model (idempotent)."""
    logging.captureWarnings(True)
    logging.getLogger("megatron.core").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=MEGATRON_DEFAULT_SCOPE, category=UserWarning,
                            module=r"megatron\.core\.transformer\.transformer_config")
