"""Run megatron-core on a machine without CUDA.

megatron-core (tested: 0.16.1 on Python 3.11, 0.19.2 on 3.12) assumes a GPU throughout:
``torch.cuda.current_device()`` for every allocation (~175 call sites), literal ``device="cuda"``
tensors (schedules, DDP buffers, optimizer flags), the CUDA RNG tracker, CUDA streams/events/
synchronize, NVTX ranges, and a ``te_general_gemm`` name in ``moe/moe_utils.py`` that is only bound
when Transformer Engine imports. Rather than patch call sites one by one, this module installs, once:

1. a ``TorchFunctionMode`` that rewrites any CUDA device in a torch call (factory ``device=``,
   ``Tensor.to(...)``, ``Tensor.cuda()``) to the CPU — the mechanism ``torch.set_default_device``
   itself uses — and answers ``Tensor.type()`` with the CUDA type name megatron asserts on
   (``'torch.cuda.FloatTensor'``);
2. CPU stand-ins for the ``torch.cuda`` functions megatron calls (device index, streams,
   events, synchronize, NVTX, memory stats, RNG state), with the CUDA RNG mapped onto the CPU
   generator so megatron's tensor-parallel RNG forks keep their meaning;
3. ``te_general_gemm = None`` in megatron's MoE utils, so its own non-TE branch runs;
4. the alltoall token dispatcher's device-to-host copy of its split sizes: megatron's
   ``maybe_move_tensor_to_cpu`` returns numpy (which ``all_to_all_single`` takes as a sequence) only
   for a CUDA tensor, so on the CPU the sizes would stay tensors and gloo's all-to-all rejects them.

It is applied explicitly at start-up by :func:`qwenpt.distributed.initialize` and only when
``torch.cuda.is_available()`` is False; on a GPU it is never installed. ``torch.cuda.is_available()``
keeps answering False, so megatron's own CPU-aware branches (gloo paths) still choose right.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

_installed = False


def _is_cuda(device: Any) -> bool:
    if isinstance(device, torch.device):
        return device.type == "cuda"
    if isinstance(device, str):
        return device.split(":")[0] == "cuda"
    return False


class _CudaDevicesToCpu(TorchFunctionMode):
    """Rewrite CUDA devices in torch calls to the CPU."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            # megatron asserts type strings such as 'torch.cuda.FloatTensor' (clip_grads, optimizers)
            name = func(*args)
            return name.replace("torch.", "torch.cuda.", 1) if not name.startswith("torch.cuda.") else name
        if "device" in kwargs and _is_cuda(kwargs["device"]):
            kwargs["device"] = "cpu"
        if kwargs.get("pin_memory"):
            kwargs["pin_memory"] = False  # pinning needs a CUDA runtime
        if func is torch.Tensor.to and len(args) > 1 and _is_cuda(args[1]):
            args = (args[0], "cpu", *args[2:])
        return func(*args, **kwargs)


class _Stream:
    """Stand-in for ``torch.cuda.Stream``: CPU work is synchronous, so every wait is a no-op."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def wait_stream(self, stream: Any) -> None:
        pass

    def wait_event(self, event: Any) -> None:
        pass

    def record_event(self, event: Any = None) -> "_Event":
        return event if event is not None else _Event()

    def synchronize(self) -> None:
        pass

    def query(self) -> bool:
        return True

    def __enter__(self) -> "_Stream":
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


class _Event:
    """Stand-in for ``torch.cuda.Event``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def record(self, stream: Any = None) -> None:
        pass

    def wait(self, stream: Any = None) -> None:
        pass

    def synchronize(self) -> None:
        pass

    def query(self) -> bool:
        return True

    def elapsed_time(self, other: Any) -> float:
        return 0.0


def _noop() -> Any:
    """A fresh no-op function: torch._dynamo indexes torch.cuda's attributes by identity."""

    def noop(*args: Any, **kwargs: Any) -> None:
        return None

    return noop


def _host_copy(tensor: Any, as_numpy: bool = False, record_stream: bool = False) -> Any:
    """``maybe_move_tensor_to_cpu`` for tensors already on the CPU: honour ``as_numpy``."""
    if as_numpy and torch.is_tensor(tensor):
        return tensor.numpy()
    return tensor


def install() -> bool:
    """Install the CPU layer if CUDA is absent. Idempotent; returns whether it is active."""
    global _installed
    if _installed:
        return True
    if torch.cuda.is_available():
        return False

    cuda = torch.cuda
    cuda.current_device = lambda: torch.device("cpu")
    cuda.set_device = _noop()
    cuda.synchronize = _noop()
    cuda.Stream = _Stream
    cuda.Event = _Event
    cuda.current_stream = lambda *a, **k: _Stream()
    cuda.default_stream = lambda *a, **k: _Stream()
    cuda.stream = lambda *a, **k: contextlib.nullcontext()
    cuda.memory_stats = lambda *a, **k: {}
    cuda.max_memory_allocated = lambda *a, **k: 0
    cuda.memory_allocated = lambda *a, **k: 0
    cuda.nvtx.range_push = _noop()
    cuda.nvtx.range_pop = _noop()
    # The CUDA RNG becomes the CPU generator: megatron's tracker forks it per TP/EP rank.
    cuda.get_rng_state = lambda *a, **k: torch.get_rng_state()
    cuda.set_rng_state = lambda state, *a, **k: torch.set_rng_state(state)
    cuda.manual_seed = lambda seed: torch.default_generator.manual_seed(int(seed))
    cuda.manual_seed_all = _noop()  # torch.manual_seed calls it; the CPU generator is already seeded

    from megatron.core.tensor_parallel import random as mcore_random
    from megatron.core.transformer.moe import moe_utils, token_dispatcher

    mcore_random._get_cuda_rng_state = lambda *a, **k: torch.get_rng_state()
    mcore_random._set_cuda_rng_state = lambda state, *a, **k: torch.set_rng_state(state)
    if not hasattr(moe_utils, "te_general_gemm"):
        moe_utils.te_general_gemm = None
    token_dispatcher.maybe_move_tensor_to_cpu = _host_copy

    _CudaDevicesToCpu().__enter__()  # stays active for the life of the process
    _installed = True
    return True


def is_installed() -> bool:
    return _installed
