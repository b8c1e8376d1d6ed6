"""The multi-token prediction loss of a step, for the log (``model.mtp_num_layers`` > 0).

megatron-core adds the MTP loss to the gradients itself (``MTPLossAutoScaler``, weighted by
``model.mtp_loss_weight`` / layers) and keeps, on the last pipeline stage, each MTP layer's loss summed
over the step's micro-batches (each a mean over its tokens) in ``MTPLossLoggingHelper.tracker``
(``values`` in 0.16, ``loss_values`` from 0.17). :func:`step_loss` turns that into one number per
step known on every rank: averaged over the data- and context-parallel replicas and the micro-batches,
summed over the pipeline (only the last stage holds it), then the tracker is cleared for the next step.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.transformer.multi_token_prediction import MTPLossLoggingHelper

_KEYS = ("loss_values", "values")  # megatron-core >= 0.17, 0.16


def step_loss(num_layers: int, num_microbatches: int, device: torch.device) -> list[float]:
    """Each MTP layer's mean token loss over the step that just ran (a collective: every rank calls it)."""
    tracker = MTPLossLoggingHelper.tracker
    key = next((k for k in _KEYS if k in tracker), None)
    values = torch.zeros(num_layers, dtype=torch.float64, device=device)
    if key is not None:
        values += tracker[key].to(values)
        tracker[key].zero_()
    dp_cp = parallel_state.get_data_parallel_group(with_context_parallel=True)
    dist.all_reduce(values, group=dp_cp)
    dist.all_reduce(values, group=parallel_state.get_pipeline_model_parallel_group())
    values /= dist.get_world_size(dp_cp) * num_microbatches
    return values.tolist()
