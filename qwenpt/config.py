"""The run's configuration schema: typed dataclasses for Hydra, and the keys it knows.

Hydra checks types and unknown keys against these dataclasses; :func:`qwenpt.validation.validate` checks
what types cannot (divisibility of heads by TP, batch arithmetic, files that must exist), each concept
with its own checks, and raises :class:`ConfigError` naming the field — before anything is allocated.
This module imports nothing of qwenpt but the error type, so every module may import it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

from qwenpt.errors import ConfigError, check

__all__ = [  # ConfigError re-exported: the error of a bad configuration, raised where each field is checked
    "BlendEntry", "CheckpointConfig", "Config", "ConfigError", "DataConfig", "DualChunkConfig", "GuardConfig",
    "LoggingConfig", "ModelConfig", "OptimConfig", "ParallelConfig", "RopeScalingConfig", "TrainConfig",
    "WandbConfig", "WatchdogConfig", "check_override_keys", "check_unknown_keys", "register", "schema_keys",
    "to_container", "to_object",
    # the closed choices: Hydra refuses any other value at composition, naming the key and the choices
    "Fp8Format", "Fp8Recipe", "LoadBalancing", "NonfiniteAction", "OptimSharding", "Precision", "Recompute",
    "Schedule", "SpikeAction", "TokenDispatcher", "WandbMode", "WsdDecayStyle",
]


# Closed choices as StrEnums (OmegaConf validates them; a member equals its string, so code compares with "bf16")
class LoadBalancing(StrEnum):
    """megatron-core's moe_router_load_balancing_type."""

    aux_loss = "aux_loss"  # per micro-batch (Qwen1.5/2-MoE)
    global_aux_loss = "global_aux_loss"  # expert loads counted over the global batch (Qwen3-MoE)
    seq_aux_loss = "seq_aux_loss"
    none = "none"


class TokenDispatcher(StrEnum):
    allgather = "allgather"
    alltoall = "alltoall"


class Recompute(StrEnum):
    selective = "selective"
    full = "full"


class Schedule(StrEnum):
    cosine = "cosine"
    wsd = "wsd"
    linear = "linear"
    constant = "constant"


class WsdDecayStyle(StrEnum):
    linear = "linear"
    cosine = "cosine"
    exponential = "exponential"
    minus_sqrt = "minus_sqrt"


class NonfiniteAction(StrEnum):
    stop = "stop"
    skip = "skip"


class SpikeAction(StrEnum):
    warn = "warn"
    stop = "stop"


class Precision(StrEnum):
    auto = "auto"  # bf16 on a GPU, fp32 on the CPU
    fp32 = "fp32"
    bf16 = "bf16"


class Fp8Format(StrEnum):
    hybrid = "hybrid"  # e4m3 forward, e5m2 gradients
    e4m3 = "e4m3"


class Fp8Recipe(StrEnum):
    delayed = "delayed"
    tensorwise = "tensorwise"
    blockwise = "blockwise"
    mxfp8 = "mxfp8"  # Blackwell


class WandbMode(StrEnum):
    offline = "offline"
    online = "online"
    disabled = "disabled"


class OptimSharding(StrEnum):
    dp_reshardable = "dp_reshardable"
    fully_reshardable = "fully_reshardable"


@dataclass
class RopeScalingConfig:
    """YaRN RoPE scaling, as config.json's ``rope_scaling`` (see qwenpt/models/rope.py and docs/long-context.md#yarn)."""

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
    length (qwenpt/models/dca.py, docs/long-context.md#dual-chunk-attention); chunk_size null: off."""

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
    moe_load_balancing: LoadBalancing = LoadBalancing.aux_loss
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
    moe_token_dispatcher_type: TokenDispatcher = TokenDispatcher.allgather  # allgather | alltoall
    recompute_granularity: Optional[Recompute] = None  # null | selective | full
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
    # the EOD's loss (its label is the next document's first token) is masked; see docs/long-context.md#document-masking.
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
    schedule: Schedule = Schedule.cosine  # cosine | wsd | linear | constant
    warmup_steps: int = 100
    wsd_decay_fraction: float = 0.2  # WSD: share of steps in the final decay
    wsd_decay_style: WsdDecayStyle = WsdDecayStyle.linear  # linear | cosine | exponential | minus_sqrt


@dataclass
class GuardConfig:
    """Checks on every step's loss and grad norm (qwenpt/training/guard.py); see docs/checkpoints.md#failure-handling."""

    # a NaN/Inf loss or grad norm: stop (exit naming the step and the last good checkpoint; the update is
    # never applied) | skip (drop the step's update, count it, go on)
    nonfinite: NonfiniteAction = NonfiniteAction.stop
    max_skips_in_a_row: int = 3  # skip: stop when this many steps in a row were non-finite
    # a loss above spike_factor x the median of the last spike_window finite losses is a spike: logged,
    # or the run stops with spike_action=stop. 0 disables.
    spike_factor: float = 3.0
    spike_window: int = 50
    spike_action: SpikeAction = SpikeAction.warn  # warn | stop
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
    precision: Precision = Precision.auto  # auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16
    # FP8 GEMMs through Transformer Engine (GPU, compute capability >= 8.9) on top of bf16: null (off) |
    # hybrid (e4m3 forward, e5m2 gradients) | e4m3; recipe: delayed | tensorwise | blockwise | mxfp8 (Blackwell)
    fp8: Optional[Fp8Format] = None
    fp8_recipe: Fp8Recipe = Fp8Recipe.delayed
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
    mode: WandbMode = WandbMode.offline  # offline | online | disabled
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
    optim_sharding: OptimSharding = OptimSharding.dp_reshardable
    # Start from these weights (a checkpoint directory, or a checkpoints root: its latest) when the run
    # has no checkpoint of its own; any TP/PP/VPP/EP layout can read any other's. Weights only.
    init_from: Optional[str] = None
    # Start from Hugging Face weights (a Qwen/Qwen1.5/Qwen2/Qwen2.5/Qwen3 directory with config.json and
    # safetensors): converted once into <dir>/hf_import, then loaded like init_from, at any layout.
    init_from_hf: Optional[str] = None
    # With init_from: also take its optimizer state (Adam moments and step count), e.g. for a context-extension
    # stage (docs/long-context.md#context-extension-stages); the LR schedule, step counter and data order start afresh either way.
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


def check_unknown_keys(node: Any, path: str = "") -> None:
    """Hydra's ``+group.key=value`` adds keys the schema lacks, bypassing its struct check: refuse them."""
    schema = OmegaConf.get_type(node) if isinstance(node, DictConfig) else None
    if schema is None or not dataclasses.is_dataclass(schema):
        return
    known = {f.name for f in dataclasses.fields(schema)}
    for key in node.keys():
        name = f"{path}{key}"
        check(
            key in known,
            f"{name} is not a setting (a typo, or `+{name}=...` adding a key the schema lacks); "
            f"{path.rstrip('.') or 'the config'} has: {', '.join(sorted(known))}",
        )
        child = node._get_node(key)
        if isinstance(child, DictConfig):
            check_unknown_keys(child, f"{name}.")
        elif isinstance(child, ListConfig) and not child._is_none():
            for i, item in enumerate(child):
                if isinstance(item, DictConfig):
                    check_unknown_keys(item, f"{name}[{i}].")


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
    overrides (:func:`check_unknown_keys` checks what ``+`` adds), config-group choices (``model=tiny``: a
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
    check(not problems, "\n".join(problems))


def to_object(cfg: DictConfig) -> Config:
    """The composed (and validated) config as the schema's typed objects, interpolations resolved: what a run
    reads from then on (``qwenpt.validation.configure`` does both at each entry point)."""
    return OmegaConf.to_object(cfg)  # type: ignore[return-value]


def to_container(cfg: Any) -> dict:
    """The config as plain data (choices as their strings), resolved: what is logged, compared and saved."""
    node = cfg if isinstance(cfg, DictConfig) else OmegaConf.structured(cfg)
    return OmegaConf.to_container(node, resolve=True, enum_to_str=True)  # type: ignore[return-value]
