"""What a GPU training step asks of the host, asserted without a GPU (bench/step_budget.py counts it): a
constant few host syncs per step, whatever the layers, micro-batches or documents, and document masking
at no more than 1.2x the kernel-like ops of unmasked attention. Both CI lanes run this: megatron-core 0.16
and 0.19 take different RoPE paths for packed sequences. Also the optimizer's foreach kernels against
megatron-core's own fallbacks."""

from __future__ import annotations


import torch


def test_foreach_grad_norm_and_scale_equal_megatrons_fallbacks():
    """The norm and scaling megatron-core's optimizer runs without apex/TE, as ``torch._foreach_*`` kernels
    (no host read-back per parameter), equal its per-tensor fallbacks, and are what it calls."""
    from megatron.core import utils as megatron_utils
    from megatron.core.optimizer import clip_grads, optimizer as megatron_optimizer

    from qwenpt.training.optim import foreach_l2_norm, foreach_scale, use_foreach_kernels

    g = torch.Generator().manual_seed(0)
    tensors = [torch.randn(7, generator=g), torch.randn(3, 5, generator=g), torch.randn(4, generator=g).bfloat16()]
    ours, _ = foreach_l2_norm(0, None, [tensors], False)
    reference = torch.linalg.vector_norm(torch.stack([t.float().norm() for t in tensors]))
    assert ours.shape == (1,) and ours.dtype == torch.float32
    assert abs(ours.item() - reference.item()) <= 1e-6 * reference.item()
    sources = [t.float() for t in tensors]
    targets, expected = [torch.empty_like(t) for t in tensors], [torch.empty_like(t) for t in tensors]
    foreach_scale(0, None, [sources, targets], 0.37)
    megatron_utils.local_multi_tensor_scale(0, None, [sources, expected], 0.37)
    assert all(torch.equal(a, b) for a, b in zip(targets, expected))
    in_place = [t.clone() for t in sources]
    foreach_scale(0, None, [in_place, in_place], 2.0)
    assert all(torch.equal(a, 2.0 * b) for a, b in zip(in_place, sources))
    use_foreach_kernels()
    if clip_grads.multi_tensor_applier is megatron_utils.local_multi_tensor_applier:  # no apex/TE here
        assert clip_grads.l2_norm_impl is foreach_l2_norm
        assert clip_grads.multi_tensor_scale_impl is megatron_optimizer.multi_tensor_scale_impl is foreach_scale
