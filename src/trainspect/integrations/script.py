"""Zero-code attach: run an unmodified training script with trainspect attached (``trainspect run``).

Like ``python -m cProfile script.py``: the script runs as ``__main__`` with its own arguments, and
trainspect finds what to inspect through PyTorch's *global* hooks:

1. **discovery** (the script's first optimizer step, not recorded): global module forward hooks note the
   top-level modules called with gradients enabled (the model) and the loss modules
   (``torch.nn.modules.loss._Loss`` subclasses); the global optimizer pre-step hook names the optimizer.
   The model is the called module that owns the optimizer's parameters.
2. **attach**: the global module hooks are removed (they would cost a Python call per module call); an
   :class:`~trainspect.Inspector` is attached to that model, optimizer and loss, and a forward pre-hook on
   the model opens each step; the global optimizer hooks close it. A second forward before the optimizer
   step is a further micro-batch of the same step (gradient accumulation). A ``torch.amp.GradScaler``
   created by the script is used (unscaled gradients, skipped steps recorded).

Where it cannot tell what to inspect it refuses, says why, detaches, and lets the script run on:
two optimizers, no loss module (a functional loss such as ``F.cross_entropy``), several loss modules,
or an optimizer whose parameters belong to several separately called modules.
"""

from __future__ import annotations

import os
import runpy
import sys
import weakref
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainspect.engine.inspector import Inspector


class RefusedToAttach(RuntimeError):
    """trainspect cannot tell what the script trains (the message says why and what to do)."""


_ADVICE = ("attach trainspect in the script instead: trainspect.attach(model, optimizer, loss_fn) "
           "(see docs/integrations.md)")


def _describe(module: nn.Module) -> str:
    return type(module).__name__


class ScriptAttacher:
    """Finds the model, optimizer and loss of a running script through global hooks, then attaches.

    Args:
        attach_kwargs: passed to :class:`~trainspect.Inspector` (run_dir, instruments, checks, progress, ...).
        log: where the attach report and refusals go (default: ``sys.stderr``).
    """

    def __init__(self, log: Any = None, **attach_kwargs: Any):
        self.attach_kwargs = attach_kwargs
        self.log = log or sys.stderr
        self.inspector: Inspector | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.model: nn.Module | None = None
        self.loss_fn: nn.Module | None = None
        self.refusal: str | None = None
        self._global_handles: list[Any] = []
        self._discovery_handles: list[Any] = []
        self._model_handles: list[Any] = []
        self._depth = 0
        self._roots: dict[int, nn.Module] = {}  # top-level modules called with grad enabled (this step)
        self._losses: dict[int, nn.Module] = {}  # loss modules called (this step)
        self._scalers: list[weakref.ref] = []
        self._scaler_patch: tuple[type, Any, Any] | None = None
        self._pending_inputs: Any = None
        self._first_micro = False

    # -- install / remove -----------------------------------------------------------------------------
    def install(self) -> None:
        from torch.nn.modules import module as module_hooks
        from torch.optim import optimizer as optimizer_hooks

        self._global_handles = [
            optimizer_hooks.register_optimizer_step_pre_hook(self._on_optimizer_pre),
            optimizer_hooks.register_optimizer_step_post_hook(self._on_optimizer_post),
        ]
        self._discovery_handles = [
            module_hooks.register_module_forward_pre_hook(self._discover_pre),
            module_hooks.register_module_forward_hook(self._discover_post),
        ]
        self._patch_grad_scaler()

    def remove(self) -> None:
        for h in self._global_handles + self._discovery_handles + self._model_handles:
            h.remove()
        self._global_handles, self._discovery_handles, self._model_handles = [], [], []
        if self._scaler_patch is not None:
            cls, init, update = self._scaler_patch
            cls.__init__, cls.update = init, update
            self._scaler_patch = None

    def close(self, status: str = "finished") -> None:
        """Finish the run (and remove every hook)."""
        self.remove()
        if self.inspector is not None:
            if self.inspector.step_open:
                self.inspector.end_step(failed=status != "finished")
            if status != "finished":
                for sink in self.inspector.sinks:
                    self.inspector._safe(sink.write_meta, {"status": status}, source=f"sink:{type(sink).__name__}")
            self.inspector.close()

    def _patch_grad_scaler(self) -> None:
        """Remember the GradScalers the script creates; end the step after ``scaler.update()`` (skipped steps)."""
        cls = torch.amp.GradScaler
        init, update = cls.__init__, cls.update
        attacher = self

        def patched_init(scaler: Any, *args: Any, **kwargs: Any) -> None:
            init(scaler, *args, **kwargs)
            attacher._scalers.append(weakref.ref(scaler))

        def patched_update(scaler: Any, *args: Any, **kwargs: Any) -> Any:
            out = update(scaler, *args, **kwargs)
            if attacher.inspector is not None and attacher.inspector.step_open:
                attacher.inspector.end_step()  # a step the scaler skipped: no optimizer post-hook closed it
            return out

        cls.__init__, cls.update = patched_init, patched_update
        self._scaler_patch = (cls, init, update)

    # -- discovery --------------------------------------------------------------------------------------
    def _discover_pre(self, module: nn.Module, args: Any) -> None:
        if self._depth == 0 and torch.is_grad_enabled():
            if isinstance(module, nn.modules.loss._Loss):
                self._losses[id(module)] = module
            else:
                self._roots[id(module)] = module
        elif isinstance(module, nn.modules.loss._Loss) and torch.is_grad_enabled():
            self._losses[id(module)] = module
        self._depth += 1

    def _discover_post(self, module: nn.Module, args: Any, output: Any) -> None:
        self._depth = max(self._depth - 1, 0)

    def _refuse(self, reason: str) -> None:
        self.refusal = reason
        print(f"trainspect run: not attaching: {reason}; the script runs on without trainspect. {_ADVICE}",
              file=self.log)
        if self.inspector is not None:
            self.close(status="refused")
        self.remove()

    def _on_optimizer_pre(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if self.refusal is not None:
            return
        try:
            if self.optimizer is None:  # the first step: everything it called is known; record from the next
                self.optimizer = optimizer
                self._attach()
                return
            if optimizer is not self.optimizer:
                self._refuse(
                    f"two optimizers step in this script ({type(self.optimizer).__name__} and "
                    f"{type(optimizer).__name__}); trainspect cannot tell which one trains the model"
                )
                return
            if self.inspector is not None and self.inspector.step_open:
                self.inspector.gradients_ready()
        except RefusedToAttach as error:
            self._refuse(str(error))

    def _on_optimizer_post(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if self.refusal is not None or self.inspector is None or optimizer is not self.optimizer:
            return
        if self.inspector.step_open:
            self.inspector.optimizer_step_done()
            self.inspector.end_step()

    def _attach(self) -> None:
        """At the first optimizer step: decide model and loss from what that step called."""
        optimizer = self.optimizer
        assert optimizer is not None
        owned = {id(p) for group in optimizer.param_groups for p in group["params"]}
        candidates = [m for m in self._roots.values() if any(id(p) in owned for p in m.parameters())]
        if not candidates:
            raise RefusedToAttach(
                f"no module owning the {type(optimizer).__name__} optimizer's parameters was called with gradients "
                "enabled before optimizer.step()"
            )
        if len(candidates) > 1:
            names = ", ".join(_describe(m) for m in candidates)
            raise RefusedToAttach(
                f"the optimizer's parameters belong to several separately called modules ({names}); trainspect "
                "inspects one model"
            )
        if not self._losses:
            raise RefusedToAttach(
                "no loss module was called (a loss function such as F.cross_entropy cannot be seen; a loss module "
                "such as nn.CrossEntropyLoss() can)"
            )
        if len(self._losses) > 1:
            names = ", ".join(_describe(m) for m in self._losses.values())
            raise RefusedToAttach(f"several loss modules were called ({names}); trainspect cannot tell which one "
                                  "is the training loss")
        root = candidates[0]
        self.loss_fn = next(iter(self._losses.values()))
        for h in self._discovery_handles:  # from now on: hooks on the model and loss only
            h.remove()
        self._discovery_handles = []
        scalers = [s for s in (ref() for ref in self._scalers) if s is not None and s.is_enabled()]
        if len(scalers) > 1:
            raise RefusedToAttach(f"{len(scalers)} GradScalers were created; trainspect cannot tell which one is used")
        kwargs = dict(self.attach_kwargs)
        kwargs.setdefault("config", {})
        kwargs["config"] = {**kwargs["config"], "attached_by": "trainspect run", "script_argv": list(sys.argv)}
        self.inspector = Inspector(root, optimizer, self.loss_fn, optimizer_hooks=False,
                                   grad_scaler=scalers[0] if scalers else None, **kwargs)
        self.model = self.inspector.model
        self._model_handles = [
            root.register_forward_pre_hook(self._on_model_forward, with_kwargs=True),
            self.loss_fn.register_forward_hook(self._on_loss_forward),
        ]
        n = sum(p.numel() for p in self.inspector.params)
        where = f"; run stored in {self.inspector.run_dir}" if self.inspector.run_dir else ""
        print(
            f"trainspect run: attached to model {_describe(self.model)} ({n:,} trainable parameters in "
            f"{len(self.inspector.params)} tensors), optimizer {type(optimizer).__name__}, loss "
            f"{_describe(self.loss_fn)}(reduction={self.inspector.loss_reduction})"
            f"{', GradScaler' if scalers else ''}; recording from the next step on (the first step found them){where}",
            file=self.log,
        )

    # -- the steps ----------------------------------------------------------------------------------------
    def _on_model_forward(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        inspector = self.inspector
        if inspector is None or not torch.is_grad_enabled() or not module.training:
            return  # evaluation forwards are not training steps
        inputs = args[0] if len(args) == 1 and not kwargs else (kwargs if not args else (args, kwargs))
        if not inspector.step_open:
            inspector.begin_step(inputs, None)
            self._first_micro = True
        else:
            self._pending_inputs = inputs  # a further micro-batch; added with its targets at the loss
            self._first_micro = False

    def _on_loss_forward(self, module: nn.Module, args: Any, output: Any) -> None:
        inspector = self.inspector
        if inspector is None or not inspector.step_open or not torch.is_grad_enabled():
            return
        target = args[1] if len(args) > 1 else None
        ctx = inspector._ctx
        if self._first_micro or self._pending_inputs is None:
            ctx.set_targets(target)
        else:
            inspector.add_batch(self._pending_inputs, target)
        self._pending_inputs = None


def run_script(script: str | os.PathLike[str], argv: list[str], **attach_kwargs: Any) -> tuple[int, ScriptAttacher]:
    """Run ``script`` as ``__main__`` with ``argv`` and trainspect attached; returns (exit code, attacher)."""
    path = Path(script)
    if not path.is_file():
        raise FileNotFoundError(f"no such script: {path}")
    attacher = ScriptAttacher(**attach_kwargs)
    saved_argv, saved_path = list(sys.argv), list(sys.path)
    sys.argv = [str(path), *argv]
    sys.path.insert(0, str(path.resolve().parent))
    attacher.install()
    code = 0
    status = "finished"
    try:
        runpy.run_path(str(path), run_name="__main__")
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
        if code:
            status = "failed"
    except BaseException:
        status = "failed"
        attacher.close(status=status)
        raise
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path
    attacher.close(status=status)
    return code, attacher
