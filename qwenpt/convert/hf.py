"""Hugging Face Qwen checkpoints ⇄ megatron-core distributed checkpoints, and the logits check.

``import_hf`` reads a Hugging Face directory tensor by tensor (safetensors), converts one layer at a
time into megatron-core's layout at TP=PP=EP=1 and writes a dist checkpoint; dist_checkpointing
then loads it at any TP/PP/VPP/EP layout (``train.py checkpoint.init_from=...``), so no process per
rank and no GPU is needed. ``export_hf`` is the inverse, writing sharded safetensors, an index and
config.json. Peak memory is the model once in the chosen dtype plus one layer (see docs/models.md#hugging-face-checkpoints).
What differs between Hugging Face layouts (names, fused tensors, config.json) is each layout's module in
:mod:`qwenpt.convert.layouts`; this module only calls the model's :class:`~qwenpt.convert.layouts.base.Layout`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import resource
import time
from pathlib import Path
from typing import Any, Optional

import torch
import yaml
from omegaconf import OmegaConf

from qwenpt import checkpoint, distributed
from qwenpt.config import ConfigError, ModelConfig, ParallelConfig
from qwenpt.models.checks import validate_model
from qwenpt.convert import layouts
from qwenpt.convert.hf_io import (
    ShardedSafetensorsWriter,
    SafetensorsReader,
    copy_tokenizer,
    model_config_from_hf,
    read_hf_config,
)
from qwenpt.convert.output import check_output, replacing
from qwenpt.convert.stream import save_on_demand
from qwenpt.extras import require
from qwenpt.models.size import format_count
from qwenpt.models import build_model, rope

log = logging.getLogger("qwenpt.convert")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
VISION_PREFIXES = ("model.visual.",)  # the released Qwen3.5/3.6 checkpoints' vision tower, left alone
IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)  # buffers some checkpoints (Qwen v1's) carry; recomputed


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def hf_config_for(m: ModelConfig, dtype: torch.dtype) -> dict:
    """config.json of model config ``m`` in its layout, weights in ``dtype``."""
    cfg = layouts.for_model(m).hf_config(m)
    cfg["torch_dtype"] = str(dtype).removeprefix("torch.")
    return cfg


def _world_of_one(m: ModelConfig, dtype: torch.dtype, device: str = "cpu") -> torch.nn.Module:
    """The model at TP=PP=EP=1 in this one process (``device="meta"``: shapes only, no memory)."""
    if distributed.world_size_from_env() != 1:
        raise ConfigError("import and export run in one process (they need no process per rank); run them without torchrun")
    logging.getLogger("megatron.core").setLevel(logging.WARNING)
    distributed.initialize(ParallelConfig(), seed=0)
    with torch.device(device):
        return build_model(m, ParallelConfig(), dtype, perform_initialization=False)[0]


def model_config_of_checkpoint(ckpt: Path) -> ModelConfig:
    run_config = ckpt / "run_config.yaml"
    if not run_config.is_file():
        raise ConfigError(f"{ckpt} has no run_config.yaml: not a checkpoint written by qwenpt")
    fields = yaml.safe_load(run_config.read_text())["model"]
    fields["rope_scaling"] = rope.typed(fields.get("rope_scaling"))
    return ModelConfig(**fields)


def _stored_dtype(ckpt: Path) -> str:
    """The dtype the checkpoint holds its weights in (read from its metadata, no tensor loaded)."""
    from megatron.core import dist_checkpointing

    embedding = dist_checkpointing.load_tensors_metadata(str(ckpt))["embedding.word_embeddings.weight"]
    return str(embedding.dtype).removeprefix("torch.")


def _non_finite(t: torch.Tensor) -> int:
    """How many NaN/Inf values ``t`` holds (counted in chunks: no full-size mask of a large tensor)."""
    if not t.is_floating_point():
        return 0
    return sum(int(chunk.isfinite().logical_not().sum()) for chunk in t.reshape(-1).split(1 << 24))


def import_hf(hf_dir: str | Path, out: str | Path, *, name: Optional[str] = None, family: Optional[str] = None,
              dtype: Optional[str] = None, overwrite: bool = False) -> dict:
    """Convert a Hugging Face Qwen directory into a megatron-core dist checkpoint at ``out``, one
    tensor at a time: the model exists only on the meta device, and each parameter is read from the
    safetensors and converted when the writer reaches it (:mod:`qwenpt.convert.stream`). ``out`` is
    written as :mod:`qwenpt.convert.output` says (``overwrite``: replace an earlier import there)."""
    start = time.perf_counter()
    hf_dir, out = Path(hf_dir), Path(out)
    with replacing(out, "hf_import", inputs={"--hf": hf_dir}, overwrite=overwrite,
                   record={"from": str(hf_dir.resolve())}) as tmp:
        summary = _import_into(hf_dir, tmp, name, family, dtype)
    summary = {"checkpoint": str(out), **summary, "seconds": round(time.perf_counter() - start, 2)}
    log.info("imported %s (%s, %s parameters, %s) into %s in %.1f s, peak RSS %.2f GiB", hf_dir,
             summary["model"]["family"], format_count(summary["parameters"]), summary["dtype"], out,
             summary["seconds"], summary["peak_rss_gib"])
    return summary


def _import_into(hf_dir: Path, out: Path, name: Optional[str], family: Optional[str], dtype: Optional[str]) -> dict:
    """import_hf's conversion, into the empty folder ``out``; refuses non-finite weights once all are read."""
    cfg = read_hf_config(hf_dir)
    m = model_config_from_hf(cfg, name or hf_dir.name.lower(), family, source=str(hf_dir / "config.json"))
    validate_model(m)
    dtype = dtype or cfg.get("torch_dtype") or cfg.get("dtype") or "float32"
    if dtype not in DTYPES:
        raise ConfigError(f"dtype {dtype!r} must be one of {', '.join(DTYPES)}")
    reader = SafetensorsReader(hf_dir)
    layout = layouts.for_model(m)
    root = layout.hf_root(reader.keys())
    m = layout.complete(m, reader.keys())
    model = _world_of_one(m, DTYPES[dtype], device="meta")
    meta = {k: v for k, v in model.state_dict().items() if not k.endswith("_extra_state")}
    expected: dict[str, tuple] = {}  # checkpoint tensor -> the shape config.json's architecture needs
    for group in layout.groups(m):
        expected.update({k: tuple(t.shape) for k, t in layout.to_hf(meta, m, group, root).items()})
    # refuse a checkpoint that does not fit before writing anything
    unknown = reader.keys() - set(expected)
    vision = {k for k in unknown if k.startswith(VISION_PREFIXES)}
    if vision:
        log.info("%s: left alone %d vision tensors (model.visual.*): qwenpt trains the language model", hf_dir, len(vision))
        unknown -= vision
    if m.tie_embeddings:  # some tied checkpoints carry the tied copy too
        unknown.discard("lm_head.weight")
    unknown = {k for k in unknown if not k.endswith(IGNORED_SUFFIXES)}
    if unknown:
        raise ConfigError(f"{hf_dir}: {len(unknown)} tensors this model has no place for (nothing was written): "
                          f"{', '.join(sorted(unknown)[:20])}")
    missing = set(expected) - reader.keys()
    if missing:
        raise ConfigError(f"{hf_dir}: no tensor {', '.join(sorted(missing)[:20])} (nothing was written)")
    for key, shape in expected.items():
        got = reader.shape(key)
        if got != shape:
            raise ConfigError(f"{hf_dir}: tensor {key} has shape {list(got)}, but config.json's architecture "
                              f"needs {list(shape)} (nothing was written)")
    last: dict[str, torch.Tensor] = {}
    non_finite: dict[str, int] = {}  # tensor -> its NaN/Inf count, for those that hold any

    def get(key: str) -> torch.Tensor:  # keeps the last one: Qwen v1's c_attn serves q, k and v
        if key not in last:
            last.clear()
            last[key] = reader.get(key)
            if n := _non_finite(last[key]):
                non_finite[key] = n
        return last[key]

    run_config = OmegaConf.to_yaml({"model": dataclasses.asdict(m), "convert": {"from": str(hf_dir), "dtype": dtype}})
    save_on_demand(model, out, layout.megatron_params(m, get, root), DTYPES[dtype], run_config)
    if non_finite:
        named = ", ".join(f"{k} ({n})" for k, n in sorted(non_finite.items())[:5])
        raise ConfigError(f"{hf_dir}: {sum(non_finite.values())} non-finite values (NaN or Inf) in {len(non_finite)} "
                          f"tensors: {named}{', ...' if len(non_finite) > 5 else ''} (nothing was written); "
                          "the checkpoint is damaged: download or copy it again")
    return {"model": dataclasses.asdict(m), "parameters": sum(t.numel() for t in meta.values()),
            "tensors_read": len(expected), "dtype": dtype, "peak_rss_gib": round(_peak_rss_gib(), 3)}


def export_hf(ckpt: str | Path, out: str | Path, *, tokenizer: Optional[str | Path] = None,
              dtype: Optional[str] = None, max_shard_gib: float = 5.0, overwrite: bool = False) -> dict:
    """Write a megatron-core checkpoint (any layout, full or seed) as a Hugging Face directory. It
    loads the model once at TP=PP=1 (dist_checkpointing gathers any layout's shards), in the
    export dtype, then writes it shard by shard. ``out`` is written as :mod:`qwenpt.convert.output`
    says (``overwrite``: replace an earlier export there, whole: no old shard survives)."""
    start = time.perf_counter()
    check_output(out, "hf_export", {"--ckpt": ckpt}, overwrite)  # before the model is loaded
    source = ckpt
    ckpt = checkpoint.resolve(ckpt)
    m = model_config_of_checkpoint(ckpt)
    dtype = dtype or _stored_dtype(ckpt)
    if dtype not in DTYPES:
        raise ConfigError(f"dtype {dtype!r} must be one of {', '.join(DTYPES)}")
    model = _world_of_one(m, DTYPES[dtype])  # loading casts the stored weights to it
    checkpoint.load_model(ckpt, [model])
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("_extra_state")}
    layout = layouts.for_model(m)
    with replacing(out, "hf_export", inputs={"--ckpt": source}, overwrite=overwrite,
                   record={"from": str(ckpt.resolve())}) as tmp:
        writer = ShardedSafetensorsWriter(tmp, int(max_shard_gib * 1024**3))
        for group in layout.groups(m):
            writer.add(layout.to_hf(state, m, group, "model."))
        files = writer.close()
        (tmp / "config.json").write_text(json.dumps(hf_config_for(m, DTYPES[dtype]), indent=2) + "\n")
        copied = copy_tokenizer(tokenizer, tmp) if tokenizer else []
    summary = {"out": str(out), "files": files, "tokenizer_files": copied, "bytes": writer.total_bytes,
               "dtype": dtype, "seconds": round(time.perf_counter() - start, 2), "peak_rss_gib": round(_peak_rss_gib(), 3)}
    log.info("exported %s to %s: %d files, %.2f GB %s, in %.1f s", ckpt, out, len(files), writer.total_bytes / 1e9,
             dtype, summary["seconds"])
    return summary


def _require_transformers() -> Any:
    """transformers, or the one-line MissingExtra: only verify needs it, not import or export."""
    return require("transformers", "hf", "python -m qwenpt.convert verify (the Hugging Face reference model)")


def hf_reference_model(hf_dir: str | Path, m: ModelConfig) -> torch.nn.Module:
    """The transformers model of ``hf_dir`` in fp32, as its layout builds it (Qwen v1, whose code is remote:
    the equivalent Qwen2 model built from its converted tensors)."""
    transformers = _require_transformers()
    reader = functools.cache(lambda: SafetensorsReader(hf_dir))  # opened only by a layout that reads tensors
    return layouts.for_model(m).reference_model(transformers, Path(hf_dir), m, lambda key: reader().get(key))


def megatron_logits(model: list, tokens: torch.Tensor) -> Optional[torch.Tensor]:
    """Full-vocabulary fp32 logits [b, s, V] of megatron model chunks at any TP/PP layout; on the
    last pipeline stage (None elsewhere). Runs the pipeline schedule forward only."""
    from functools import partial

    from megatron.core import parallel_state
    from megatron.core.pipeline_parallel import get_forward_backward_func
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    b, s = tokens.shape
    device = next(model[0].parameters()).device  # the GPU on a GPU machine
    tokens = tokens.to(device)
    positions = torch.arange(s, device=device).unsqueeze(0).expand(b, s)

    def forward_step(data_iterator: Any, chunk: torch.nn.Module):
        out = chunk(tokens if chunk.pre_process else None, positions, None)
        return out, partial(lambda o, non_loss_data=False: o)

    outputs = get_forward_backward_func()(
        forward_step_func=forward_step, data_iterator=[None] * len(model) if len(model) > 1 else None,
        model=model if len(model) > 1 else model[0], num_microbatches=1, seq_length=s, micro_batch_size=b,
        forward_only=True, collect_non_loss_data=True,
    )
    if not parallel_state.is_pipeline_last_stage(ignore_virtual=True):
        return None
    logits = outputs[-1]  # [b, s, V/TP]
    return gather_from_tensor_model_parallel_region(logits.float()).cpu()


def verify(hf_dir: str | Path, ckpt: str | Path, parallel: ParallelConfig, *, batch: int = 2, seq: int = 32, seed: int = 0) -> Optional[dict]:
    """Max |logit difference| between transformers on ``hf_dir`` and the megatron checkpoint at the
    layout ``parallel`` (one process per rank under torchrun); the dict on the last stage's first rank."""
    from megatron.core import parallel_state

    _require_transformers()  # before any model is built: the comparison needs it at the end
    ckpt = checkpoint.resolve(ckpt)
    # logits only: transformers has no MTP layer to compare, and megatron-core's MTP needs labels
    m = dataclasses.replace(model_config_of_checkpoint(ckpt), mtp_num_layers=0)
    validate_model(m, parallel)
    logging.getLogger("megatron.core").setLevel(logging.WARNING)
    distributed.initialize(parallel, seed=seed)
    model = build_model(m, parallel, torch.float32, perform_initialization=False)
    checkpoint.load_model(ckpt, model)
    for chunk in model:
        chunk.eval()
    tokens = torch.randint(0, m.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        ours = megatron_logits(model, tokens)
    if ours is None or parallel_state.get_tensor_model_parallel_rank() != 0 or parallel_state.get_data_parallel_rank() != 0:
        return None
    with torch.no_grad():
        reference = hf_reference_model(hf_dir, m)(tokens).logits.float()
    diff = (ours - reference).abs()
    return {"max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()), "tokens": batch * seq,
            "logit_scale": float(reference.abs().max()), "model": m.name,
            "layout": {"tp": parallel.tensor_model_parallel_size, "pp": parallel.pipeline_model_parallel_size,
                       "ep": parallel.expert_model_parallel_size}}
