"""Validation at fixed steps: the blended validation loss, and optionally the loss of each source
(``train.eval_per_source``) and by position in the sequence (``train.eval_position_buckets``).

The loop asks :meth:`Evaluator.should_run` after each step and calls :meth:`Evaluator.run`, which logs one
``valid`` record (``metrics.jsonl``) and one line; evaluation runs the same forward step as training,
forward only, over ``train.eval_steps`` global batches.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any, Callable, Optional

import torch

from qwenpt import eval_positions
from qwenpt.metrics import MetricsLogger
from qwenpt.training.forward import forward_step, micro_batch_iterators, reduce_loss, reduce_sums
from qwenpt.training.watchdog import Watchdog

log = logging.getLogger("qwenpt")


class Evaluator:
    def __init__(self, cfg: Any, model: list, forward_backward: Callable, num_micro: int, device: torch.device,
                 valid_ds: Any, source_valid: dict, metrics: MetricsLogger, watchdog: Watchdog, is_main: bool) -> None:
        self.cfg, self.model, self.forward_backward = cfg, model, forward_backward
        self.num_micro, self.device, self.valid_ds, self.source_valid = num_micro, device, valid_ds, source_valid
        self.metrics, self.watchdog, self.is_main = metrics, watchdog, is_main
        self.position_loss: Optional[list] = None

    def should_run(self, step: int) -> bool:
        """Every ``train.eval_interval`` steps and at the last step (step 0: before training starts)."""
        t = self.cfg.train
        return step % t.eval_interval == 0 or step == t.steps

    @torch.no_grad()
    def evaluate(self, dataset: Any = None, position_buckets: int = 0) -> float:
        """Mean per-token loss over ``train.eval_steps`` global batches of ``dataset`` (default: the
        blended validation set); with ``position_buckets``, also the mean per position bucket
        (:mod:`qwenpt.eval_positions`) in ``self.position_loss``."""
        t, d = self.cfg.train, self.cfg.data
        for chunk in self.model:
            chunk.eval()
        its = micro_batch_iterators(self.model, self.valid_ds if dataset is None else dataset, 0, t.micro_batch_size, 0,
                                    d.document_mask)
        buckets = (position_buckets, d.seq_length) if position_buckets else None
        total = []
        for _ in range(t.eval_steps):
            total += self.forward_backward(
                forward_step_func=partial(forward_step, self.device, document_mask=d.document_mask,
                                          position_buckets=buckets),
                data_iterator=its if len(its) > 1 else its[0],
                model=self.model if len(self.model) > 1 else self.model[0],
                num_microbatches=self.num_micro,
                seq_length=d.seq_length,
                micro_batch_size=t.micro_batch_size,
                forward_only=True,
            )
        for chunk in self.model:
            chunk.train()
        if buckets:
            sums = reduce_sums(total, self.device, eval_positions.KEY, 2 * position_buckets)
            self.position_loss = eval_positions.bucket_means(sums)
        return reduce_loss(total, self.device)[0]

    def run(self, step: int, consumed_samples: int) -> dict:
        """Evaluate at ``step`` (under the watchdog), log the record and its line; returns the record."""
        t, seq = self.cfg.train, self.cfg.data.seq_length
        with self.watchdog.watch(f"evaluation at step {step}", t.watchdog.collective_timeout_s):
            buckets = t.eval_position_buckets
            loss = self.evaluate(position_buckets=buckets)
            record = {"kind": "valid", "step": step, "loss": loss, "tokens": consumed_samples * seq}
            if buckets:
                record["position_loss"] = self.position_loss
            if self.source_valid:
                record["per_source"] = {name: self.evaluate(ds) for name, ds in self.source_valid.items()}
        self.metrics.log(record)
        if self.is_main:
            by_position = record.get("position_loss")
            log.info(
                f"step {step:>6}/{t.steps} | validation loss {loss:.4f}"
                + (" | by position " + " ".join("-" if v is None else f"{v:.2f}" for v in by_position) if by_position else "")
            )
        return record
