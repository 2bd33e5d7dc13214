"""PyTorch Lightning: ``Trainer(callbacks=[TrainspectCallback(...)])`` attaches trainspect to the run.

Needs the ``lightning`` extra (``pip install trainspect[lightning]``; ``pytorch_lightning`` works too).
What is measured where (see ``docs/integrations.md``):

- ``on_train_batch_start``: opens the optimizer step (the first micro-batch of an accumulation window) or
  adds the micro-batch to it (``accumulate_grad_batches`` > 1: all k·B samples belong to the step);
- ``on_before_backward``: the loss of each micro-batch (Lightning divides it by ``accumulate_grad_batches``;
  trainspect records the undivided loss of the whole step), unless a loss module of the LightningModule
  already reported it;
- ``on_before_optimizer_step``: the gradient phase. Lightning documents the gradients there as final:
  accumulated over the micro-batches, unscaled under AMP, not yet clipped, and all-reduced under DDP;
- ``on_train_batch_end`` after a step: the update phase (θ_{t+1}), then the step is recorded.

Lightning runs the closure (forward, backward) *inside* ``optimizer.step``, so the optimizer's own step
pre-hook would fire before the forward pass: the callback drives the phases itself (``optimizer_hooks=False``).
Only rank 0 writes the store; values are those of the global batch (see :mod:`trainspect.engine.distributed`).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from trainspect.engine.inspector import Inspector
from trainspect.engine.record import Sink, StepRecord

try:  # the unified package first, the standalone one otherwise
    import lightning.pytorch as pl
except ImportError:  # pragma: no cover - depends on what is installed
    try:
        import pytorch_lightning as pl  # type: ignore[no-redef]
    except ImportError as error:
        raise ImportError(
            "trainspect.integrations.lightning needs PyTorch Lightning: pip install 'trainspect[lightning]' "
            "(or pip install lightning)"
        ) from error


class LightningLoggerSink(Sink):
    """Forwards each step's scalar values to the Trainer's loggers as ``trainspect/<series>``."""

    def __init__(self, trainer: Any, prefix: str = "trainspect/"):
        self.trainer = trainer
        self.prefix = prefix

    def write_step(self, record: StepRecord) -> None:
        if not self.trainer.is_global_zero or not record.scalars:
            return
        metrics = {self.prefix + k: v for k, v in record.scalars.items()}
        for logger in self.trainer.loggers:
            logger.log_metrics(metrics, step=record.step)


def _split_batch(batch: Any) -> tuple[Any, Any]:
    """(inputs, targets) of a batch given as ``(x, y)``, ``[x, y]``, or anything else (inputs only)."""
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    return batch, None


class TrainspectCallback(pl.Callback):
    """Attach trainspect to a Lightning run (automatic optimization, one optimizer).

    Args:
        run_dir, instruments, checks, ...: as for :func:`trainspect.attach` (``**attach_kwargs``).
        loss_fn: the loss function, if per-sample instruments need to re-evaluate it. By default the
            LightningModule's own loss module is used when it has exactly one (e.g. ``self.loss_fn =
            nn.CrossEntropyLoss()``).
        log_to_lightning: also send the scalar values to the Trainer's loggers (``trainspect/<name>``).

    Attributes:
        inspector: the :class:`~trainspect.Inspector` (None before fit starts and after it ends).
    """

    def __init__(self, *, loss_fn: Any = None, log_to_lightning: bool = False, **attach_kwargs: Any):
        super().__init__()
        self.loss_fn = loss_fn
        self.log_to_lightning = log_to_lightning
        self.attach_kwargs = attach_kwargs
        self.inspector: Inspector | None = None
        self._stepped = False
        self._losses_before = 0

    # -- setup / teardown --------------------------------------------------------------------------
    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if not pl_module.automatic_optimization:
            warnings.warn("trainspect: TrainspectCallback supports automatic optimization only; not attached "
                          "(with manual optimization, use trainspect.attach in training_step)", stacklevel=2)
            return
        if len(trainer.optimizers) != 1:
            warnings.warn(f"trainspect: the LightningModule has {len(trainer.optimizers)} optimizers; "
                          "TrainspectCallback supports exactly one; not attached", stacklevel=2)
            return
        loss_fn = self.loss_fn
        if loss_fn is None:
            losses = [m for m in pl_module.modules() if isinstance(m, nn.modules.loss._Loss)]
            loss_fn = losses[0] if len(losses) == 1 else None
        kwargs = dict(self.attach_kwargs)
        kwargs.setdefault("progress", False)  # Lightning has its own progress bar
        if trainer.max_steps and trainer.max_steps > 0:
            kwargs.setdefault("total_steps", trainer.max_steps)
        if self.log_to_lightning:
            kwargs["sinks"] = [*kwargs.get("sinks", ()), LightningLoggerSink(trainer)]
        kwargs.setdefault("config", {})
        kwargs["config"] = {**kwargs["config"], "attached_by": "TrainspectCallback (Lightning)",
                            "accumulate_grad_batches": trainer.accumulate_grad_batches,
                            "gradient_clip_val": trainer.gradient_clip_val}
        self.inspector = Inspector(pl_module, trainer.optimizers[0], loss_fn, optimizer_hooks=False, **kwargs)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self._close()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self._close(failed=True)

    def _close(self, failed: bool = False) -> None:
        inspector, self.inspector = self.inspector, None
        if inspector is None:
            return
        if inspector.step_open:  # an accumulation window the epoch cut short: not an optimizer step
            inspector.end_step(failed=True)
        if failed:
            for sink in inspector.sinks:
                inspector._safe(sink.write_meta, {"status": "failed"}, source=f"sink:{type(sink).__name__}")
        inspector.close()

    # -- the step ------------------------------------------------------------------------------------
    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        inspector = self.inspector
        if inspector is None:
            return
        inputs, targets = _split_batch(batch)
        if not inspector.step_open:
            inspector.begin_step(inputs, targets)
            self._stepped = False
        else:
            inspector.add_batch(inputs, targets)
        ctx = inspector._ctx
        self._losses_before = ctx.num_micro_batches if ctx is not None else 0

    def on_before_backward(self, trainer: Any, pl_module: Any, loss: torch.Tensor) -> None:
        inspector = self.inspector
        if inspector is None or not inspector.step_open:
            return
        ctx = inspector._ctx
        if ctx is not None and ctx.num_micro_batches > self._losses_before:
            return  # the loss module already reported this micro-batch's loss
        # Lightning divides the loss by accumulate_grad_batches before backward; record the micro-batch's own
        inspector.set_loss(loss.detach() * trainer.accumulate_grad_batches)

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        inspector = self.inspector
        if inspector is None or not inspector.step_open:
            return
        inspector.gradients_ready()
        self._stepped = True

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        inspector = self.inspector
        if inspector is None or not inspector.step_open or not self._stepped:
            return  # a micro-batch of an accumulation window: the step goes on
        inspector.optimizer_step_done()
        inspector.end_step()
        self._stepped = False


__all__ = ["LightningLoggerSink", "TrainspectCallback"]
