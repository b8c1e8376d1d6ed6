"""The pretraining loop: megatron-core schedules, DDP, optimizer, eval, metrics and checkpoints."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any, Optional

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
from megatron.core.pipeline_parallel import get_forward_backward_func
from megatron.core.transformer.module import Float16Module
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from qwenpt import checkpoint, distributed
from qwenpt.config import Config, ConfigError, to_container
from qwenpt.distributed import describe_layout
from qwenpt.validation import configure
from qwenpt.data import (build_datasets, build_source_valid_sets, dataset_config, load_tokenizer, resolve_blend,
                         sample_horizon)
from qwenpt.flops import peak_tflops, training_flops_per_token
from qwenpt.logs import configure_training_logs
from qwenpt.metrics import MetricsLogger, StepWindow
from qwenpt.models import build_model, param_counts, use_transformer_engine
from qwenpt.models.size import format_count
from qwenpt.training.evaluation import Evaluator
from qwenpt.training.forward import forward_step, micro_batch_iterators, reduce_loss
from qwenpt.training.checkpointing import Checkpoints
from qwenpt.training.guard import Guard, TrainingHalted
from qwenpt.training.optim import build_optimizer, build_scheduler
from qwenpt.training import extend, mtp, run_folder
from qwenpt.training.resume import select_checkpoint
from qwenpt.training.watchdog import Watchdog

log = logging.getLogger("qwenpt")


def resolve_dtype(precision: str) -> torch.dtype:
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    return {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]


_UNASKED = object()


class StopRequest:
    """A request to checkpoint and exit: a signal on any rank, or the stop file (checked by rank 0).
    Every rank learns of it at the same step boundary (one small all-reduce per step, which also
    carries the guard's verdict)."""

    def __init__(self, signal_name: Optional[str], stop_file: Optional[str], device: torch.device, is_main: bool) -> None:
        self.received: Optional[str] = None
        self._reason: Any = _UNASKED
        self.device = device
        self.stop_file = Path(stop_file) if stop_file and is_main else None
        # SIGTERM (a scheduler's stop, `kill`) too: the step ends, a checkpoint is saved; a second one ends at once
        for name in {signal_name, "SIGTERM"} - {None}:
            signal.signal(getattr(signal, name), self._on_signal)
        if self.stop_file is not None and self.stop_file.exists():
            log.warning("removing a stop file left by an earlier run: %s", self.stop_file)
            self.stop_file.unlink()

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.received is not None and signum == signal.SIGTERM:
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)
        self.received = signal.Signals(signum).name

    def exchange(self, nonfinite: bool) -> bool:
        """The step's one all-reduce: every rank learns of a stop request and whether any rank saw a
        non-finite loss or grad norm (so all take the guard's decision together); returns the latter."""
        local = 0
        if self.received is not None:
            local = 1
        elif self.stop_file is not None and self.stop_file.exists():
            local = 2
        flag = torch.tensor([local, int(nonfinite)], dtype=torch.int32, device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        reason, nonfinite = flag.tolist()  # one read-back for both
        self._reason = {0: None, 1: f"signal {self.received or 'on another rank'}", 2: "stop file"}[reason]
        return bool(nonfinite)

    def requested(self) -> Optional[str]:
        """The reason to stop, known on every rank; None to go on (from this step's exchange)."""
        if self._reason is _UNASKED:  # the optimizer returned before the guard's exchange (fp16 overflow)
            self.exchange(False)
        reason, self._reason = self._reason, _UNASKED
        return reason

    def clear(self) -> None:
        if self.stop_file is not None:
            self.stop_file.unlink(missing_ok=True)


def wrap_ddp(chunks: list, parallel: Any) -> list[DistributedDataParallel]:
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True,
        overlap_grad_reduce=parallel.overlap_grad_reduce,
        overlap_param_gather=parallel.overlap_param_gather,
        use_distributed_optimizer=parallel.use_distributed_optimizer,
    )
    # bf16: megatron-core's Float16Module casts the chunk to bf16 and its logits/loss back to fp32
    # (as Megatron-LM does); the optimizer keeps fp32 main parameters, DDP fp32 main gradients
    model = [
        DistributedDataParallel(
            config=chunk.config, ddp_config=ddp_config,
            module=Float16Module(chunk.config, chunk) if chunk.config.bf16 else chunk, disable_bucketing=i > 0,
        )
        for i, chunk in enumerate(chunks)
    ]
    for chunk in model:
        chunk.broadcast_params()  # identical start on every data-parallel replica
    return model


_TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK", "MASTER_ADDR",
                 "MASTER_PORT", "TORCHELASTIC_RUN_ID", "GROUP_WORLD_SIZE", "ROLE_WORLD_SIZE")


class Trainer:
    """One run: set up from a validated, typed config (``qwenpt.validation.configure``), then :meth:`fit`."""

    def __init__(self, cfg: Config) -> None:
        configure_training_logs()
        # rank 0 checks and locks the run folder before anything is written into it (or anywhere)
        self.folder = _claim(cfg)
        self.cfg = cfg
        if cfg.train.cpu_threads is not None:  # before any work: torch's pool is sized on first use
            torch.set_num_threads(cfg.train.cpu_threads)
        self.rt = distributed.initialize(cfg.parallel, cfg.train.seed, timeout_s=cfg.train.watchdog.collective_timeout_s)
        if not self.rt.is_main:
            logging.getLogger().setLevel(logging.WARNING)
        t, d = cfg.train, cfg.data
        self.dtype = resolve_dtype(t.precision)
        self.run_dir = Path(t.run_dir)
        self.ckpt_dir = Path(cfg.checkpoint.dir) if cfg.checkpoint.dir else self.run_dir / "checkpoints"
        # before any dataset or model: a damaged checkpoint or a changed config is answered at once
        self.resume_from = select_checkpoint(cfg, self.ckpt_dir, self.rt.is_main)

        self.tokenizer = load_tokenizer(d, cfg.model.vocab_size)
        if self.tokenizer.vocab_size > cfg.model.vocab_size:
            raise ConfigError(
                f"model.vocab_size {cfg.model.vocab_size} is smaller than the tokenizer's vocabulary "
                f"{self.tokenizer.vocab_size} ({self.tokenizer.path})"
            )
        self.dp = parallel_state.get_data_parallel_world_size()
        self.num_micro = t.global_batch_size // (t.micro_batch_size * self.dp)
        self.blend = resolve_blend(d, self.tokenizer)
        ds_config = dataset_config(d, self.tokenizer, self.blend, t.seed)
        # the training index: a size independent of train.steps, so extending a run continues its stream
        saved = checkpoint.sample_horizon(self.resume_from) if self.resume_from else None
        self.horizon, horizon_note = sample_horizon(d, self.blend, t.steps * t.global_batch_size, saved)
        if horizon_note and self.rt.is_main:
            log.warning(horizon_note)
        self.train_ds, self.valid_ds, _ = build_datasets(
            ds_config, [self.horizon, t.eval_steps * t.global_batch_size, 0]
        )
        self.source_valid = (
            build_source_valid_sets(ds_config, self.blend, t.eval_steps * t.global_batch_size) if t.eval_per_source else {}
        )

        chunks = build_model(cfg.model, cfg.parallel, self.dtype, fp8=t.fp8, fp8_recipe=t.fp8_recipe)
        self.model = wrap_ddp(chunks, cfg.parallel)
        self.optimizer = build_optimizer(cfg.optim, cfg.parallel, self.model, self.dtype)
        self.scheduler = build_scheduler(cfg.optim, t.steps, self.optimizer, override=cfg.checkpoint.override_schedule)
        self.mcfg = mcfg = chunks[0].config
        mcfg.no_sync_func = [c.no_sync for c in self.model] if len(self.model) > 1 else self.model[0].no_sync
        mcfg.grad_scale_func = self.optimizer.scale_loss
        # packed micro-batches travel between pipeline stages as [t, 1, hidden] with t set by the documents'
        # padding under CP: megatron-core's schedules then send each tensor's shape first
        mcfg.variable_seq_lengths = bool(d.document_mask) and cfg.parallel.pipeline_model_parallel_size > 1
        self.forward_backward = get_forward_backward_func()

        self.step, self.consumed = 0, 0
        if self.resume_from is not None:
            progress = checkpoint.load(self.resume_from, self.model, self.optimizer, self.scheduler)
            self.step, self.consumed = progress["step"], progress["consumed_samples"]
            log.info("resumed from %s at step %d (%d samples consumed)", self.resume_from, self.step, self.consumed)
        elif cfg.checkpoint.init_from is not None or cfg.checkpoint.init_from_hf is not None:
            if cfg.checkpoint.previous_stage is not None:  # run it first (qwenpt/training/extend.py)
                extend.run_previous_stage(cfg, self.rt.is_main, _TORCHRUN_ENV)
            init = cfg.checkpoint.init_from or self._import_hf(cfg.checkpoint.init_from_hf)
            source = extend.initialise(cfg, init, self.model, self.optimizer, self.scheduler)
            log.info("initialised weights from %s", source)

        self.stop = StopRequest(t.exit_signal, t.stop_file, self.rt.device, self.rt.is_main)
        self.watchdog = Watchdog(t.watchdog, self.rt.rank, self.run_dir)
        self.checkpoints = Checkpoints(cfg, self.ckpt_dir, self.resume_from, self.rt.is_main, self.watchdog)
        self.guard = Guard(t.guard, self.optimizer, self.stop.exchange, self.checkpoints.protect_last_good)
        self.forward_step = partial(forward_step, self.rt.device, document_mask=d.document_mask)
        mcfg.finalize_model_grads_func = finalize_model_grads
        if self.guard.injections:  # test-only faults (train.guard.inject), wrapped in once here
            self.forward_step, mcfg.finalize_model_grads_func = self.guard.with_injections(
                self.forward_step, finalize_model_grads, self.model, lambda: self.step + 1, self.rt.rank)
        counts = param_counts(cfg.model)
        self.metrics = MetricsLogger(
            self.run_dir, cfg.logging.wandb, to_container(cfg), enabled=self.rt.is_main, resume_step=self.step
        )
        self.window = StepWindow(t.global_batch_size * d.seq_length, training_flops_per_token(cfg.model, d.seq_length),
                                 self.rt.world_size, peak_tflops(t.peak_tflops))
        self.evaluator = Evaluator(cfg, self.model, self.forward_backward, self.num_micro, self.rt.device,
                                   self.valid_ds, self.source_valid, self.metrics, self.watchdog, self.rt.is_main)
        if self.rt.is_main:
            log.info(
                "model %s: %s parameters (%s non-embedding, %s active), %s, %s attention, dtype %s",
                cfg.model.name, format_count(counts.total), format_count(counts.non_embedding),
                format_count(counts.active),
                "CPU (gloo)" if self.rt.cpu else "GPU",
                "Transformer Engine" if use_transformer_engine() else "SDPA", str(self.dtype).removeprefix("torch."),
            )
            log.info(
                "world %d = %s; global batch %d = micro %d x %d micro-batches x dp %d; "
                "%d tokens/step; data: %d sources, %d train / %d valid samples of %d tokens (training order: an index "
                "of %d samples, the same for any train.steps up to it); %d CPU threads",
                self.rt.world_size, describe_layout(cfg.parallel, self.dp, cfg.model.num_experts is not None),
                t.global_batch_size, t.micro_batch_size, self.num_micro, self.dp,
                t.global_batch_size * d.seq_length, len(self.blend.prefixes), len(self.train_ds),
                len(self.valid_ds), d.seq_length, self.horizon, torch.get_num_threads(),
            )

    def _import_hf(self, hf_dir: str) -> Path:
        """Convert the HF weights once (rank 0, in its own process: a world of one), for every rank."""
        target = self.ckpt_dir / "hf_import"
        if self.rt.is_main and not (target / "metadata.json").is_file():
            cmd = [sys.executable, "-m", "qwenpt.convert", "import", "--hf", str(hf_dir), "--out", str(target),
                   "--name", self.cfg.model.name, "--family", self.cfg.model.family]
            env = {k: v for k, v in os.environ.items() if k not in _TORCHRUN_ENV}
            log.info("converting %s for this run: %s", hf_dir, " ".join(cmd))
            proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            if proc.returncode != 0:
                raise ConfigError(f"checkpoint.init_from_hf: converting {hf_dir} failed:\n{proc.stdout[-3000:]}")
        dist.barrier()
        return target

    def train_iterators(self) -> list:
        """The training micro-batches from the samples consumed so far on, one iterator per model chunk."""
        return micro_batch_iterators(self.model, self.train_ds, self.consumed, self.cfg.train.micro_batch_size,
                          self.cfg.data.num_workers, self.cfg.data.document_mask)

    def train_step(self, iterators: list) -> tuple[float, int, float]:
        """One step; the update is applied only when the guard finds loss and grad norm finite on every rank."""
        for chunk in self.model:
            chunk.zero_grad_buffer()
        self.optimizer.zero_grad()
        losses = self.forward_backward(
            forward_step_func=self.forward_step,
            data_iterator=iterators if len(iterators) > 1 else iterators[0],
            model=self.model if len(self.model) > 1 else self.model[0],
            num_microbatches=self.num_micro,
            seq_length=self.cfg.data.seq_length,
            micro_batch_size=self.cfg.train.micro_batch_size,
            forward_only=False,
        )
        # the loss is read before the update (the same single host sync as before, now ahead of the step)
        loss, tokens = reduce_loss(losses, self.rt.device)
        if self.cfg.model.mtp_num_layers:
            self.mtp_loss = mtp.step_loss(self.cfg.model.mtp_num_layers, self.num_micro, self.rt.device)
        self.guard.begin(loss)
        self.scheduler.step(increment=1)  # step k applies lr(k): warmup reaches the peak at k = warmup
        _, grad_norm, _ = self.optimizer.step()  # the guard's gate decides whether it updates
        return loss, tokens, float(grad_norm) if grad_norm is not None else math.nan

    def save(self) -> None:
        self.checkpoints.save(self.step, self.model, self.optimizer, self.scheduler,
                              {"consumed_samples": self.consumed, "sample_horizon": self.horizon})

    def fit(self) -> dict:
        cfg, t = self.cfg, self.cfg.train
        if self.step >= t.steps:
            log.info("already at step %d of %d: training is complete", self.step, t.steps)
            return {"step": self.step}
        if self.folder is not None:
            self.folder.record(cfg)
        # a bar only on a terminal: in a file its carriage returns are noise (the step lines give progress);
        # while it is shown, log lines are written above it
        bar = tqdm(
            total=t.steps, initial=self.step, desc="train", unit="step", dynamic_ncols=True,
            disable=not (self.rt.is_main and cfg.logging.progress and sys.stderr.isatty()),
        )
        with bar, logging_redirect_tqdm() if not bar.disable else contextlib.nullcontext():
            return self._train(bar)

    def _train(self, bar: tqdm) -> dict:
        cfg, t = self.cfg, self.cfg.train
        iterators = self.train_iterators()
        if self.step == 0 and self.evaluator.should_run(0):
            self.evaluator.run(self.step, self.consumed)
        last = {}
        while self.step < t.steps:
            start = time.perf_counter()
            with self.watchdog.watch(f"train step {self.step + 1}"):
                loss, tokens, grad_norm = self.train_step(iterators)
            elapsed = time.perf_counter() - start
            self.step += 1
            self.consumed += t.global_batch_size  # a skipped step's batch is consumed too
            skipped = self.guard.end(self.step, self.checkpoints.last_good)
            self.checkpoints.poll()
            throughput = self.window.add(loss, elapsed, skipped)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{throughput['tokens_per_s']:,.0f}")
            last = {
                "kind": "train", "step": self.step, "loss": loss, "lr": self.scheduler.get_lr(self.optimizer.param_groups[0]),
                "grad_norm": grad_norm, "tokens": self.consumed * cfg.data.seq_length, "step_time_s": elapsed,
                **throughput,
            }
            if cfg.model.mtp_num_layers:  # each MTP layer's loss (its weight is in the gradient, not here)
                last["mtp_loss"] = self.mtp_loss
            if skipped:
                last["skipped"] = True
            self.metrics.log(last)
            if self.step % cfg.logging.log_interval == 0 and self.rt.is_main:
                log.info(self.window.line(self.step, t.steps, last["lr"], grad_norm, last.get("mtp_loss")))
            if self.evaluator.should_run(self.step):
                self.evaluator.run(self.step, self.consumed)
            saved = self.checkpoints.due(self.step)
            if saved:
                self.save()
            reason = self.stop.requested() if self.step < t.steps else None
            if reason is not None:
                if not saved:
                    self.save()
                self.stop.clear()
                bar.close()
                log.info(
                    "stopped at step %d of %d on request (%s): checkpoint saved; the same command resumes",
                    self.step, t.steps, reason,
                )
                return dict(last, stopped=reason)
        bar.close()
        return last

    def close(self, failed: bool = False) -> None:
        """Publish a checkpoint still being written (``failed``: an error that may have left the ranks
        out of step, so leave it unpublished: resume takes the previous one), then stop the watchdog."""
        try:
            self.checkpoints.close(abort=failed)
        finally:
            self.watchdog.close()
            self.metrics.close()
            if self.folder is not None:
                self.folder.release()


def _claim(cfg: Config) -> Optional[run_folder.RunFolder]:
    """The run folder, checked and locked by global rank 0 (None on the other ranks)."""
    if int(os.environ.get("RANK", "0")) != 0:
        return None
    return run_folder.claim(cfg.train.run_dir, cfg, run_folder.hydra_overrides())


def create_seed(cfg: Config) -> Path:
    """Initialise the model once, in one process, and save its weights for runs in any layout."""
    _claim(cfg)
    distributed.initialize(cfg.parallel, cfg.train.seed)
    chunks = build_model(cfg.model, cfg.parallel, resolve_dtype(cfg.train.precision))
    root = Path(cfg.checkpoint.dir) if cfg.checkpoint.dir else Path(cfg.train.run_dir) / "checkpoints"
    path = checkpoint.save_model(root / "seed", chunks, run_config=OmegaConf.to_yaml(cfg, resolve=True))
    log.info(
        "seed checkpoint of %s (%s parameters) written to %s; start runs in any layout with "
        "checkpoint.init_from=%s", cfg.model.name, format_count(param_counts(cfg.model).total), path, path,
    )
    return path


def run(composed: DictConfig) -> dict:
    """Train as Hydra composed it (validated, then typed); returns the last step's train metrics."""
    configure_training_logs()  # before validation reads the datasets' indexes
    cfg = configure(composed, distributed.world_size_from_env())
    if cfg.checkpoint.create_seed:
        return {"seed_checkpoint": str(create_seed(cfg))}
    trainer = Trainer(cfg)
    failed = True
    try:
        result = trainer.fit()
        failed = False
        return result
    except TrainingHalted:
        failed = False  # every rank halts at the same step: the save in flight can be published
        raise
    finally:
        trainer.close(failed)
