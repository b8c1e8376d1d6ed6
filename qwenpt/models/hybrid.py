"""The hybrid Qwen generation (Qwen3-Next, Qwen3.5, Qwen3.6): Gated DeltaNet layers among gated attention.

Three of every four layers (``model.full_attention_interval``) are megatron-core's ``GatedDeltaNet``
(linear attention with a gated delta rule: causal depthwise conv over q/k/v, L2-normalised q and k, a
per-head decay ``-exp(A_log) * softplus(a + dt_bias)``, output through ``norm(o) * silu(z)``); the others
are megatron-core's attention with its output gate. The layers are megatron-core's own modules; this
module chooses, per layer, which one a layer spec holds, and supplies what megatron-core takes from
flash-linear-attention where no GPU exists:

megatron-core's GDN calls flash-linear-attention's Triton kernels (``chunk_gated_delta_rule``,
``l2norm``; 0.19 also its ``causal_conv1d``), which need CUDA. On a machine without CUDA,
:func:`install_cpu_kernels` puts the torch implementations below under those names in megatron-core's
GDN module (once, from :func:`qwenpt.models.build_model`), as :mod:`qwenpt.cpu_compat` does for the CUDA
runtime, and runs the GDN's ``torch.compile``'d helpers eagerly (inductor on a CPU compiles C++ in every
process: 7 s of a first step here, and it needs a compiler). They follow the same chunked algorithm (chunks of 64, a triangular solve per chunk, the state
carried between chunks) and restart the recurrent state and the convolution at every packed document
(``cu_seqlens``), as the kernels do. On a GPU the kernels come from the ``gpu`` extra
(``flash-linear-attention``); without it :func:`validate` refuses the model up front.
"""

from __future__ import annotations

import copy
import functools
import importlib
import inspect
from typing import Any, Optional

import megatron.core
import torch
import torch.nn.functional as F
from packaging.version import Version

from qwenpt.errors import ConfigError, check
from qwenpt.models.size import is_hybrid as enabled, is_linear_layer

# megatron-core's GDN module: one file in 0.16, a package (common + gdn) from 0.18
_GDN_MODULES = ("megatron.core.ssm.gated_delta_net", "megatron.core.ssm.gated_delta_net.common",
                "megatron.core.ssm.gated_delta_net.gdn")
PACKED_GDN_VERSION = "0.18"  # megatron-core's GDN takes packed sequences (cu_seqlens) and CP from here
CHUNK = 64


def layer_types(m: Any) -> list[str]:
    """Hugging Face's ``layer_types``: linear_attention / full_attention per layer."""
    return ["linear_attention" if is_linear_layer(m, i) else "full_attention" for i in range(m.num_layers)]


@functools.lru_cache(maxsize=None)
def mtp_decoder_layer_name() -> str:
    """Where megatron-core's MultiTokenPredictionLayer keeps its decoder layer (its checkpoint names):
    ``transformer_layer`` in 0.16, ``mtp_model_layer`` in 0.19 — read from its source, no model built."""
    from megatron.core.transformer.multi_token_prediction import MultiTokenPredictionLayer

    return "mtp_model_layer" if "self.mtp_model_layer" in inspect.getsource(MultiTokenPredictionLayer) else "transformer_layer"


def megatron_packs_gdn() -> bool:
    """Whether the installed megatron-core's GDN takes packed sequences and context parallelism."""
    return Version(megatron.core.__version__) >= Version(PACKED_GDN_VERSION)


def validate(m: Any, parallel: Any = None) -> None:
    """The hybrid fields, and what megatron-core and this machine can run of them."""
    check(m.mtp_num_layers >= 0, f"model.mtp_num_layers must be 0 or more, got {m.mtp_num_layers}")
    check(0.0 < m.rotary_percent <= 1.0, f"model.rotary_percent must be in (0, 1], got {m.rotary_percent}")
    if not enabled(m):
        if parallel is not None:
            _check_mtp_layout(m, parallel)
        return
    interval = m.full_attention_interval
    check(interval >= 1, f"model.full_attention_interval must be 1 or more (or null), got {interval}")
    for key in ("linear_num_key_heads", "linear_num_value_heads"):
        check(getattr(m, key) is not None and getattr(m, key) > 0,
               f"model.{key} must be set (a positive number) when model.full_attention_interval is")
    for key in ("linear_key_head_dim", "linear_value_head_dim", "linear_conv_kernel_dim"):
        check(getattr(m, key) > 0, f"model.{key} must be positive, got {getattr(m, key)}")
    check(m.linear_num_value_heads % m.linear_num_key_heads == 0,
           f"model.linear_num_value_heads {m.linear_num_value_heads} must be a multiple of "
           f"model.linear_num_key_heads {m.linear_num_key_heads}")
    if torch.cuda.is_available():
        try:
            importlib.import_module("fla.ops.gated_delta_rule")
        except ImportError:
            raise ConfigError("Gated DeltaNet layers on a GPU need flash-linear-attention's kernels: "
                              "pip install 'qwenpt[gpu]' (or pip install fla-core)") from None
    if parallel is None:
        return
    _check_mtp_layout(m, parallel)
    tp = parallel.tensor_model_parallel_size
    for key in ("linear_num_key_heads", "linear_num_value_heads"):
        check(getattr(m, key) % tp == 0,
               f"model.{key} {getattr(m, key)} is not divisible by parallel.tensor_model_parallel_size {tp}")
    if parallel.context_parallel_size > 1:
        check(megatron_packs_gdn(),
               f"context parallelism with Gated DeltaNet layers needs megatron-core >= {PACKED_GDN_VERSION} "
               f"(installed: {megatron.core.__version__})")
        cp = parallel.context_parallel_size
        for key in ("linear_num_key_heads", "linear_num_value_heads"):
            check(getattr(m, key) % (tp * cp) == 0,
                   f"model.{key} {getattr(m, key)} is not divisible by tensor x context parallel size {tp * cp} "
                   "(megatron-core's GDN spreads heads over the CP ranks)")


def _check_mtp_layout(m: Any, parallel: Any) -> None:
    pp = parallel.pipeline_model_parallel_size
    check(not (m.mtp_num_layers and m.tie_embeddings and pp > 1),
           f"model.mtp_num_layers {m.mtp_num_layers} with model.tie_embeddings and parallel.pipeline_model_parallel_size "
           f"{pp}: megatron-core (0.16-0.19) gives the MTP stage its own output weight, which its checkpointing then "
           "refuses for tied embeddings; the tied (small) hybrids fit without pipeline parallelism: set "
           "pipeline_model_parallel_size=1, or model.mtp_num_layers=0")


def validate_document_mask(m: Any, document_mask: bool, parallel: Any = None) -> None:
    """Packed documents through GDN layers (megatron-core >= 0.18), and MTP on packed documents under CP."""
    check(not (enabled(m) and document_mask) or megatron_packs_gdn(),
           f"document masking with Gated DeltaNet layers needs megatron-core >= {PACKED_GDN_VERSION} (installed: "
           f"{megatron.core.__version__}, whose GDN refuses packed sequences): install a newer megatron-core "
           "(Python >= 3.12 takes 0.19), or set data.document_mask=false")
    cp = parallel.context_parallel_size if parallel is not None else 1
    check(not (m.mtp_num_layers and document_mask and cp > 1),
           f"model.mtp_num_layers {m.mtp_num_layers} with data.document_mask and parallel.context_parallel_size {cp}: "
           "megatron-core's MTP shifts its targets by the unpadded document boundaries (cu_seqlens_q) while context "
           "parallelism pads every document to a multiple of 2 x CP tokens, so targets near document ends are wrong "
           "(measured: MTP loss 2e-5 off one process); set model.mtp_num_layers=0, or context_parallel_size=1")


def transformer_config_fields(m: Any) -> dict:
    """The megatron-core TransformerConfig fields of the hybrid architecture."""
    fields: dict[str, Any] = dict(attention_output_gate=m.attention_output_gate,
                                  layernorm_zero_centered_gamma=m.norm_zero_centered)
    if m.mtp_num_layers:
        fields.update(mtp_num_layers=m.mtp_num_layers, mtp_loss_scaling_factor=m.mtp_loss_weight)
    if enabled(m):
        fields.update(
            experimental_attention_variant="gated_delta_net",
            linear_attention_freq=m.full_attention_interval,
            linear_conv_kernel_dim=m.linear_conv_kernel_dim,
            linear_key_head_dim=m.linear_key_head_dim,
            linear_value_head_dim=m.linear_value_head_dim,
            linear_num_key_heads=m.linear_num_key_heads,
            linear_num_value_heads=m.linear_num_value_heads,
        )
    return fields


# ---------------------------------------------------------------- layer specs


def gdn_layer_spec(attention_layer: Any, use_te: bool) -> Any:
    """A decoder layer with megatron-core's GatedDeltaNet in place of ``attention_layer``'s attention
    (same norms and MLP). The gated output norm is a plain RMSNorm (``w``, not ``1 + w``), as in the
    released checkpoints, whatever the other norms are."""
    from megatron.core.ssm.gated_delta_net import GatedDeltaNet, GatedDeltaNetSubmodules
    from megatron.core.transformer.spec_utils import ModuleSpec

    from qwenpt.models.norm import RMSNorm

    spec = copy.deepcopy(attention_layer)
    if use_te:  # the input norm is fused into in_proj, as TE's attention fuses it into linear_qkv
        from megatron.core.extensions.transformer_engine import (
            TELayerNormColumnParallelLinear,
            TERowParallelLinear,
        )

        in_proj, out_proj = TELayerNormColumnParallelLinear, TERowParallelLinear
    else:
        from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear

        in_proj, out_proj = ColumnParallelLinear, RowParallelLinear
    spec.submodules.self_attention = ModuleSpec(
        module=GatedDeltaNet,
        submodules=GatedDeltaNetSubmodules(
            in_proj=in_proj, out_norm=ModuleSpec(module=RMSNorm, params={"zero_centered": False}), out_proj=out_proj),
    )
    keys = dict(spec.submodules.sharded_state_dict_keys_map or {})
    if "input_layernorm." in keys:  # checkpoints name the input norm where TE's fused layer keeps it
        keys["input_layernorm."] = "self_attention.in_proj.layer_norm_"
    spec.submodules.sharded_state_dict_keys_map = keys
    return spec


def layer_specs(m: Any, attention_layer: Any, layers: range, use_te: bool) -> list:
    """The layer specs of ``layers`` (global indices from 0): GDN or the attention layer, by the pattern."""
    gdn = gdn_layer_spec(attention_layer, use_te) if enabled(m) else None
    return [gdn if is_linear_layer(m, i) else attention_layer for i in layers]


def mtp_block_spec(m: Any, config: Any, attention_layer: Any, use_te: bool, vp_stage: Optional[int]) -> Any:
    """megatron-core's MTP block for this chunk (None where it holds no MTP layer): each MTP layer is a
    full (gated) attention layer with the model's MLP; its norms are the model's RMSNorm."""
    if not m.mtp_num_layers:
        return None
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_mtp_block_spec

    from qwenpt.models.norm import RMSNorm

    block = get_gpt_mtp_block_spec(config, attention_layer, use_transformer_engine=use_te, vp_stage=vp_stage)
    if block is not None and not use_te:
        for layer in block.layer_specs:
            layer.submodules.enorm = layer.submodules.hnorm = layer.submodules.layer_norm = RMSNorm
    return block


# ---------------------------------------------------------------- torch kernels (no CUDA)


def l2norm(x: torch.Tensor, dim: int = -1, eps: float = 1e-6, **_: Any) -> torch.Tensor:
    """x / sqrt(sum x^2 + eps) over ``dim`` (flash-linear-attention's l2norm)."""
    return x * torch.rsqrt((x * x).sum(dim=dim, keepdim=True) + eps)


def _positions(cu_seqlens: Optional[torch.Tensor], length: int, device: torch.device) -> torch.Tensor:
    """Each token's position within its packed document (all of ``length`` one document without cu_seqlens)."""
    if cu_seqlens is None:
        return torch.arange(length, device=device)
    starts = cu_seqlens[:-1].long()
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    return torch.arange(length, device=device) - torch.repeat_interleave(starts, lengths)


def causal_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                  activation: Optional[str] = None, initial_state: Any = None, output_final_state: bool = False,
                  cu_seqlens: Optional[torch.Tensor] = None, **_: Any) -> tuple[torch.Tensor, None]:
    """Depthwise causal convolution of x [b, s, d] with weight [d, w] (flash-linear-attention's signature):
    y_t = sum_j weight[:, w-1-j] * x_{t-j}, where x_{t-j} is zero before the start of t's document."""
    if initial_state is not None or output_final_state:
        raise NotImplementedError("the CPU causal_conv1d serves training: no initial or final state")
    width = weight.shape[-1]
    pos = _positions(cu_seqlens, x.shape[1], x.device)
    y = x * weight[:, width - 1]
    for j in range(1, width):
        shifted = F.pad(x, (0, 0, j, 0))[:, : x.shape[1]]
        y = y + shifted * (pos >= j).to(x.dtype)[None, :, None] * weight[:, width - 1 - j]
    if bias is not None:
        y = y + bias
    if activation in ("silu", "swish"):
        y = F.silu(y)
    elif activation is not None:
        raise ValueError(f"causal_conv1d: activation {activation!r} is not silu")
    return y, None


def _gated_delta_rule(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
                      state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One document, [B, H, T, d] in fp32, q already scaled. The recurrence

        S_t = exp(g_t) S_{t-1} + k_t d_t^T,   d_t = beta_t (v_t - exp(g_t) S_{t-1}^T k_t),   o_t = S_t^T q_t

    in chunks of CHUNK tokens: inside a chunk, with G_i the cumulative log decay, the writes d solve the
    unit lower-triangular system (I + A) d = beta v - beta exp(G) K S_0, A_ij = beta_i exp(G_i - G_j) k_i.k_j
    (j < i); the outputs and the next chunk's state follow from d in matrix products."""
    B, H, T, _ = q.shape
    pad = (-T) % CHUNK
    if pad:
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
        g, beta = (F.pad(t, (0, pad)) for t in (g, beta))
    n = (T + pad) // CHUNK
    q, k, v = (t.reshape(B, H, n, CHUNK, -1) for t in (q, k, v))
    g, beta = g.reshape(B, H, n, CHUNK), beta.reshape(B, H, n, CHUNK)
    G = g.cumsum(-1)
    lower = torch.ones(CHUNK, CHUNK, dtype=torch.bool, device=q.device).tril()
    decay = (G[..., :, None] - G[..., None, :]).masked_fill(~lower, float("-inf")).exp()  # exp(G_i - G_j), j <= i
    kb = k * beta[..., None]
    system = (kb @ k.transpose(-1, -2)) * decay  # the diagonal is ignored: unit triangular
    vb = torch.linalg.solve_triangular(system, v * beta[..., None], upper=False, unitriangular=True)
    kd = torch.linalg.solve_triangular(system, kb * G.exp()[..., None], upper=False, unitriangular=True)
    scores = (q @ k.transpose(-1, -2)) * decay
    q_decayed = q * G.exp()[..., None]
    k_to_end = k * (G[..., -1:] - G).exp()[..., None]
    out = torch.empty_like(v)
    for c in range(n):
        d = vb[:, :, c] - kd[:, :, c] @ state
        out[:, :, c] = q_decayed[:, :, c] @ state + scores[:, :, c] @ d
        state = state * G[:, :, c, -1, None, None].exp() + k_to_end[:, :, c].transpose(-1, -2) @ d
    return out.reshape(B, H, n * CHUNK, -1)[:, :, :T], state


def chunk_gated_delta_rule(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
                           scale: Optional[float] = None, initial_state: Optional[torch.Tensor] = None,
                           output_final_state: bool = False, use_qk_l2norm_in_kernel: bool = False,
                           cu_seqlens: Optional[torch.Tensor] = None, **_: Any) -> tuple[torch.Tensor, Any]:
    """flash-linear-attention's ``chunk_gated_delta_rule`` in torch: q, k [b, s, h, dk], v [b, s, h, dv],
    g and beta [b, s, h]; output [b, s, h, dv] in v's dtype. With ``cu_seqlens`` (b = 1), every document
    starts from a zero state."""
    if initial_state is not None or output_final_state:
        raise NotImplementedError("the CPU gated delta rule serves training: no initial or final state")
    dtype = v.dtype
    if use_qk_l2norm_in_kernel:
        q, k = l2norm(q), l2norm(k)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    q, k, v, g, beta = (t.transpose(1, 2).float() for t in (q, k, v, g, beta))  # [b, h, s, ...]
    q = q * scale
    B, H, _, dk = k.shape
    bounds = [0, q.shape[2]] if cu_seqlens is None else cu_seqlens.tolist()
    pieces = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        state = torch.zeros(B, H, dk, v.shape[-1], dtype=torch.float32, device=v.device)
        pieces.append(_gated_delta_rule(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], g[:, :, a:b], beta[:, :, a:b],
                                        state)[0])
    out = torch.cat(pieces, dim=2) if len(pieces) > 1 else pieces[0]
    return out.transpose(1, 2).to(dtype), None


_installed = False


def install_cpu_kernels() -> bool:
    """Put the torch kernels under flash-linear-attention's names in megatron-core's GDN module, where
    CUDA is absent (idempotent). Returns whether they are in place."""
    global _installed
    if _installed:
        return True
    if torch.cuda.is_available():
        return False
    kernels = {"l2norm": l2norm, "chunk_gated_delta_rule": chunk_gated_delta_rule, "causal_conv1d": causal_conv1d}
    for name in _GDN_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        for key, fn in kernels.items():  # 0.16 leaves l2norm undefined without fla: set every name
            setattr(module, key, fn)
        if hasattr(module, "HAVE_FLA"):
            module.HAVE_FLA = True
        for cls in vars(module).values():  # megatron-core's GDN classes: their torch.compile'd helpers run eagerly
            if isinstance(cls, type) and cls.__module__ == name:
                for attr, fn in list(vars(cls).items()):
                    if hasattr(fn, "_torchdynamo_orig_callable"):
                        setattr(cls, attr, fn._torchdynamo_orig_callable)
    _installed = True
    return True
