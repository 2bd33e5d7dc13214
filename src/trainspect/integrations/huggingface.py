"""Hugging Face ``transformers``: ``Trainer(..., callbacks=[TrainspectCallback(...)])`` attaches trainspect.

Needs the ``huggingface`` extra (``pip install trainspect[huggingface]``). What is measured where:

- ``on_step_begin`` (first micro-batch of an optimizer step) opens the step; a forward pre-hook on the model
  adds each training micro-batch (``gradient_accumulation_steps`` > 1: all k·B samples belong to the step)
  and a forward hook reads each micro-batch's ``outputs.loss``. The step's loss is HF's own: the mean of
  the micro-batch losses, or their sum when the model normalizes by ``num_items_in_batch`` (then each
  micro-batch loss is already a share of the whole step's).
- **Gradients before clipping.** HF clips (``max_grad_norm``) *before* ``on_pre_optimizer_step``, so the
  gradients the callback sees there are clipped. When clipping is on, a ``register_post_accumulate_grad_hook``
  on each parameter keeps a copy of the accumulated gradient as backward leaves it (before clipping);
  the gradient instruments read that copy (the parameters' ``.grad`` are put back untouched before the
  optimizer steps). Exceptions, measured *after* clipping at ``on_pre_optimizer_step`` and noted in the
  run's config (``gradients_measured``): under ``torch.distributed`` (the hook would see this rank's
  gradient before DDP averages it) and with ``fp16`` (the hook would see gradients still multiplied by
  the loss scale).
- ``on_optimizer_step`` (parameters updated, gradients not yet zeroed): the update phase; the step is
  recorded there.
- transformers older than 4.41 lack ``on_pre_optimizer_step``/``on_optimizer_step``: the optimizer's own
  step hooks are used instead (gradients after clipping) and the step is recorded at ``on_step_end``.

Only the world process zero writes the store (``state.is_world_process_zero``, as trainspect's rank 0).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from trainspect.engine import distributed as _dist
from trainspect.engine.inspector import Inspector

try:
    from transformers import TrainerCallback
except ImportError as error:  # pragma: no cover - depends on what is installed
    raise ImportError(
        "trainspect.integrations.huggingface needs transformers: pip install 'trainspect[huggingface]'"
    ) from error

#: transformers ≥ 4.41 calls these around optimizer.step(); older versions do not (feature-detected)
HAS_OPTIMIZER_EVENTS = hasattr(TrainerCallback, "on_pre_optimizer_step") and hasattr(
    TrainerCallback, "on_optimizer_step"
)


def _unwrap_optimizer(optimizer: Any) -> torch.optim.Optimizer | None:
    """accelerate's ``AcceleratedOptimizer`` (and similar wrappers) keep the torch optimizer in ``.optimizer``."""
    seen = 0
    while optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer) and seen < 5:
        optimizer = getattr(optimizer, "optimizer", None)
        seen += 1
    return optimizer if isinstance(optimizer, torch.optim.Optimizer) else None


def _output_loss(output: Any) -> torch.Tensor | None:
    loss = None
    if isinstance(output, dict):
        loss = output.get("loss")
    elif hasattr(output, "loss"):
        loss = output.loss
    elif isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        loss = output[0]
    if isinstance(loss, torch.Tensor) and loss.numel() == 1:
        return loss
    return None


class TrainspectCallback(TrainerCallback):
    """Attach trainspect to a ``transformers.Trainer`` run.

    Args:
        run_dir, instruments, checks, ...: as for :func:`trainspect.attach` (``**attach_kwargs``).
        loss_fn: the loss as a function of (model output, labels), if per-sample instruments need to
            re-evaluate it (HF models compute their loss inside ``forward``).
        preclip_gradients: measure gradients before clipping with tensor hooks (see the module docstring).

    Attributes:
        inspector: the :class:`~trainspect.Inspector` (None outside ``trainer.train()``).
    """

    def __init__(self, *, loss_fn: Any = None, preclip_gradients: bool = True, **attach_kwargs: Any):
        self.loss_fn = loss_fn
        self.preclip_gradients = preclip_gradients
        self.attach_kwargs = attach_kwargs
        self.inspector: Inspector | None = None
        self._handles: list[Any] = []
        self._snapshot: dict[int, torch.Tensor] = {}
        self._snapshot_armed = False
        self._use_snapshot = False
        self._micro_losses: list[torch.Tensor] = []
        self._loss_is_share = False  # the model normalized its loss by num_items_in_batch

    # -- setup / teardown --------------------------------------------------------------------------
    def on_train_begin(self, args: Any, state: Any, control: Any, model: nn.Module | None = None,
                       optimizer: Any = None, **kwargs: Any) -> None:
        if model is None:
            raise ValueError("trainspect TrainspectCallback: the Trainer passed no model to on_train_begin")
        torch_optimizer = _unwrap_optimizer(optimizer)
        model = getattr(model, "module", model)
        distributed = _dist.world_size() > 1
        self._use_snapshot = (self.preclip_gradients and HAS_OPTIMIZER_EVENTS and (args.max_grad_norm or 0) > 0
                              and not distributed and not getattr(args, "fp16", False))
        if self._use_snapshot or (args.max_grad_norm or 0) <= 0:
            measured = "before clipping" if (args.max_grad_norm or 0) > 0 else "no clipping"
        else:
            measured = "after clipping (max_grad_norm)"
        kwargs_ = dict(self.attach_kwargs)
        kwargs_.setdefault("progress", False)
        if state.max_steps and state.max_steps > 0:
            kwargs_.setdefault("total_steps", state.max_steps)
        kwargs_.setdefault("config", {})
        kwargs_["config"] = {**kwargs_["config"], "attached_by": "TrainspectCallback (transformers)",
                             "gradient_accumulation_steps": args.gradient_accumulation_steps,
                             "max_grad_norm": args.max_grad_norm, "gradients_measured": measured}
        self.inspector = Inspector(model, torch_optimizer, self.loss_fn, optimizer_hooks=not HAS_OPTIMIZER_EVENTS,
                                   **kwargs_)
        # the step's loss comes from `outputs.loss` (HF's own semantics): the engine must not also pick up loss
        # modules that a model may call inside its forward
        self.inspector._attached_loss_seen = True
        self._handles = [
            model.register_forward_pre_hook(self._on_forward_pre, with_kwargs=True),
            model.register_forward_hook(self._on_forward, with_kwargs=True),
        ]
        if self._use_snapshot:
            for i, p in enumerate(self.inspector.params):
                self._handles.append(p.register_post_accumulate_grad_hook(self._snapshot_hook(i)))

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        inspector, self.inspector = self.inspector, None
        if inspector is not None:
            if inspector.step_open:
                inspector.end_step(failed=True)  # a window training stopped in the middle of
            inspector.close()

    # -- capture -----------------------------------------------------------------------------------
    def _snapshot_hook(self, index: int) -> Any:
        def hook(param: torch.Tensor) -> None:
            if self._snapshot_armed and param.grad is not None:
                self._snapshot[index] = param.grad.detach().clone()  # the accumulated gradient, before clipping
        return hook

    def _training_forward(self, module: nn.Module) -> bool:
        return self.inspector is not None and self.inspector.step_open and module.training and torch.is_grad_enabled()

    def _on_forward_pre(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if not self._training_forward(module):
            return
        if kwargs.get("num_items_in_batch") is not None:
            self._loss_is_share = True
        batch = {k: v for k, v in kwargs.items() if k != "num_items_in_batch"} if kwargs else None
        inputs = batch if batch else (args[0] if len(args) == 1 else args)
        labels = batch.get("labels") if batch else None
        self.inspector.add_batch(inputs, labels)

    def _on_forward(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        if not self._training_forward(module):
            return
        loss = _output_loss(output)
        if loss is None:
            return
        if HAS_OPTIMIZER_EVENTS:
            self._micro_losses.append(loss.detach())
        else:
            self.inspector.set_loss(loss.detach())

    # -- the step ------------------------------------------------------------------------------------
    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        inspector = self.inspector
        if inspector is None:
            return
        if inspector.step_open:  # the previous step never reached the optimizer
            inspector.end_step(failed=True)
        ctx = inspector.begin_step()
        self._micro_losses = []
        self._loss_is_share = False
        self._snapshot.clear()
        self._snapshot_armed = self._use_snapshot and "grads" in ctx.needed_providers

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        inspector = self.inspector
        if inspector is None or not inspector.step_open:
            return
        if self._micro_losses:  # HF's own step loss: Σ shares, or the mean of per-micro-batch means
            losses = torch.stack([loss.to(torch.float64).reshape(()) for loss in self._micro_losses])
            inspector.set_loss(losses.sum() if self._loss_is_share else losses.mean())
        swapped: list[tuple[torch.Tensor, Any]] = []
        if self._snapshot_armed:
            # let the gradient instruments read the gradients as backward left them (before HF clipped them);
            # the clipped ones go back before optimizer.step(), as the very same tensors
            for i, p in enumerate(inspector.params):
                snap = self._snapshot.get(i)
                if snap is not None and p.grad is not None:
                    swapped.append((p, p.grad))
                    p.grad = snap
        try:
            inspector.gradients_ready()
        finally:
            for p, clipped in swapped:
                p.grad = clipped
            self._snapshot.clear()
            self._snapshot_armed = False

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        inspector = self.inspector
        if inspector is None or not inspector.step_open:
            return
        inspector.optimizer_step_done()
        inspector.end_step()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        inspector = self.inspector
        if inspector is not None and inspector.step_open and not HAS_OPTIMIZER_EVENTS:
            inspector.end_step()  # older transformers: the optimizer's own hooks ran the phases


__all__ = ["HAS_OPTIMIZER_EVENTS", "TrainspectCallback"]
