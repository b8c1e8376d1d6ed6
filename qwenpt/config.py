"""The run's configuration: a typed schema for Hydra, and validation in the user's terms.

Hydra checks types and unknown keys against these dataclasses; :func:`validate` checks what
types cannot (divisibility of heads by TP, batch arithmetic, files that must exist) and raises
:class:`ConfigError` naming the field — before anything is allocated.
"""

from __future__ import annotations

import dataclasses
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

from data_pipeline.qwen import MODELS as QWEN_TOKENIZERS
from qwenpt.errors import ConfigError
from qwenpt.models.registry import FAMILIES


@dataclass
class RopeScalingConfig:
    """YaRN RoPE scaling, as config.json's ``rope_scaling`` (see qwenpt/models/rope.py and README "Long context")."""

    type: Optional[str] = None  # null: plain RoPE | yarn (what Qwen2/Qwen2.5/Qwen3 ship)
    factor: Optional[float] = None  # context extension ratio, e.g. 4 for 32K -> 128K
    original_max_position_embeddings: Optional[int] = None  # the length the model was trained at
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    # cos/sin are multiplied by attention_factor; null: mscale / mscale_all_dim if both set, else 0.1 ln(factor) + 1
    mscale: Optional[float] = None
    mscale_all_dim: Optional[float] = None
    attention_factor: Optional[float] = None
    truncate: bool = True  # round the correction range to whole dimensions


@dataclass
class DualChunkConfig:
    """Dual Chunk Attention (An et al. 2024), an evaluation-time attention for sequences beyond the training
    length (qwenpt/models/dca.py, README "Long context"); chunk_size null: off."""

    chunk_size: Optional[int] = None  # the largest relative position used: at most the training length
    local_size: Optional[int] = None  # the window of exact relative positions into the previous chunk


@dataclass
class ModelConfig:
    """One Qwen model: every number of its architecture (the files in conf/model/ are the table)."""

    name: str = MISSING
    family: str = MISSING  # a key of qwenpt.models.registry.FAMILIES
    num_layers: int = MISSING
    hidden_size: int = MISSING
    ffn_hidden_size: int = MISSING  # dense SwiGLU width (Qwen v1: half its HF intermediate_size)
    num_attention_heads: int = MISSING
    num_query_groups: int = MISSING  # = heads for MHA, fewer for GQA
    # width of one attention head; null: hidden_size / num_attention_heads (Qwen3 decouples it: 128)
    kv_channels: Optional[int] = None
    vocab_size: int = MISSING  # embedding rows, already padded (151936 / 152064)
    max_position_embeddings: int = MISSING
    rope_theta: float = 10000.0
    # {type: yarn, factor, original_max_position_embeddings, ...}: YaRN; type null: plain RoPE
    rope_scaling: RopeScalingConfig = field(default_factory=RopeScalingConfig)
    # {chunk_size, local_size}: Dual Chunk Attention in evaluation (the SDPA path; training is unchanged)
    dual_chunk_attention: DualChunkConfig = field(default_factory=DualChunkConfig)
    norm_eps: float = 1e-6
    tie_embeddings: bool = False
    qkv_bias: bool = True
    qk_layernorm: bool = False  # Qwen3: RMSNorm over each query and key head before RoPE
    init_std: float = 0.02
    # Mixture of experts (Qwen1.5-MoE, Qwen2-MoE); num_experts null means dense.
    num_experts: Optional[int] = None
    moe_ffn_hidden_size: Optional[int] = None
    moe_router_topk: int = 1
    moe_shared_expert_ffn_hidden_size: Optional[int] = None
    moe_norm_topk_prob: bool = False  # Qwen2-MoE: top-k after softmax, no renormalisation
    moe_aux_loss_coeff: float = 0.001
    # megatron-core's moe_router_load_balancing_type: aux_loss (per micro-batch, Qwen1.5/2-MoE),
    # global_aux_loss (expert loads counted over the global batch, Qwen3-MoE), seq_aux_loss or none
    moe_load_balancing: str = "aux_loss"
    # The hybrid generation (Qwen3-Next, Qwen3.5, Qwen3.6; qwenpt/models/hybrid.py, docs/hybrid.md): layer i
    # (counted from 1) is full attention when i is a multiple of full_attention_interval, Gated DeltaNet
    # otherwise; null: every layer is full attention (Qwen <= 3). HF: full_attention_interval / layer_types.
    full_attention_interval: Optional[int] = None
    linear_num_key_heads: Optional[int] = None  # Gated DeltaNet query/key heads (HF linear_num_key_heads)
    linear_num_value_heads: Optional[int] = None  # value heads: a multiple of the key heads
    linear_key_head_dim: int = 128
    linear_value_head_dim: int = 128
    linear_conv_kernel_dim: int = 4  # causal depthwise conv over q, k, v
    attention_output_gate: bool = False  # o_proj(attn * sigmoid(gate)), the gate from a q_proj twice as wide
    rotary_percent: float = 1.0  # share of each head's dims that RoPE rotates (HF partial_rotary_factor)
    norm_zero_centered: bool = False  # RMSNorm applied as (1 + w): weights stored centred on zero
    # Multi-token prediction (megatron-core's MTP, as DeepSeek-V3 and the released hybrids): this many extra
    # layers each predict one token further; their loss, averaged over them, is added times mtp_loss_weight
    mtp_num_layers: int = 0
    mtp_loss_weight: float = 0.1


@dataclass
class ParallelConfig:
    tensor_model_parallel_size: int = 1
    pipeline_model_parallel_size: int = 1
    virtual_pipeline_model_parallel_size: Optional[int] = None
    context_parallel_size: int = 1
    expert_model_parallel_size: int = 1
    expert_tensor_parallel_size: Optional[int] = None  # null: same as tensor_model_parallel_size
    sequence_parallel: bool = False
    use_distributed_optimizer: bool = False
    moe_token_dispatcher_type: str = "allgather"  # allgather | alltoall
    recompute_granularity: Optional[str] = None  # null | selective | full
    recompute_num_layers: int = 1
    overlap_grad_reduce: bool = False  # bucketed gradient all-reduce / reduce-scatter during backward
    overlap_param_gather: bool = False  # distributed optimizer: parameter all-gather during forward
    # weight gradients accumulated straight into fp32 main_grad by a fused GEMM (GPU, needs Transformer
    # Engine or apex's fused_weight_gradient_mlp_cuda)
    gradient_accumulation_fusion: bool = False


@dataclass
class BlendEntry:
    prefix: str = MISSING  # path prefix of a megatron indexed dataset (prefix.bin / prefix.idx)
    weight: float = 1.0


@dataclass
class DataConfig:
    # The data config's name (conf/data/<name>.yaml sets it): names the default run folder,
    # runs/<model.name>-<data.name>, so other data starts another run instead of resuming one.
    name: str = "sample"
    # Empty blend: use the bundled multilingual sample (tokenized into cache_dir on first use).
    blend: List[BlendEntry] = field(default_factory=list)
    # qwen2 / qwen2.5 / qwen3 / qwen3.5 / qwen3.6 (rebuilt offline), a tokenizer.json or a directory holding one; null: qwen3.5
    # for models with Qwen3.5's vocabulary (248320 rows), qwen2
    # for models with Qwen's vocabulary, the bundled 8192-token BPE for smaller ones (tiny)
    tokenizer: Optional[str] = None
    # Bundled sample only: share per language (e.g. {en: 0.5, zh-cn: 0.5}); languages left out are
    # not trained on. Empty: every language, weighted by its tokens.
    sample_weights: Dict[str, float] = field(default_factory=dict)
    seq_length: int = 256
    # Tokens attend only within their own document (cut at each EOD), positions restart per document and
    # the EOD's loss (its label is the next document's first token) is masked; see README "Long context".
    # On for new runs; a resumed run keeps its checkpoint's setting (qwenpt/training/resume.py)
    document_mask: bool = True
    reset_position_ids: Optional[bool] = None  # null: follows document_mask (the only combination supported)
    split: str = "95,5,0"  # train, valid, test shares of each dataset's documents
    cache_dir: str = "~/.cache/qwenpt"
    # loader worker processes per rank; null: 2 on a GPU (batches and document boundaries prepared while the
    # GPU computes), 0 on the CPU (where workers would take the cores the step needs)
    num_workers: Optional[int] = None
    # Training samples are drawn from an index built for this many samples (rounded up to whole multiples of
    # it when a run needs more), not for train.steps x global batch: runs with the same data, seed and sequence
    # length read the same stream whatever their length, and extending a run continues it.
    # null: one pass over the blend's tokens (sum over sources / seq_length), at least 2^20 samples.
    sample_horizon: Optional[int] = None


@dataclass
class OptimConfig:
    lr: float = 3e-4
    min_lr: float = 3e-5
    weight_decay: float = 0.1
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    clip_grad: float = 1.0
    schedule: str = "cosine"  # cosine | wsd | linear | constant
    warmup_steps: int = 100
    wsd_decay_fraction: float = 0.2  # WSD: share of steps in the final decay
    wsd_decay_style: str = "linear"  # linear | cosine | exponential | minus_sqrt


@dataclass
class GuardConfig:
    """Checks on every step's loss and grad norm (qwenpt/training/guard.py); see README "Failure handling"."""

    # a NaN/Inf loss or grad norm: stop (exit naming the step and the last good checkpoint; the update is
    # never applied) | skip (drop the step's update, count it, go on)
    nonfinite: str = "stop"
    max_skips_in_a_row: int = 3  # skip: stop when this many steps in a row were non-finite
    # a loss above spike_factor x the median of the last spike_window finite losses is a spike: logged,
    # or the run stops with spike_action=stop. 0 disables.
    spike_factor: float = 3.0
    spike_window: int = 50
    spike_action: str = "warn"  # warn | stop
    # Fault injection, for tests only: "WHERE*FACTOR@STEPS[/RANK]" multiplies the loss (WHERE=loss) or the
    # gradients before their all-reduce (WHERE=grad) by FACTOR (nan, inf, or a number) at STEPS ("5" or
    # "5-7"), on one rank or all; "hang@STEP[/RANK]" blocks that step (tests the watchdog); "+" joins several.
    inject: Optional[str] = None


@dataclass
class WatchdogConfig:
    """Hang detection (qwenpt/training/watchdog.py): a stuck rank dumps every thread's stack and exits."""

    factor: float = 10.0  # a train step taking longer than factor x the median step time is a hang; 0 disables
    min_s: float = 120.0  # ... but never below this many seconds
    exit_code: int = 75  # what a hung process exits with (EX_TEMPFAIL: retry)
    # every collective (NCCL/gloo) and the first steps, evaluation and checkpoint saves wait at most this long
    collective_timeout_s: float = 1800.0


@dataclass
class TrainConfig:
    steps: int = 300
    micro_batch_size: int = 4
    global_batch_size: int = 16
    seed: int = 1234
    precision: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16
    # FP8 GEMMs through Transformer Engine (GPU, compute capability >= 8.9) on top of bf16: null (off) |
    # hybrid (e4m3 forward, e5m2 gradients) | e4m3; recipe: delayed | tensorwise | blockwise | mxfp8 (Blackwell)
    fp8: Optional[str] = None
    fp8_recipe: str = "delayed"
    eval_interval: int = 50
    eval_steps: int = 4
    # Also evaluate each data source (language) alone on its own validation split, the same samples
    # whatever the mixture: what data-mixing laws are fitted on. Logged as metrics "per_source".
    eval_per_source: bool = False
    # Validation loss per position bucket (the sequence cut into this many equal spans; with document masking
    # the token's position in its document): metrics "position_loss", whether the model uses long context. 0: off
    eval_position_buckets: int = 8
    run_dir: str = "runs/${model.name}-${data.name}"
    peak_tflops: Optional[float] = None  # per device, for MFU; null: known GPUs, none on CPU
    # torch's intra-op CPU threads per process (torch.set_num_threads); null: torch's choice. On a shared CPU
    # machine, processes x threads above the cores slows every step (measured 2-3x at 2 threads x 2 on 2 cores)
    cpu_threads: Optional[int] = None
    # Checkpoint and exit cleanly after the current step when this signal reaches a training process,
    # or when stop_file appears (what slurm/*.sh does on Slurm's --signal before the time limit or
    # preemption, then requeues; the requeued job resumes). null disables either.
    exit_signal: Optional[str] = "SIGUSR1"
    stop_file: Optional[str] = "${train.run_dir}/STOP"
    guard: GuardConfig = field(default_factory=GuardConfig)
    watchdog: WatchdogConfig = field(default_factory=WatchdogConfig)


@dataclass
class WandbConfig:
    mode: str = "offline"  # offline | online | disabled
    project: str = "qwenpt"
    entity: Optional[str] = None
    name: Optional[str] = None


@dataclass
class LoggingConfig:
    log_interval: int = 10
    progress: bool = True  # progress bar with throughput
    wandb: WandbConfig = field(default_factory=WandbConfig)


@dataclass
class CheckpointConfig:
    save_interval: int = 100  # steps; 0: no periodic saves. A checkpoint is also written at the end
    dir: Optional[str] = None  # null: <run_dir>/checkpoints
    resume: bool = True  # continue from the latest complete checkpoint in dir
    keep_last: int = 2  # older complete checkpoints are deleted; 0 keeps all
    # distributed optimizer state on disk: dp_reshardable (fully parallel; reload at any DP size)
    # or fully_reshardable (gathered to canonical per-parameter form; reload at any TP/PP/DP layout)
    optim_sharding: str = "dp_reshardable"
    # Start from these weights (a checkpoint directory, or a checkpoints root: its latest) when the run
    # has no checkpoint of its own; any TP/PP/VPP/EP layout can read any other's. Weights only.
    init_from: Optional[str] = None
    # Start from Hugging Face weights (a Qwen/Qwen1.5/Qwen2/Qwen2.5/Qwen3 directory with config.json and
    # safetensors): converted once into <dir>/hf_import, then loaded like init_from, at any layout.
    init_from_hf: Optional[str] = None
    # With init_from: also take its optimizer state (Adam moments and step count), e.g. for a context-extension
    # stage (README "Long context"); the LR schedule, step counter and data order start afresh either way.
    init_optimizer: bool = False
    # With init_from: the train.py arguments of the run that writes it (a previous stage), e.g.
    # [+experiment=long_context_tiny_stage1]. When this run starts fresh, rank 0 first runs (resumes, or
    # finds complete) `python train.py <them>` in one process.
    previous_stage: Optional[List[str]] = None
    # Initialise the model in one process, save it to <dir>/seed and exit. Runs in any layout started
    # with init_from=<dir>/seed then begin from the same weights (layers built on different pipeline
    # stages or expert ranks are otherwise initialised from different random streams).
    create_seed: bool = False
    # Write checkpoints in the background (megatron-core's async dist_checkpointing, torch_dist): training
    # goes on while the files are written; published (renamed into place, `latest`) when all ranks are done.
    async_save: bool = False
    # Every checkpoint's qwenpt_manifest.json (written last) records each file's size; with checksums=true
    # also its SHA-256 (the checkpoint is read back once at save). Resume checks them before loading.
    checksums: bool = False
    # Resuming with a different LR schedule (train.steps, optim.lr/min_lr/schedule/warmup/wsd/weight_decay)
    # than the checkpoint's: false refuses and lists the differences; true rebuilds the schedule from the new
    # config, keeping the step count.
    override_schedule: bool = False
    # Resuming with other data or batch (train.global_batch_size/seed, data.blend/sample_weights/split/seq_length/
    # tokenizer) than the checkpoint's: false refuses and lists the differences (a new run wants a new
    # train.run_dir); true goes on with the new data at the checkpoint's data position (consumed samples).
    override_data: bool = False


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)


def register() -> None:
    """Make the schema available to Hydra as ``base_config`` (conf/config.yaml extends it)."""
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=Config)
    cs.store(group="model", name="base_model", node=ModelConfig)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def validate_model(m: Any, parallel: Any | None = None) -> None:
    """Architecture and its fit to a parallel layout (shared by train.py, the planner and the converter)."""
    _check(m.family in FAMILIES, f"model.family {m.family!r} is unknown; use one of {sorted(FAMILIES)}")
    for name in ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups", "vocab_size"):
        _check(getattr(m, name) > 0, f"model.{name} must be positive, got {getattr(m, name)}")
    if m.kv_channels is None:
        _check(
            m.hidden_size % m.num_attention_heads == 0,
            f"model.hidden_size {m.hidden_size} is not divisible by model.num_attention_heads {m.num_attention_heads}; "
            "set model.kv_channels (the head width) explicitly",
        )
    else:
        _check(m.kv_channels > 0, f"model.kv_channels must be positive (or null), got {m.kv_channels}")
    _check(
        m.num_attention_heads % m.num_query_groups == 0,
        f"model.num_attention_heads {m.num_attention_heads} is not divisible by "
        f"model.num_query_groups {m.num_query_groups}",
    )
    from qwenpt.models import rope

    rope.validate(m)
    from qwenpt.models import dca

    dca.validate(m)
    from qwenpt.models import hybrid

    hybrid.validate(m, parallel)
    if m.num_experts is not None:
        _check(m.moe_ffn_hidden_size is not None, "model.moe_ffn_hidden_size must be set when model.num_experts is")
        _check(
            1 <= m.moe_router_topk <= m.num_experts,
            f"model.moe_router_topk {m.moe_router_topk} must be between 1 and model.num_experts {m.num_experts}",
        )
        _check(
            m.moe_load_balancing in ("aux_loss", "global_aux_loss", "seq_aux_loss", "none"),
            f"model.moe_load_balancing {m.moe_load_balancing!r} must be aux_loss, global_aux_loss, seq_aux_loss or none",
        )
    if parallel is None:
        return
    tp, pp = parallel.tensor_model_parallel_size, parallel.pipeline_model_parallel_size
    for key, num in (("num_attention_heads", m.num_attention_heads), ("num_query_groups", m.num_query_groups)):
        _check(num % tp == 0, f"model.{key} {num} is not divisible by parallel.tensor_model_parallel_size {tp}")
    _check(
        m.vocab_size % tp == 0,
        f"model.vocab_size {m.vocab_size} is not divisible by parallel.tensor_model_parallel_size {tp}",
    )
    stages = pp * (parallel.virtual_pipeline_model_parallel_size or 1)
    _check(
        m.num_layers % stages == 0,
        f"model.num_layers {m.num_layers} is not divisible into {stages} pipeline stages "
        f"(parallel.pipeline_model_parallel_size {pp} x virtual_pipeline_model_parallel_size "
        f"{parallel.virtual_pipeline_model_parallel_size or 1})",
    )
    if parallel.virtual_pipeline_model_parallel_size is not None:
        _check(pp > 1, "parallel.virtual_pipeline_model_parallel_size needs pipeline_model_parallel_size > 1")
    ep = parallel.expert_model_parallel_size
    if m.num_experts is None:
        _check(ep == 1, f"parallel.expert_model_parallel_size {ep} needs an MoE model (model.num_experts is null)")
    else:
        _check(
            m.num_experts % ep == 0,
            f"model.num_experts {m.num_experts} is not divisible by parallel.expert_model_parallel_size {ep}",
        )
    if parallel.sequence_parallel:
        _check(tp > 1, "parallel.sequence_parallel needs tensor_model_parallel_size > 1")
    if m.num_experts is not None and tp > 1:
        _check(
            parallel.sequence_parallel,
            f"an MoE model with parallel.tensor_model_parallel_size {tp} needs parallel.sequence_parallel=true "
            "(megatron-core's MoE layers train with TP only under sequence parallelism)",
        )
    _check(
        parallel.moe_token_dispatcher_type in ("allgather", "alltoall"),
        f"parallel.moe_token_dispatcher_type {parallel.moe_token_dispatcher_type!r} must be allgather or alltoall",
    )
    if parallel.overlap_param_gather:
        _check(parallel.use_distributed_optimizer, "parallel.overlap_param_gather needs parallel.use_distributed_optimizer=true")
    if parallel.gradient_accumulation_fusion:
        from qwenpt.models.builder import gradient_accumulation_fusion_available

        _check(
            gradient_accumulation_fusion_available(),
            "parallel.gradient_accumulation_fusion needs a GPU with Transformer Engine or apex "
            "(fused_weight_gradient_mlp_cuda); set it to false here",
        )
    _check(
        parallel.recompute_granularity in (None, "selective", "full"),
        f"parallel.recompute_granularity {parallel.recompute_granularity!r} must be null, selective or full",
    )


FP8_FORMATS = ("hybrid", "e4m3")
FP8_RECIPES = {"delayed": (8, 9), "tensorwise": (8, 9), "blockwise": (9, 0), "mxfp8": (10, 0)}  # minimum GPU


def validate_fp8(t: Any) -> None:
    """train.fp8: a known format and recipe, bf16 underneath, and a GPU with Transformer Engine that has FP8."""
    _check(t.fp8_recipe in FP8_RECIPES, f"train.fp8_recipe {t.fp8_recipe!r} must be one of {', '.join(FP8_RECIPES)}")
    if t.fp8 is None:
        return
    _check(t.fp8 in FP8_FORMATS, f"train.fp8 {t.fp8!r} must be null (off), hybrid or e4m3")
    _check(t.precision in ("auto", "bf16"), f"train.fp8={t.fp8} runs on top of bf16; set train.precision=bf16, not {t.precision}")
    import torch

    _check(
        torch.cuda.is_available(),
        f"train.fp8={t.fp8} needs an NVIDIA GPU (FP8 GEMMs are Transformer Engine kernels) and this machine has none; "
        "set train.fp8=null",
    )
    from qwenpt.models.builder import use_transformer_engine

    _check(
        use_transformer_engine(),
        f"train.fp8={t.fp8} needs Transformer Engine, which does not import here; install it "
        "(pip install -e '.[gpu]', or scripts/gpu_setup.sh on a machine without network) or set train.fp8=null",
    )
    need, have = FP8_RECIPES[t.fp8_recipe], torch.cuda.get_device_capability()
    _check(
        have >= need,
        f"train.fp8_recipe={t.fp8_recipe} needs compute capability {need[0]}.{need[1]} or newer; "
        f"{torch.cuda.get_device_name()} has {have[0]}.{have[1]} (FP8 needs Ada/Hopper, mxfp8 Blackwell); "
        "set train.fp8=null",
    )


def describe_layout(parallel: Any, dp: int, moe: bool) -> str:
    """'tp 2 (sp) x pp 2 (x2 virtual) x cp 1 x dp 1, experts ep 2 x etp 1, alltoall', as the logs say it."""
    p = parallel
    text = (
        f"tp {p.tensor_model_parallel_size}{' (sp)' if p.sequence_parallel else ''} x "
        f"pp {p.pipeline_model_parallel_size}"
        f"{f' (x{p.virtual_pipeline_model_parallel_size} virtual)' if p.virtual_pipeline_model_parallel_size else ''}"
        f" x cp {p.context_parallel_size} x dp {dp}"
    )
    if moe:
        etp = p.expert_tensor_parallel_size or p.tensor_model_parallel_size
        text += f", experts ep {p.expert_model_parallel_size} x etp {etp}, {p.moe_token_dispatcher_type}"
    if p.use_distributed_optimizer:
        text += ", distributed optimizer"
    if p.recompute_granularity:
        text += f", {p.recompute_granularity} recompute"
    return text


def data_parallel_size(parallel: Any, world_size: int) -> int:
    model_parallel = (
        parallel.tensor_model_parallel_size * parallel.pipeline_model_parallel_size * parallel.context_parallel_size
    )
    _check(
        world_size % model_parallel == 0,
        f"world size {world_size} is not divisible by tensor x pipeline x context parallel sizes "
        f"({parallel.tensor_model_parallel_size} x {parallel.pipeline_model_parallel_size} x "
        f"{parallel.context_parallel_size} = {model_parallel})",
    )
    return world_size // model_parallel


def _unknown_keys(node: Any, path: str = "") -> None:
    """Hydra's ``+group.key=value`` adds keys the schema lacks, bypassing its struct check: refuse them."""
    schema = OmegaConf.get_type(node) if isinstance(node, DictConfig) else None
    if schema is None or not dataclasses.is_dataclass(schema):
        return
    known = {f.name for f in dataclasses.fields(schema)}
    for key in node.keys():
        name = f"{path}{key}"
        _check(
            key in known,
            f"{name} is not a setting (a typo, or `+{name}=...` adding a key the schema lacks); "
            f"{path.rstrip('.') or 'the config'} has: {', '.join(sorted(known))}",
        )
        child = node._get_node(key)
        if isinstance(child, DictConfig):
            _unknown_keys(child, f"{name}.")
        elif isinstance(child, ListConfig) and not child._is_none():
            for i, item in enumerate(child):
                if isinstance(item, DictConfig):
                    _unknown_keys(item, f"{name}[{i}].")


def schema_keys(schema: type = Config, prefix: str = "") -> list[str]:
    """Every dotted key of the schema, sections (``train.guard``) and settings (``train.guard.spike_factor``):
    what a command-line override may name, and what a misspelt one is matched against."""
    keys = []
    for f in dataclasses.fields(schema):
        keys.append(f"{prefix}{f.name}")
        nested = f.default_factory
        if isinstance(nested, type) and dataclasses.is_dataclass(nested):
            keys.extend(schema_keys(nested, f"{prefix}{f.name}."))
    return keys


def check_override_keys(overrides: list[str], conf_dir: str | Path) -> None:
    """Refuse ``key=value`` overrides that name no setting, suggesting the closest, before Hydra composes:
    Hydra's own error advises ``+key=...``, which would add the typo as a new key. ``+``/``++``/``~``
    overrides (:func:`_unknown_keys` checks what ``+`` adds), config-group choices (``model=tiny``: a
    folder of ``conf_dir``), ``hydra.*``, flags and anything Hydra cannot parse are left to Hydra."""
    import difflib

    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import OverrideType

    keys = schema_keys()
    sections = {key.rsplit(".", 1)[0] for key in keys if "." in key}
    parser = OverridesParser.create()
    problems = []
    for arg in overrides:
        if arg.startswith("-") or "=" not in arg:
            continue
        try:
            override = parser.parse_override(arg)
        except Exception:  # Hydra reports its own syntax errors
            continue
        key = override.key_or_group
        if (override.type != OverrideType.CHANGE or override.package is not None or key in keys
                or key.split(".")[0] == "hydra" or (Path(conf_dir) / key).is_dir()):
            continue
        parts = key.split(".")
        if any(".".join(parts[:i]) in keys and ".".join(parts[:i]) not in sections for i in range(1, len(parts))):
            continue  # inside a dict or list setting (data.sample_weights.en): Hydra checks it
        close = difflib.get_close_matches(key, keys, n=3, cutoff=0.6)
        hint = (f"closest: {', '.join(close)}" if close
                else f"settings live under {', '.join(f'{k}.*' for k in keys if '.' not in k and k in sections)}")
        problems.append(f"{key} is not a setting ({hint}; all of them: qwenpt/config.py)")
    _check(not problems, "\n".join(problems))


def _validate_document_mask(d: Any, p: Any) -> None:
    if d.reset_position_ids is not None:
        _check(
            d.reset_position_ids == d.document_mask,
            f"data.reset_position_ids={d.reset_position_ids} with data.document_mask={d.document_mask} is not supported: "
            "megatron-core's packed-sequence RoPE restarts positions exactly where documents are masked, and without "
            "it RoPE positions are the sequence index; leave data.reset_position_ids unset (null)",
        )
    if not d.document_mask:
        return
    _check(
        p.context_parallel_size == 1 or p.expert_model_parallel_size == 1 or p.moe_token_dispatcher_type != "allgather",
        f"data.document_mask with parallel.context_parallel_size {p.context_parallel_size} and expert_model_parallel_size "
        f"{p.expert_model_parallel_size} needs parallel.moe_token_dispatcher_type=alltoall: under CP each document is "
        "padded to a multiple of 2 x CP tokens, so expert-parallel ranks hold different token counts, which the "
        "allgather dispatcher cannot gather (or set data.document_mask=false)",
    )


def _validate_init_from(c: Any) -> None:
    """checkpoint.init_optimizer / previous_stage (a context-extension stage, qwenpt/training/extend.py)."""
    if c.init_optimizer:
        _check(c.init_from is not None, "checkpoint.init_optimizer=true takes the optimizer state of checkpoint.init_from; "
                                        "set checkpoint.init_from (init_from_hf checkpoints hold no optimizer state)")
    if c.previous_stage is not None:
        _check(c.init_from is not None, "checkpoint.previous_stage is the run that writes checkpoint.init_from; set "
                                        "checkpoint.init_from to its checkpoints directory")


def _validate_guard(t: Any) -> None:
    g, w = t.guard, t.watchdog
    _check(g.nonfinite in ("stop", "skip"), f"train.guard.nonfinite {g.nonfinite!r} must be stop or skip")
    _check(g.max_skips_in_a_row >= 1, f"train.guard.max_skips_in_a_row must be at least 1, got {g.max_skips_in_a_row}")
    _check(g.spike_factor == 0 or g.spike_factor > 1, f"train.guard.spike_factor {g.spike_factor} must be 0 (off) or above 1")
    _check(g.spike_window >= 1, f"train.guard.spike_window must be at least 1, got {g.spike_window}")
    _check(g.spike_action in ("warn", "stop"), f"train.guard.spike_action {g.spike_action!r} must be warn or stop")
    if g.inject is not None:
        from qwenpt.training.guard import parse_injections

        parse_injections(g.inject)
    _check(w.factor >= 0 and w.min_s > 0, f"train.watchdog.factor {w.factor} must be >= 0 and min_s {w.min_s} positive")
    _check(w.collective_timeout_s > 0, f"train.watchdog.collective_timeout_s must be positive, got {w.collective_timeout_s}")


def validate(cfg: DictConfig | Config, world_size: int = 1, check_files: bool = True) -> None:
    """Check everything a run needs before any process group, model or dataset is created
    (``check_files=False``: not the data, tokenizer and checkpoint paths, as the planner runs away
    from the cluster's file systems)."""
    _unknown_keys(cfg)
    validate_model(cfg.model, cfg.parallel)
    p, t, o, d = cfg.parallel, cfg.train, cfg.optim, cfg.data
    dp = data_parallel_size(p, world_size)
    if cfg.model.num_experts is not None:
        etp = p.expert_tensor_parallel_size or p.tensor_model_parallel_size
        expert_world = etp * p.expert_model_parallel_size * p.pipeline_model_parallel_size
        _check(
            world_size % expert_world == 0,
            f"world size {world_size} is not divisible by expert_tensor_parallel x expert_model_parallel x "
            f"pipeline sizes ({expert_world})",
        )
    _check(t.micro_batch_size > 0, f"train.micro_batch_size must be positive, got {t.micro_batch_size}")
    _check(t.global_batch_size > 0, f"train.global_batch_size must be positive, got {t.global_batch_size}")
    _check(
        t.global_batch_size % (t.micro_batch_size * dp) == 0,
        f"train.global_batch_size {t.global_batch_size} is not divisible by train.micro_batch_size "
        f"{t.micro_batch_size} x data-parallel size {dp}",
    )
    _check(t.steps > 0, f"train.steps must be positive, got {t.steps}")
    _check(d.seq_length > 0, f"data.seq_length must be a positive number of tokens, got {d.seq_length}")
    for key, value in (("train.eval_interval", t.eval_interval), ("train.eval_steps", t.eval_steps),
                       ("logging.log_interval", cfg.logging.log_interval)):
        _check(value > 0, f"{key} must be a positive number of steps, got {value}")
    c = cfg.checkpoint
    _check(c.save_interval >= 0, f"checkpoint.save_interval must be a number of steps, or 0 for no periodic saves "
                                 f"(the last step is saved either way), got {c.save_interval}")
    _check(c.keep_last >= 0, f"checkpoint.keep_last must be a number of checkpoints, or 0 to keep all, got {c.keep_last}")
    _check(t.cpu_threads is None or t.cpu_threads > 0,
           f"train.cpu_threads must be a positive number of threads or null (torch's choice), got {t.cpu_threads}")
    horizon = cfg.data.sample_horizon
    _check(horizon is None or horizon > 0,
           f"data.sample_horizon must be a positive number of samples or null (one pass over the data), got {horizon}")
    _check(t.precision in ("auto", "fp32", "bf16"), f"train.precision {t.precision!r} must be auto, fp32 or bf16")
    validate_fp8(t)
    if t.exit_signal is not None:
        _check(
            isinstance(getattr(signal, t.exit_signal, None), signal.Signals),
            f"train.exit_signal {t.exit_signal!r} is not a signal name (e.g. SIGUSR1, SIGTERM); null disables it",
        )
    _check(
        d.seq_length <= cfg.model.max_position_embeddings,
        f"data.seq_length {d.seq_length} exceeds model.max_position_embeddings {cfg.model.max_position_embeddings}",
    )
    _check(
        d.seq_length % (2 * p.context_parallel_size) == 0,
        f"data.seq_length {d.seq_length} is not divisible by 2 x parallel.context_parallel_size "
        f"{p.context_parallel_size} (context parallelism splits each sequence into 2 x CP chunks)",
    )
    _validate_document_mask(d, p)
    from qwenpt.models import hybrid

    hybrid.validate_document_mask(cfg.model, d.document_mask, p)
    _check(
        not (d.document_mask and cfg.model.dual_chunk_attention.chunk_size is not None),
        "model.dual_chunk_attention evaluates whole sequences (documents attending across boundaries); "
        "set data.document_mask=false with it",
    )
    if p.sequence_parallel:
        _check(
            d.seq_length % p.tensor_model_parallel_size == 0,
            f"data.seq_length {d.seq_length} is not divisible by parallel.tensor_model_parallel_size "
            f"{p.tensor_model_parallel_size} (needed by sequence_parallel)",
        )
    _check(
        o.schedule in ("cosine", "wsd", "linear", "constant"),
        f"optim.schedule {o.schedule!r} must be cosine, wsd, linear or constant",
    )
    _check(0 <= o.min_lr <= o.lr, f"optim.min_lr {o.min_lr} must be between 0 and optim.lr {o.lr}")
    _check(
        0 <= o.warmup_steps < t.steps,
        f"optim.warmup_steps {o.warmup_steps} must be at least 0 and less than train.steps {t.steps} "
        "(the schedule warms up, then decays over the remaining steps); lower optim.warmup_steps or raise train.steps",
    )
    if o.schedule == "wsd":
        _check(0 < o.wsd_decay_fraction <= 1, f"optim.wsd_decay_fraction {o.wsd_decay_fraction} must be in (0, 1]")
        decay = int(round(o.wsd_decay_fraction * t.steps))
        _check(
            o.warmup_steps + decay <= t.steps,
            f"optim.warmup_steps {o.warmup_steps} + the WSD decay ({decay} steps = optim.wsd_decay_fraction "
            f"{o.wsd_decay_fraction} x train.steps {t.steps}) exceed train.steps {t.steps}",
        )
    _validate_guard(t)
    _check(t.eval_position_buckets >= 0, f"train.eval_position_buckets must be 0 (off) or more, got {t.eval_position_buckets}")
    from qwenpt.data import check_dataset, check_split, check_split_documents, max_token_id

    check_split(d.split, evaluates=t.eval_steps > 0)
    for i, entry in enumerate(d.blend):
        for ext in (".bin", ".idx") if check_files else ():
            path = Path(f"{entry.prefix}{ext}").expanduser()
            _check(
                path.is_file(),
                f"data.blend[{i}].prefix: {path} does not exist; build it with `python -m data_pipeline` "
                "or fix the path",
            )
        _check(entry.weight > 0, f"data.blend[{i}].weight must be positive, got {entry.weight}")
        if check_files:
            check_split_documents(f"data.blend[{i}].prefix", entry.prefix, check_dataset(entry.prefix), d.split)
            top = max_token_id(entry.prefix, d.cache_dir)
            _check(
                top < cfg.model.vocab_size,
                f"data.blend[{i}].prefix: {entry.prefix} holds token id {top}, but model.vocab_size is "
                f"{cfg.model.vocab_size}; it was tokenized with a larger vocabulary than this model's (re-tokenize "
                "it with the model's tokenizer, or pick the model it was made for)",
            )
    if d.sample_weights:
        from qwenpt.data import sample_languages

        _check(not d.blend, "data.sample_weights applies to the bundled sample only; with data.blend, set the blend weights")
        langs = sample_languages()
        for lang, w in d.sample_weights.items():
            _check(lang in langs, f"data.sample_weights: {lang!r} is not a language of the bundled sample ({', '.join(langs)})")
            _check(w > 0, f"data.sample_weights.{lang} must be positive, got {w}; leave the language out instead")
    if d.tokenizer is not None and str(d.tokenizer).lower() not in QWEN_TOKENIZERS and check_files:
        tok = Path(d.tokenizer).expanduser()
        _check(
            tok.is_file() or (tok / "tokenizer.json").is_file(),
            f"data.tokenizer: {tok} is neither a tokenizer.json nor a directory holding one, nor one of "
            f"{', '.join(QWEN_TOKENIZERS)}",
        )
    _check(
        cfg.checkpoint.optim_sharding in ("dp_reshardable", "fully_reshardable"),
        f"checkpoint.optim_sharding {cfg.checkpoint.optim_sharding!r} must be dp_reshardable or fully_reshardable",
    )
    if cfg.checkpoint.create_seed:
        _check(
            world_size == 1,
            f"checkpoint.create_seed initialises the whole model in one process; run it without torchrun "
            f"(world size is {world_size})",
        )
    if cfg.checkpoint.init_from_hf is not None:
        _check(cfg.checkpoint.init_from is None, "set checkpoint.init_from or checkpoint.init_from_hf, not both")
        if check_files:
            from qwenpt.convert.hf_io import model_config_from_hf, read_hf_config

            from qwenpt.models.size import head_dim

            hf = model_config_from_hf(read_hf_config(cfg.checkpoint.init_from_hf), cfg.model.name, cfg.model.family,
                                      source=str(Path(cfg.checkpoint.init_from_hf) / "config.json"))
            differ = [
                f"{k} {getattr(cfg.model, k)} vs {getattr(hf, k)}"
                for k in ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups",
                          "vocab_size", "tie_embeddings", "qkv_bias", "qk_layernorm", "num_experts",
                          "moe_ffn_hidden_size", "moe_router_topk", "moe_shared_expert_ffn_hidden_size")
                if getattr(cfg.model, k) != getattr(hf, k)
            ]
            if head_dim(cfg.model) != head_dim(hf):
                differ.append(f"head width (kv_channels) {head_dim(cfg.model)} vs {head_dim(hf)}")
            _check(not differ, f"checkpoint.init_from_hf: {cfg.checkpoint.init_from_hf} is not model={cfg.model.name} "
                               f"(model vs its config.json: {'; '.join(differ)}); pick the matching model config")
    _validate_init_from(cfg.checkpoint)
    if cfg.checkpoint.init_from is not None and cfg.checkpoint.previous_stage is None and check_files:
        src = Path(cfg.checkpoint.init_from).expanduser()
        _check(
            (src / "metadata.json").is_file() or (src / "latest").is_file() or any(src.glob("step_*/metadata.json")),
            f"checkpoint.init_from: {src} is neither a checkpoint (no metadata.json) nor a directory of checkpoints",
        )
    _check(
        cfg.logging.wandb.mode in ("offline", "online", "disabled"),
        f"logging.wandb.mode {cfg.logging.wandb.mode!r} must be offline, online or disabled",
    )


def to_container(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
