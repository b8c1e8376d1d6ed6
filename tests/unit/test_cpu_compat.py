"""The CPU layer turns megatron-core's CUDA assumptions into CPU operations (CUDA-less machines only)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from qwenpt import cpu_compat
from qwenpt.config import ParallelConfig

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU layer is never installed with CUDA")


@pytest.fixture(autouse=True)
def installed():
    assert cpu_compat.install() is True
    assert cpu_compat.install() is True  # idempotent


def test_cuda_devices_become_cpu():
    a = torch.zeros(3, device="cuda")
    b = torch.ones(2, device=torch.device("cuda", 0)).cuda()
    c = torch.arange(4).to("cuda:0")
    d = torch.empty(2, device=torch.cuda.current_device(), pin_memory=True)
    assert {t.device.type for t in (a, b, c, d)} == {"cpu"}
    assert c.tolist() == [0, 1, 2, 3]
    assert torch.cuda.is_available() is False  # megatron's own CPU branches still choose gloo paths


def test_type_strings_match_megatron_asserts():
    assert torch.zeros(1).type() == "torch.cuda.FloatTensor"
    assert torch.zeros(1, dtype=torch.bfloat16).type() == "torch.cuda.BFloat16Tensor"
    assert torch.zeros(1).type(torch.float64).dtype == torch.float64  # conversions are untouched


def test_streams_events_and_sync_are_noops():
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        x = torch.ones(2) * 2
    torch.cuda.current_stream().wait_stream(s)
    e = torch.cuda.Event()
    e.record()
    torch.cuda.synchronize()
    assert x.tolist() == [2.0, 2.0] and e.query()


def test_rng_tracker_forks_the_cpu_generator():
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker, model_parallel_cuda_manual_seed

    from qwenpt.distributed import init_process_group

    init_process_group()
    from megatron.core import parallel_state

    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel()
    model_parallel_cuda_manual_seed(7, force_reset_rng=True)
    tracker = get_cuda_rng_tracker()
    with tracker.fork():
        first = torch.rand(3)
    with tracker.fork():
        second = torch.rand(3)
    outside = torch.rand(3)
    # the fork continues its own stream (seed 7 + 2718 + tp_rank), independent of the default one
    g = torch.Generator().manual_seed(7 + 2718)
    assert torch.equal(first, torch.rand(3, generator=g)) and torch.equal(second, torch.rand(3, generator=g))
    assert torch.equal(outside, torch.rand(3, generator=torch.Generator().manual_seed(7)))


def test_a_new_run_in_the_same_process_starts_with_empty_loss_trackers():
    """megatron-core sizes its MoE aux-loss tracker by the first model's layer count: without the reset a
    second, deeper model in one process (the layouts worker) indexes past it."""
    from megatron.core.transformer.moe.moe_utils import get_moe_layer_wise_logging_tracker, save_to_aux_losses_tracker
    from megatron.core.transformer.multi_token_prediction import MTPLossLoggingHelper

    from qwenpt.distributed import clear_loss_trackers

    save_to_aux_losses_tracker("load_balancing_loss", torch.tensor(1.0), layer_number=2, num_layers=2)
    MTPLossLoggingHelper.tracker["values"] = torch.ones(1)
    with pytest.raises(IndexError):
        save_to_aux_losses_tracker("load_balancing_loss", torch.tensor(1.0), layer_number=5, num_layers=5)
    clear_loss_trackers()
    assert MTPLossLoggingHelper.tracker == {}
    save_to_aux_losses_tracker("load_balancing_loss", torch.tensor(3.0), layer_number=5, num_layers=5)
    assert get_moe_layer_wise_logging_tracker()["load_balancing_loss"]["values"].tolist() == [0, 0, 0, 0, 3.0]
    clear_loss_trackers()


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts threads through Linux's /proc")
def test_each_initialise_releases_the_last_layouts_groups(megatron_world):
    """A process that sets up several runs (the layout tests' worker, a test session, a notebook) keeps a
    constant number of threads: each initialise destroys the process groups megatron-core made for the last
    layout (without: +51 threads per initialise on torch 2.13, +60 on 2.14, some of them busy)."""
    from qwenpt import distributed

    counts = []
    for _ in range(3):
        distributed.initialize(ParallelConfig(), seed=1234)
        counts.append(len(list(Path("/proc/self/task").iterdir())))
    assert counts[0] == counts[1] == counts[2], counts
