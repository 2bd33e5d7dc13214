"""The inspector: attaches to a training loop and runs instruments, checks and sinks on each step.

One step, as data (see ``docs/design.md``):

1. **plan** (``with inspector.step(...)`` entered): ask each instrument's schedule whether it is due, collect
   the providers they need, arm only those (nothing due → nothing armed → near-zero cost);
2. **capture**: the user's forward and backward run; armed hooks record what providers need;
3. **gradient phase** (block exit, or the optimizer's pre-step hook if that comes first): instruments that
   need θ_t and the gradients compute; providers that need θ_t before the update take it;
4. **update phase** (optimizer post-step hook): instruments that need θ_{t+1} compute;
5. **finish**: values become NumPy, checks observe them, sinks (store, terminal) write them.

Nothing here may break the user's training: an instrument, provider or check that raises is recorded once
with its traceback, disabled, and training continues.
"""

from __future__ import annotations

import math
import platform
import sys
import time
import traceback as tb
import warnings
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from trainspect.checks import CHECKS, Check, Finding, FindingsBook
from trainspect.configurations import resolve_instruments
from trainspect.engine import distributed as _dist
from trainspect.engine.context import CheckFacts, NotAvailable, StepContext
from trainspect.engine.record import HistogramValue, Sink, StepRecord
from trainspect.engine.schedules import Every, Schedule, ScheduleLike
from trainspect.engine.values import Curve, Histogram, Histogram2d, SeriesInfo, to_numpy
from trainspect.instruments import Instrument
from trainspect.instruments.base import SCHEDULE_EPOCH
from trainspect.providers import PROVIDERS, Provider

_REDUCTIONS = ("mean", "sum")


class _StepScope:
    """The ``with inspector.step(inputs, targets) as step:`` block."""

    def __init__(self, inspector: Inspector, inputs: Any, targets: Any):
        self.inspector = inspector
        self.inputs = inputs
        self.targets = targets
        self.ctx: StepContext | None = None

    def __enter__(self) -> _StepScope:
        self.ctx = self.inspector._begin(self.inputs, self.targets)
        return self

    def __exit__(self, exc_type: Any, exc: Any, traceback: Any) -> None:
        self.inspector._end_block(failed=exc_type is not None)

    @property
    def step(self) -> int:
        return self.ctx.step if self.ctx is not None else -1

    @property
    def loss(self) -> torch.Tensor | None:
        return None if self.ctx is None else self.ctx.loss

    @loss.setter
    def loss(self, value: torch.Tensor) -> None:
        """Tell the inspector the step's loss (needed when the loss is a plain function, not a module)."""
        self.inspector._set_loss(value)

    def add_batch(self, inputs: Any, targets: Any = None) -> None:
        """Gradient accumulation: add one more micro-batch to this optimizer step (see ``Inspector.add_batch``)."""
        self.inspector.add_batch(inputs, targets)


class Inspector:
    """A debugger attached to one training loop. Create it with :func:`trainspect.attach`.

    Args:
        model: the model being trained (not wrapped or modified; hooks are added only on due steps).
        optimizer: any ``torch.optim.Optimizer``; its step hooks let instruments see the update.
        loss_fn: the loss; an ``nn.Module`` loss is observed automatically (value, reduction, inputs),
            a plain function needs ``step.loss = loss`` or calling ``inspector.loss_fn(output, target)``.
        run_dir: the run folder (the store ``trainspect.db`` goes there); None: ``runs/<time>-<model>``.
        instruments: a configuration name (``"default"``, ``"cheap"``, ...), a list of names or instances,
            or ``{name: schedule}``.
        schedule: overrides every instrument's schedule (positive int interval or callable step -> bool).
        checks: ``"default"`` (every registered check), ``None``/``[]``, or a list of names or instances.
        loss_reduction: ``"mean"`` or ``"sum"`` for a plain-function loss (read from a module loss).
        progress: ``"auto"`` (live terminal panel if stdout is a terminal), ``True`` or ``False``.
        total_steps: expected number of steps, for the progress bar's ETA.
        overwrite: replace a run already in ``run_dir``.
        store: write the run store: True (automatic: a writer process commits each step when a CPU core is
            left over by torch's threads, else commits in this process), ``"process"``, ``"sync"`` (commits
            in this process), False (nothing written). Under ``torch.distributed`` only rank 0 writes (and shows
            progress), whatever this says.
        sinks: further sinks (e.g. TensorBoard).
        config: user hyper-parameters to record with the run.
        optimizer_hooks: register step hooks on ``optimizer`` (False: an integration drives the phases with
            :meth:`gradients_ready` / :meth:`optimizer_step_done`, e.g. Lightning's closure-based step, whose
            optimizer pre-hook fires *before* the forward pass).
        grad_scaler: the ``torch.amp.GradScaler`` of a mixed-precision loop: gradients are then measured after
            ``scaler.step`` unscaled them (never scaled), and steps the scaler skipped (inf/NaN gradients)
            are recorded as such (``optimizer_stepped`` false, series ``amp_step_skipped``, ``loss_scale``).
        curvature_batch: the data the curvature instruments (Hessian eigenvalues, trace, sharpness, TIC's
            curvature diagonal) evaluate the loss on. ``None`` (default): each measured step's own batch.
            ``(inputs, targets)``: that fixed batch at every measurement, as edge-of-stability studies
            measure sharpness on a fixed subset (Cohen et al. 2021): the curve then shows how θ changes, not
            which batch came, and the Lanczos warm start from the previous measurement works far better (on
            the digits MLP and CNN the median products to 1e-3 drop from 4.5/3.5 to 3/2,
            ``benchmarks/curvature.py``). ``"first"``: a copy of the first step's batch that the inspector
            sees. The loss slices stay on the step's batch (they show where the step landed), and TIC
            combines the step's per-sample gradients with the curvature diagonal of this batch.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        loss_fn: Callable[..., torch.Tensor] | None = None,
        *,
        run_dir: str | Path | None = None,
        instruments: str | Iterable[Any] | Mapping[str, ScheduleLike] | None = "default",
        schedule: ScheduleLike = None,
        checks: str | Iterable[Any] | None = "default",
        loss_reduction: str | None = None,
        progress: bool | str = "auto",
        total_steps: int | None = None,
        overwrite: bool = False,
        store: bool | str = True,
        sinks: Iterable[Sink] = (),
        config: Mapping[str, Any] | None = None,
        name: str | None = None,
        optimizer_hooks: bool = True,
        grad_scaler: Any = None,
        curvature_batch: tuple[Any, Any] | str | None = None,
    ):
        if not isinstance(model, nn.Module):
            raise TypeError(f"trainspect.attach: model must be a torch.nn.Module, got {type(model).__name__}")
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(
                f"trainspect.attach: optimizer must be a torch.optim.Optimizer or None, got {type(optimizer).__name__}"
            )
        if loss_fn is not None and not callable(loss_fn):
            raise TypeError(f"trainspect.attach: loss_fn must be callable, got {type(loss_fn).__name__}")
        # DDP / DataParallel wrap the model: track the wrapped module (its own parameter names, and a model
        # that providers can re-evaluate without triggering the wrapper's gradient synchronization)
        self.wrapper: nn.Module | None = None
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            self.wrapper, model = model, model.module
        self.model = model
        self.optimizer = optimizer
        self._user_loss_fn = loss_fn
        self.name = name

        # -- tracked parameters: trainable ones, each once (tied weights are one tensor) -------------
        module_of: dict[int, tuple[str, nn.Module]] = {}
        for mod_name, module in model.named_modules():
            for p in module.parameters(recurse=False):
                module_of.setdefault(id(p), (mod_name, module))
        self.params: list[nn.Parameter] = []
        self.param_names: list[str] = []
        self.layers: list[dict[str, Any]] = []
        for pname, p in model.named_parameters():
            if not p.requires_grad:
                continue
            mod_name, module = module_of.get(id(p), ("", model))
            self.params.append(p)
            self.param_names.append(pname)
            self.layers.append(
                {"name": pname, "module": mod_name, "module_class": type(module).__name__,
                 "shape": list(p.shape), "numel": p.numel()}
            )
        if not self.params:
            raise ValueError(
                f"trainspect.attach: the model {type(model).__name__} has no trainable parameters "
                "(none with requires_grad=True); there is nothing to inspect"
            )

        # -- loss reduction ------------------------------------------------------------------------------
        reduction = loss_reduction
        if reduction is None:
            reduction = getattr(loss_fn, "reduction", "mean") if isinstance(loss_fn, nn.Module) else "mean"
        if reduction not in _REDUCTIONS:
            raise ValueError(
                f"trainspect.attach: loss reduction must be 'mean' or 'sum', got {reduction!r}; a loss with "
                "reduction='none' is not a scalar: reduce it (mean or sum) before backward"
            )
        self.loss_reduction: str = reduction

        # -- instruments, providers, checks ---------------------------------------------------------
        self.instruments: list[Instrument] = resolve_instruments(instruments, schedule)
        self.checks: list[Check] = self._resolve_checks(checks)
        have = {i.name for i in self.instruments}
        for check in self.checks:
            for inst_name, sched in check.instruments.items():
                if inst_name not in have:
                    self.instruments.extend(resolve_instruments({inst_name: sched}))
                    have.add(inst_name)
        self._providers: dict[str, Provider] = {}
        # (needed providers, those with arm / disarm / before_update hooks), per set of due instruments
        self._plans: dict[tuple[int, ...], tuple[set[str], list[str], list[str], list[str]]] = {}
        #: the due lists of `_scheduled`'s phase cache (kept alive there, so their ids are stable) and their plans
        self._cached_due: dict[int, list[Instrument]] = {}
        self._plan_of_list: dict[int, tuple[list[Instrument], tuple[Any, ...]]] = {}
        self._disabled: set[str] = set()
        self._series_seen: set[str] = set()
        self._findings = FindingsBook()
        # records waiting for the deferrable checks, with what they may read of their step (CheckFacts): observed
        # CHECK_BATCH at a time
        self._deferred: list[tuple[StepRecord, int | None, dict[str, Any], list[int] | None]] = []
        self._check_facts = CheckFacts(self)
        self.errors: list[dict[str, Any]] = []

        # -- sinks -----------------------------------------------------------------------------------
        self.sinks: list[Sink] = []
        self.store = None
        self.run_dir: Path | None = None
        # distributed: every rank computes (the collectives need all of them), only rank 0 writes and shows
        self.rank = _dist.rank()
        self.world_size = _dist.world_size()
        if self.world_size > 1:
            missing = _dist.attach_handshake()
            if missing:  # communicating would hang the ranks that did attach: record this rank's own values
                warnings.warn(
                    f"trainspect: rank(s) {', '.join(map(str, missing))} did not attach an inspector (within "
                    f"{_dist.ATTACH_TIMEOUT_S:.0f} s); call trainspect.attach on every rank (only rank 0 writes). "
                    f"This inspector records rank {self.rank}'s own values and communicates nothing.",
                    RuntimeWarning, stacklevel=3,
                )
                self.world_size = 1
        if self.rank != 0:
            store = False
            progress = False
        if store:
            from trainspect.store.writer import StoreWriter

            if run_dir is None:
                stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
                run_dir = Path("runs") / f"{stamp}-{type(model).__name__.lower()}"
            self.store = StoreWriter(run_dir, overwrite=overwrite, sync=_store_in_process(store))
            self.run_dir = self.store.run_dir
            self.sinks.append(self.store)
        self.sinks.extend(sinks)
        from trainspect.views.terminal import TerminalView

        self.terminal = TerminalView(progress=progress, total_steps=total_steps, run_dir=self.run_dir)
        if self.rank == 0:  # one terminal report per run, not one per process
            self.sinks.append(self.terminal)

        self.meta = self._run_meta(config)
        for sink in self.sinks:
            self._safe(sink.open, self.meta, self.layers, source=f"sink:{type(sink).__name__}")

        # -- state and hooks -------------------------------------------------------------------------
        self._step = 0
        self._ctx: StepContext | None = None  # step whose `with` block is open
        self._pending: StepContext | None = None  # block closed, waiting for optimizer.step()
        self._closed = False
        self._handles: list[Any] = []
        if isinstance(loss_fn, nn.Module):
            self._handles.append(loss_fn.register_forward_hook(self._on_loss_forward))
        # A common slip: attach(..., nn.CrossEntropyLoss()) but the loop calls another instance. Until the
        # attached loss is seen, a global forward hook picks up any torch loss module called in the step.
        self._global_loss_hook: Any = None
        self._attached_loss_seen = False
        if optimizer is not None and optimizer_hooks:
            self._handles.append(optimizer.register_step_pre_hook(self._on_optimizer_pre))
            self._handles.append(optimizer.register_step_post_hook(self._on_optimizer_post))
        self.grad_scaler = grad_scaler
        self.curvature_batch: tuple[Any, Any] | str | None = _check_curvature_batch(curvature_batch)
        self._curvature_batch_device: torch.device | None = None
        if grad_scaler is not None:
            self._wrap_grad_scaler(grad_scaler)
        # providers with state from step 0 (e.g. the initial parameters) are created now
        for name in self._required_providers(self.instruments):
            self.provider(name)

    # ------------------------------------------------------------------------------------------------
    # public API
    # ------------------------------------------------------------------------------------------------
    def step(self, inputs: Any = None, targets: Any = None) -> _StepScope:
        """Wrap one training step's forward and backward: ``with inspector.step(x, y): ...``."""
        return _StepScope(self, inputs, targets)

    def loss_fn(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Call the loss function given to ``attach`` and record its value for the current step."""
        if self._user_loss_fn is None:
            raise RuntimeError("inspector.loss_fn: no loss_fn was given to trainspect.attach")
        loss = self._user_loss_fn(*args, **kwargs)
        if not isinstance(self._user_loss_fn, nn.Module):  # a module loss is seen by its forward hook
            self._set_loss(loss, args)
        return loss

    @property
    def user_loss_fn(self) -> Callable[..., torch.Tensor] | None:
        """The loss function given to ``attach`` (providers re-evaluate it with ``torch.func``)."""
        return self._user_loss_fn

    @property
    def global_step(self) -> int:
        """The index of the next step to be recorded."""
        return self._step

    def log(self, step: int | None = None, **values: float) -> None:
        """Record user metrics (e.g. ``val_accuracy=0.93``) as scalar series at ``step`` (default: last step)."""
        if not values:
            return
        step = max(self._step - 1, 0) if step is None else step
        record = StepRecord(step, time.time(), 0.0, 0.0, False)
        for key, value in values.items():
            if key not in self._series_seen:
                self._series_seen.add(key)
                record.new_series.append(
                    ("user", SeriesInfo(key, "scalar", f"user metric {key}", group="performance"))
                )
            record.scalars[key] = float(value)
        for sink in self.sinks:
            self._safe(sink.write_user_values, record, source=f"sink:{type(sink).__name__}")
        for check in self.checks:
            if hasattr(check, "observe_user_values"):
                self._safe(check.observe_user_values, record, source=f"check:{check.name}")

    def add_finding(self, finding: Finding, step: int | None = None) -> Finding:
        """Record a finding (from a check, preflight or the user); announced once per (code, location)."""
        step = self._step if step is None else step
        kept, new = self._findings.add(finding, step)
        for sink in self.sinks:
            self._safe(sink.write_finding, kept, new=new, source=f"sink:{type(sink).__name__}")
        return kept

    def provider(self, name: str) -> Provider:
        """The run's instance of provider ``name`` (created on first use)."""
        inst = self._providers.get(name)
        if inst is None:
            cls = PROVIDERS.get(name)
            if cls is None:
                raise KeyError(f"unknown provider {name!r}; known: {', '.join(sorted(PROVIDERS))}")
            inst = self._providers[name] = cls(self)
        return inst

    # -- driving the phases from a framework's callbacks (Lightning, Hugging Face, `trainspect run`) --------
    def begin_step(self, inputs: Any = None, targets: Any = None) -> StepContext:
        """Open a step (what entering ``with inspector.step(inputs, targets)`` does)."""
        return self._begin(inputs, targets)

    def add_batch(self, inputs: Any, targets: Any = None) -> None:
        """Gradient accumulation: one more micro-batch of the open step (the first one, if the step was opened
        without inputs: ``with inspector.step() as step: for xb, yb in micro: step.add_batch(xb, yb); ...``).

        The step's ``inputs``/``targets`` become the concatenation of every micro-batch (all k·B samples of
        the optimizer step), so per-sample statistics cover the whole step. The loss seen once per
        micro-batch is combined into the loss of the whole step (mean weighted by micro-batch size, or sum).
        """
        ctx = self._ctx
        if ctx is None:
            raise RuntimeError("inspector.add_batch: no step is open (call it inside `with inspector.step(...)`)")
        ctx.add_micro_batch(inputs, targets)

    def set_loss(self, loss: torch.Tensor) -> None:
        """Tell the open step its loss (once per micro-batch under gradient accumulation)."""
        self._set_loss(loss)

    def gradients_ready(self) -> None:
        """The gradients are final (accumulated, unscaled) and the optimizer is about to step."""
        self._on_optimizer_pre(self.optimizer, (), {})

    def optimizer_step_done(self) -> None:
        """The optimizer has updated the parameters."""
        self._on_optimizer_post(self.optimizer, (), {})

    def end_step(self, failed: bool = False) -> None:
        """Close the step (what leaving the ``with`` block does); ``failed``: drop it unrecorded."""
        self._end_block(failed=failed)

    @property
    def step_open(self) -> bool:
        """Whether a step is open (between :meth:`begin_step` and :meth:`end_step`)."""
        return self._ctx is not None

    def close(self) -> None:
        """Finish the last step, write the end of the run, print the findings summary."""
        if self._closed:
            return
        if self._pending is not None:
            self._finish(self._pending)
        if self._deferred:
            self._observe_deferred()
        self._closed = True
        for h in self._handles:
            h.remove()
        self._handles.clear()
        if self.grad_scaler is not None:
            self.grad_scaler.__dict__.pop("update", None)  # drop the wrapper: the class method shows again
        if self._global_loss_hook is not None:
            self._global_loss_hook.remove()
            self._global_loss_hook = None
        for p in self._providers.values():
            self._safe(p.close, source=f"provider:{p.name}")
        end = {"end_time": datetime.now(timezone.utc).isoformat(), "status": "finished", "steps": self._step}
        for sink in self.sinks:
            self._safe(sink.write_meta, end, source=f"sink:{type(sink).__name__}")
        if self.rank == 0:
            self._safe(self.terminal.summary, self, source="sink:TerminalView")
        for sink in self.sinks:
            self._safe(sink.close, source=f"sink:{type(sink).__name__}")

    def __enter__(self) -> Inspector:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------------
    # the step
    # ------------------------------------------------------------------------------------------------
    def _begin(self, inputs: Any, targets: Any) -> StepContext:
        if self._closed:
            raise RuntimeError("this inspector was closed; attach a new one")
        if self._ctx is not None:
            raise RuntimeError("inspector.step(...) blocks cannot be nested")
        t0 = time.perf_counter()
        if self._pending is not None:  # the previous step never reached optimizer.step()
            self._finish(self._pending)
        ctx = StepContext(self, self._step, inputs, targets)
        if isinstance(self.curvature_batch, str) and inputs is not None and targets is not None:  # "first"
            self.curvature_batch = _copy_batch(inputs, targets)
        # what the schedules say (identical on every rank), then without the disabled (may differ by rank)
        step = ctx.step
        try:
            scheduled = self._scheduled(step)
        except Exception:  # a broken schedule: find it, record it, and leave that instrument out
            scheduled = [i for i in self.instruments if self._is_due(i, step)]
        ctx.scheduled_instruments = scheduled
        disabled = self._disabled
        due = ctx.due_instruments = [i for i in scheduled if i.name not in disabled] if disabled else scheduled
        # the providers a set of due instruments needs, and which of them capture during the step: the same few
        # sets recur every step, so they are planned once (and looked up by the cached due list itself, which
        # the phase cache of `_scheduled` keeps alive, when nothing is disabled)
        entry = self._plan_of_list.get(id(due))
        plan = entry[1] if entry is not None and entry[0] is due else self._plan(due)
        ctx.needed_providers, ctx.plan = plan[0], plan
        for name in plan[1]:
            self._safe(self.provider(name).arm, ctx, source="provider:" + name)
        if not self._attached_loss_seen and self._global_loss_hook is None:
            self._global_loss_hook = nn.modules.module.register_module_forward_hook(self._on_any_loss_forward)
        self._ctx = ctx
        ctx.t_enter = time.perf_counter()
        ctx.overhead_seconds += ctx.t_enter - t0
        return ctx

    def _end_block(self, *, failed: bool) -> None:
        ctx = self._ctx
        if ctx is None:
            return
        t0 = time.perf_counter()
        if self._global_loss_hook is not None:
            self._global_loss_hook.remove()
            self._global_loss_hook = None
        ctx.user_seconds += t0 - ctx.t_enter
        self._ctx = None
        if failed:  # the user's step raised: drop it without recording, never mask their exception
            self._disarm(ctx)
            self._end_providers(ctx)
            ctx.release()
            return
        # With a GradScaler the gradients are still scaled here: measure them at the optimizer pre-hook (after
        # scaler.step unscaled them) or, if the scaler skips the step, when scaler.update runs.
        waits_for_scaler = self.grad_scaler is not None and self._scaler_enabled() and not ctx.optimizer_stepped
        if ctx.phase == "forward" and not waits_for_scaler:
            self._gradient_phase(ctx)
        if ctx.optimizer_stepped or self.optimizer is None:
            self._finish(ctx, t0)
        else:
            self._pending = ctx
            ctx.overhead_seconds += time.perf_counter() - t0

    def _gradient_phase(self, ctx: StepContext) -> None:
        self._disarm(ctx)
        ctx.phase = "gradients"
        due = ctx.plan[6]
        if self.world_size > 1:
            scheduled = [i for i in ctx.scheduled_instruments if not i.after_update]
            self._run_distributed(ctx, due, scheduled, reduce_loss=True)
        else:
            self._run_instruments(ctx, due)

    def _on_optimizer_pre(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        ctx = self._ctx or self._pending
        if ctx is None or ctx.optimizer_stepped:
            return
        t0 = time.perf_counter()
        if self.grad_scaler is not None and self._scaler_enabled():  # the scale this step's backward used
            ctx.amp = {"loss_scale": float(self.grad_scaler.get_scale()), "skipped": False}
        if ctx is self._ctx:  # optimizer.step() inside the block
            ctx.user_seconds += t0 - ctx.t_enter
        if ctx.phase == "forward":
            self._gradient_phase(ctx)
        if ctx.plan[7]:
            for name in ctx.plan[3]:
                self._safe(self.provider(name).before_update, ctx, source="provider:" + name)
            for inst in ctx.plan[4]:
                if inst.name in self._disabled:
                    continue
                try:
                    inst.before_update(ctx)
                except Exception as error:
                    self._fail(f"instrument:{inst.name}", inst.name, ctx.step, error)
        ctx.t_optimizer = time.perf_counter()
        ctx.overhead_seconds += ctx.t_optimizer - t0

    def _on_optimizer_post(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        ctx = self._ctx or self._pending
        if ctx is None or ctx.optimizer_stepped or ctx.t_optimizer is None:
            return
        t0 = time.perf_counter()
        ctx.user_seconds += t0 - ctx.t_optimizer
        ctx.optimizer_stepped = True
        if ctx is self._ctx:  # still inside the block: finish at its exit
            ctx.t_enter = t0
            return
        self._pending = None
        self._finish(ctx, t0)

    def _finish(self, ctx: StepContext, t0: float | None = None) -> None:
        t0 = time.perf_counter() if t0 is None else t0
        self._pending = None
        if ctx.phase == "forward":  # closed without a gradient phase (e.g. a GradScaler that never stepped)
            self._gradient_phase(ctx)
        ctx.phase = "update"
        try:
            due = ctx.plan[7]
            if self.world_size > 1:
                scheduled = [i for i in ctx.scheduled_instruments if i.after_update]
                self._run_distributed(ctx, due, scheduled, reduce_loss=False)
            else:
                self._run_instruments(ctx, due)
            record = self._record(ctx)
            disabled = self._disabled
            immediate, deferred = self._check_kinds()
            for check in immediate:
                if disabled and check.name in disabled:
                    continue
                try:
                    findings = check.observe(record, ctx)
                    if findings:
                        for finding in findings:
                            self.add_finding(finding, ctx.step)
                except Exception as error:
                    self._fail(f"check:{check.name}", check.name, ctx.step, error)
            if deferred:
                self._deferred.append((record, ctx.batch_size, ctx.extras, getattr(ctx, "nonfinite_loss_ranks", None)))
                scalars = record.scalars
                if (len(self._deferred) >= self.CHECK_BATCH or scalars.get("nonfinite_loss")
                        or scalars.get("nonfinite_grads") or not math.isfinite(scalars.get("loss", 0.0))):
                    self._observe_deferred()
            record.overhead_seconds = ctx.overhead_seconds + (time.perf_counter() - t0)
            for sink in self.sinks:
                try:
                    sink.write_step(record)
                except Exception as error:
                    self._failed_part(f"sink:{type(sink).__name__}", error)
        finally:
            self._end_providers(ctx)
            ctx.release()
            self._step += 1

    def _check_kinds(self) -> tuple[list[Check], bool]:
        """The checks that observe each step as it ends, and whether any observes in batches (``deferrable``)."""
        checks = self.checks
        kinds = self.__dict__.get("_kinds")
        if kinds is None or kinds[0] != (id(checks), len(checks)):
            kinds = self._kinds = ((id(checks), len(checks)), [c for c in checks if not c.deferrable],
                                   any(c.deferrable for c in checks))
        return kinds[1], kinds[2]

    #: the deferrable checks observe the records of this many steps at once (and at once on a step with a
    #: non-finite loss or gradient, at close, and whenever ``findings`` is read): measured on the digits MLP with
    #: the default instruments and checks, 360 → 320 µs of overhead per step
    CHECK_BATCH = 16

    @property
    def findings(self) -> FindingsBook:
        """The findings so far (one per code and location), with every finished step observed by every check."""
        if self._deferred:
            self._observe_deferred()
        return self._findings

    def _observe_deferred(self) -> None:
        """Hand the waiting records to the deferrable checks: check by check, each over the records in step order
        (its code stays in cache for the whole batch)."""
        records, self._deferred = self._deferred, []
        facts = self._check_facts
        for check in self.checks:
            if not check.deferrable:
                continue
            for record, batch_size, extras, ranks in records:
                if check.name in self._disabled:
                    break
                facts.step, facts.batch_size, facts.extras, facts.nonfinite_loss_ranks = (
                    record.step, batch_size, extras, ranks)
                try:
                    findings = check.observe(record, facts)  # type: ignore[arg-type]
                    if findings:
                        for finding in findings:
                            self.add_finding(finding, record.step)
                except Exception as error:
                    self._fail(f"check:{check.name}", check.name, record.step, error)

    # ------------------------------------------------------------------------------------------------
    # helpers
    # ------------------------------------------------------------------------------------------------
    def _scheduled(self, step: int) -> list[Instrument]:
        """The instruments whose schedule says they are due at ``step``.

        When every schedule is periodic (``every(n)``, ``first(k)`` and their ``|``: the default configuration
        and its probes; :meth:`Schedule.periodicity`), the due set repeats with the lcm of the periods after the
        largest start, so each phase is computed once and looked up afterwards (this runs on every step: 15
        schedule evaluations cost as much as a few kernels of a tiny model). The cache is rebuilt if an
        instrument's schedule object is replaced. The lists are shared: nothing may modify them.
        """
        instruments = self.instruments
        signature = (SCHEDULE_EPOCH[0], len(instruments))
        cache = self.__dict__.get("_due_cache")
        if cache is None or cache[0] != signature:
            self._cached_due.clear()
            self._plan_of_list.clear()
            parts = [i.schedule.periodicity() if isinstance(i.schedule, Schedule)
                     and type(i).is_due is Instrument.is_due else None for i in instruments]
            periodic = bool(parts) and all(p is not None for p in parts)
            period = math.lcm(*(p[0] for p in parts)) if periodic else 0  # type: ignore[index]
            start = max(p[1] for p in parts) if period else 0  # type: ignore[index]
            cache = self._due_cache = (signature, period if period <= 1 << 16 else 0, start, {})
        _, period, start, phases = cache
        if not period or step < start:
            return [i for i in instruments if _due(i, step)]
        due = phases.get(step % period)
        if due is None:
            due = phases[step % period] = [i for i in instruments if _due(i, step)]
            self._cached_due[id(due)] = due
        return due

    def _plan(self, due: list[Instrument]) -> tuple[Any, ...]:
        """The engine's plan for a set of due instruments: (needed providers, those with ``arm``, with ``disarm``,
        with ``before_update``, the due after-update instruments with ``before_update``, providers with
        ``end_step``, the due instruments of the gradient phase, those of the update phase)."""
        key = tuple(map(id, due))
        plan = self._plans.get(key)
        if plan is None:
            needed = self._required_providers(due)
            plan = self._plans[key] = (needed, *(
                [n for n in needed if getattr(type(self.provider(n)), hook) is not getattr(Provider, hook)]
                for hook in ("arm", "disarm", "before_update")
            ), [i for i in due if i.after_update and type(i).before_update is not Instrument.before_update],
                [n for n in needed if type(self.provider(n)).end_step is not Provider.end_step],
                [i for i in due if not i.after_update], [i for i in due if i.after_update])
        if due is self._cached_due.get(id(due)):
            self._plan_of_list[id(due)] = (due, plan)
        return plan

    def _is_due(self, instrument: Instrument, step: int) -> bool:
        try:
            return instrument.is_due(step)
        except Exception as error:
            self._fail(f"instrument:{instrument.name}", instrument.name, step, error, what="schedule")
            return False

    def _required_providers(self, instruments: Iterable[Instrument]) -> set[str]:
        needed: set[str] = set()
        stack = [name for i in instruments for name in i.requires]
        while stack:
            name = stack.pop()
            if name in needed:
                continue
            needed.add(name)
            cls = PROVIDERS.get(name)
            if cls is None:
                raise KeyError(f"an instrument requires unknown provider {name!r}; known: {sorted(PROVIDERS)}")
            stack.extend(cls.requires)
        return needed

    def _disarm(self, ctx: StepContext) -> None:
        for name in ctx.plan[2]:
            self._safe(self.provider(name).disarm, ctx, source="provider:" + name)

    def _end_providers(self, ctx: StepContext) -> None:
        for name in ctx.plan[5]:
            self._safe(self.provider(name).end_step, ctx, source="provider:" + name)

    def provider_needed_at(self, name: str, step: int) -> bool:
        """Whether provider ``name`` will be needed at ``step`` by the instruments due there, as their schedules
        (and state: alpha is due on the step after one it started) say now. For providers deciding what to keep
        at the end of a step; False if a schedule fails."""
        try:
            scheduled = self._scheduled(step)
        except Exception:
            return False
        disabled = self._disabled
        due = [i for i in scheduled if i.name not in disabled] if disabled else scheduled
        return name in self._plan(due)[0]

    def _run_instruments(
        self, ctx: StepContext, instruments: list[Instrument], scope: _dist.CollectiveScope | None = None
    ) -> dict[int, float]:
        """Compute ``instruments``; returns ``{slot: status}`` (``distributed.STATUS_*``) of those not OK.

        The slot of an instrument is 1 + its index in ``self.instruments`` (identical on every rank; slot 0
        is the engine's own loss reduction), so collectives stay ordered even if ranks disagree on which
        instruments are still enabled.
        """
        status: dict[int, float] = {}
        values = ctx.values
        disabled = self._disabled
        for inst in instruments:
            if inst.name in disabled:
                status[self._slot_of(inst)] = _dist.STATUS_FAILED
                continue
            if scope is not None:
                scope.enter(self._slot_of(inst))
            try:
                out = inst.compute(ctx)
            except NotAvailable:
                status[self._slot_of(inst)] = _dist.STATUS_SKIPPED
                continue  # e.g. no update on a step the optimizer skipped: not a failure
            except _dist.PeerFailure:
                status[self._slot_of(inst)] = _dist.STATUS_LEFT  # another rank failed or skipped it
                continue
            except Exception as error:
                if isinstance(error.__cause__, _dist.PeerFailure):  # a provider's collective, via ProviderError
                    status[self._slot_of(inst)] = _dist.STATUS_LEFT
                    continue
                self._fail(f"instrument:{inst.name}", inst.name, ctx.step, error)
                status[self._slot_of(inst)] = _dist.STATUS_FAILED
                continue
            if out:
                for key, value in out.items():
                    values[key] = (inst, value)
        return status

    def _slot_of(self, inst: Instrument) -> int:
        slots = self.__dict__.get("_slots")
        if slots is None or len(slots) != len(self.instruments):
            slots = self._slots = {id(i): k + 1 for k, i in enumerate(self.instruments)}
        return slots.get(id(inst), 0)

    def _run_distributed(
        self, ctx: StepContext, instruments: list[Instrument], scheduled: list[Instrument], *, reduce_loss: bool
    ) -> None:
        """Run one phase's instruments on every rank with aligned collectives (``distributed.CollectiveScope``).

        Every rank runs the same phases at the same steps, and decides what to communicate from
        ``scheduled`` (what the schedules say: identical on every rank), never from which instruments
        are still enabled (that may differ by rank for a step). Collectives, only if something is scheduled:
        the loss of the global batch (gradient phase; one plain all-reduce, every rank is here), then, unless
        every scheduled instrument is ``local_only``, the instruments inside a scope whose end all ranks
        agree on each instrument's status: one that failed anywhere is disabled everywhere, one skipped
        anywhere is dropped this step.
        """
        if not scheduled:
            return
        if reduce_loss:
            self._reduce_loss(ctx)
        if all(i.local_only for i in scheduled):  # nothing communicates: no agreement needed
            self._run_instruments(ctx, instruments)
            return
        scope = _dist.CollectiveScope(len(self.instruments) + 1)
        _dist.set_active_scope(scope)
        try:
            local = torch.zeros(len(self.instruments) + 1, dtype=torch.float64)
            for slot, value in self._run_instruments(ctx, instruments, scope).items():
                local[slot] = value
            everyone = scope.finish(local)
        finally:
            _dist.set_active_scope(None)
        for inst in instruments:
            slot = self._slot_of(inst)
            worst = float(everyone[slot].max())
            if worst == _dist.STATUS_OK:
                continue
            for key in [k for k, (i, _) in ctx.values.items() if i is inst]:
                del ctx.values[key]  # not the same on every rank this step: not a value of the global batch
            if worst == _dist.STATUS_FAILED and inst.name not in self._disabled:
                ranks = [r for r in range(self.world_size) if float(everyone[slot, r]) == _dist.STATUS_FAILED]
                self._fail(
                    f"instrument:{inst.name}", inst.name, ctx.step,
                    RuntimeError(f"failed on rank {', '.join(map(str, ranks))} (see that rank's warning); "
                                 "disabled on every rank so that all ranks keep running the same collectives"),
                )

    def _reduce_loss(self, ctx: StepContext) -> None:
        """Replace the local loss by the loss of the global batch (all ranks' samples), one collective.

        mean reduction: Σ_r n_r L_r / Σ_r n_r (n_r: rank r's batch size); sum: Σ_r L_r. Also records on which
        ranks the local loss was not finite (``ctx.nonfinite_loss_ranks``): a rank-local fault.
        """
        world, r = self.world_size, self.rank
        stats = torch.zeros(3 + world, dtype=torch.float64, device=_dist.collective_device())
        if ctx.loss is not None:
            local = ctx.loss.detach().to(torch.float64).reshape(())
            n = float(ctx.batch_size or 1)
            stats[0] = local * n if ctx.loss_reduction == "mean" else local
            stats[1] = n
            stats[2] = 1.0
            stats[3 + r] = float(not bool(torch.isfinite(local)))
        (total,) = _dist.all_reduce_sum([stats])
        total = total.cpu()
        ctx.local_loss = ctx.loss
        ctx.nonfinite_loss_ranks = [q for q in range(world) if float(total[3 + q]) > 0]
        ctx.global_batch_size = int(total[1]) if ctx.batch_size is not None else None
        if float(total[2]) != world:  # some rank saw no loss: no loss of the global batch this step
            ctx.loss = None
            return
        ctx.loss = total[0] / total[1] if ctx.loss_reduction == "mean" else total[0]

    def _record(self, ctx: StepContext) -> StepRecord:
        record = StepRecord(
            step=ctx.step,
            wall_time=time.time(),
            user_seconds=ctx.user_seconds,
            overhead_seconds=0.0,
            optimizer_stepped=ctx.optimizer_stepped,
        )
        seen, scalars = self._series_seen, record.scalars
        for key, (inst, value) in ctx.values.items():
            try:
                if key not in seen:
                    info = inst.series_info(key)
                    record.new_series.append((inst.name, info))
                    seen.add(key)
                if type(value) is float:  # most values of most steps (loss, norms, times): no dispatch
                    scalars[key] = value
                else:
                    self._put(record, key, value, inst)
            except Exception as error:
                self._fail(f"instrument:{inst.name}", inst.name, ctx.step, error)
        return record

    def _put(self, record: StepRecord, key: str, value: Any, inst: Instrument) -> None:
        # most values are 0-d tensors or floats: test for them first (this runs for every value of every step)
        if isinstance(value, torch.Tensor):
            if value.dim() == 0:
                record.scalars[key] = value.item()
                return
            if value.dim() == 1:
                self._put_layers(record, key, value, inst)
                return
            if value.numel() == 1:
                record.scalars[key] = value.reshape(()).item()
                return
            raise ValueError(
                f"instrument {inst.name!r} returned series {key!r} as a tensor of shape {tuple(value.shape)}; "
                "expected a scalar, a per-layer vector, a Histogram, Histogram2d or Curve"
            )
        if isinstance(value, (float, int)):
            record.scalars[key] = float(value)
        elif isinstance(value, Histogram):
            record.histograms[key] = HistogramValue(to_numpy(value.counts), to_numpy(value.edges))
        elif isinstance(value, Curve):
            record.histograms[key] = HistogramValue(to_numpy(value.y), to_numpy(value.x))
        elif isinstance(value, Histogram2d):
            record.histograms[key] = HistogramValue(
                to_numpy(value.counts), to_numpy(value.x_edges), to_numpy(value.y_edges)
            )
        elif isinstance(value, np.ndarray) and value.ndim == 1:
            self._put_layers(record, key, value, inst)
        else:
            record.scalars[key] = float(value)

    def _put_layers(self, record: StepRecord, key: str, value: Any, inst: Instrument) -> None:
        vec = to_numpy(value)
        if vec.shape[0] != len(self.params):
            raise ValueError(
                f"instrument {inst.name!r} returned per-layer series {key!r} with {vec.shape[0]} entries; "
                f"expected one per tracked parameter ({len(self.params)})"
            )
        record.layers[key] = vec

    def _fail(self, source: str, name: str, step: int | None, error: BaseException, what: str = "") -> None:
        """Record a failure once, with its traceback, and disable the failing part for the rest of the run."""
        self._disabled.add(name)
        message = f"{type(error).__name__}: {error}"
        trace = "".join(tb.format_exception(type(error), error, error.__traceback__))
        self.errors.append({"step": step, "source": source, "message": message, "traceback": trace})
        warnings.warn(
            f"trainspect: {source}{' ' + what if what else ''} failed at step {step} and is disabled for the "
            f"rest of the run: {message}",
            RuntimeWarning,
            stacklevel=3,
        )
        for sink in self.sinks:
            try:
                sink.write_error(step, source, message, trace)
            except Exception:  # a broken sink must not recurse into failure handling
                pass

    def _safe(self, fn: Callable[..., Any], *args: Any, source: str, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as error:
            self._failed_part(source, error)
            return None

    def _failed_part(self, source: str, error: BaseException) -> None:
        """Record a failure of ``source`` (``"kind:name"``) and step it aside; a failed sink is dropped."""
        name = source.split(":", 1)[-1]
        self._fail(source, name, self._step, error)
        if source.startswith("sink:"):
            self.sinks = [s for s in self.sinks if type(s).__name__ != name]

    def _on_any_loss_forward(self, module: nn.Module, args: Any, output: Any) -> None:
        if isinstance(module, nn.modules.loss._Loss) and module is not self._user_loss_fn:
            self._on_loss_forward(module, args, output, attached=False)

    def _on_loss_forward(self, module: nn.Module, args: Any, output: Any, attached: bool = True) -> None:
        ctx = self._ctx
        if ctx is None:
            return
        if attached:
            self._attached_loss_seen = True
        ctx.loss_reduction = getattr(module, "reduction", ctx.loss_reduction)
        self._set_loss(output, args)

    def _set_loss(self, loss: Any, args: Any = None) -> None:
        ctx = self._ctx
        if ctx is None or ctx.phase != "forward":
            return
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
            self._ctx = None
            raise ValueError(
                f"trainspect: the loss must be a scalar tensor, got shape {shape}; with reduction='none' reduce it "
                "(loss.mean() or loss.sum()) before backward, and pass that to the inspector"
            )
        ctx.add_loss(loss, args)

    # -- mixed precision ------------------------------------------------------------------------------
    def _scaler_enabled(self) -> bool:
        is_enabled = getattr(self.grad_scaler, "is_enabled", None)
        return bool(is_enabled()) if callable(is_enabled) else True

    def _wrap_grad_scaler(self, scaler: Any) -> None:
        """Observe ``scaler.update()`` (called once per iteration, after ``scaler.step``).

        ``scaler.step(optimizer)`` unscales the gradients, then calls ``optimizer.step()`` only if they are
        finite; so if our optimizer pre-hook has not run by ``update()``, the scaler skipped this step. The
        gradients are unscaled by then (inf/NaN included), so the gradient phase runs there. The wrapper is
        an instance attribute (the class is untouched) and is removed at ``close()``.
        """
        if not callable(getattr(scaler, "update", None)) or not callable(getattr(scaler, "get_scale", None)):
            raise TypeError(
                f"trainspect.attach: grad_scaler must be a torch.amp.GradScaler, got {type(scaler).__name__}"
            )
        original = scaler.update

        def update(*args: Any, **kwargs: Any) -> Any:
            try:
                self._on_scaler_update(scaler)
            except Exception as error:  # never break the user's training
                self._fail("engine:grad_scaler", "grad_scaler", self._step, error)
            return original(*args, **kwargs)

        scaler.update = update

    def _on_scaler_update(self, scaler: Any) -> None:
        ctx = self._ctx or self._pending
        if ctx is None or not self._scaler_enabled():
            return
        ctx.amp = {"loss_scale": float(scaler.get_scale()), "skipped": not ctx.optimizer_stepped}
        if ctx.phase == "forward" and not ctx.optimizer_stepped:
            self._gradient_phase(ctx)  # the skipped step's (unscaled, non-finite) gradients
        if ctx is self._pending:  # the block is closed: nothing else will happen on this step
            self._finish(ctx)

    def _resolve_checks(self, checks: str | Iterable[Any] | None) -> list[Check]:
        if checks is None:
            return []
        if isinstance(checks, str):
            if checks == "default":
                return [cls() for cls in CHECKS.values() if getattr(cls, "default", True)]
            if checks == "none":
                return []
            checks = [checks]
        out = []
        for c in checks:
            if isinstance(c, Check):
                out.append(c)
            elif isinstance(c, str) and c in CHECKS:
                out.append(CHECKS[c]())
            else:
                raise ValueError(f"unknown check {c!r}; known: {', '.join(sorted(CHECKS)) or '(none)'}")
        return out

    def log_samples(self, inputs: Any, outputs: Any, targets: Any, **options: Any) -> bool:
        """Store this step's examples (inputs, predictions, targets) on a schedule, for the samples view.

        ``outputs`` are class scores (N × C: argmax, softmax and per-example cross-entropy are derived)
        or predictions (N,). Options (see :func:`trainspect.views.samples.log_samples`): ``schedule``
        (default every 100 steps), ``losses``, ``max_samples``, ``input_kind``, ``image_shape``,
        ``class_names``, ``decode`` (token ids → text). Returns True if stored at this step.
        """
        from trainspect.views.samples import log_samples

        current = self._ctx or self._pending  # inside the block, or before optimizer.step() finished it
        step = current.step if current is not None else max(self._step - 1, 0)
        return log_samples(self, inputs, outputs, targets, step=step, **options)

    def _run_meta(self, config: Mapping[str, Any] | None) -> dict[str, Any]:
        from trainspect import __version__

        opt = self.optimizer
        hyper: list[dict[str, Any]] = []
        if opt is not None:
            for group in opt.param_groups:
                hyper.append(
                    {k: (v if isinstance(v, (int, float, str, bool, type(None))) else
                         (list(v) if isinstance(v, tuple) else repr(v)))
                     for k, v in group.items() if k != "params"}
                )
        n_params = sum(p.numel() for p in self.model.parameters())
        return {
            "name": self.name or (self.run_dir.name if self.run_dir else "run"),
            "start_time": datetime.now(timezone.utc).isoformat(),
            "status": "running",
            "model_class": type(self.model).__name__,
            "model_summary": repr(self.model)[:20000],
            "parameter_count": n_params,
            "trainable_parameter_count": sum(p.numel() for p in self.params),
            "optimizer": type(opt).__name__ if opt is not None else None,
            "hyperparameters": hyper,
            "loss": type(self._user_loss_fn).__name__ if isinstance(self._user_loss_fn, nn.Module)
            else getattr(self._user_loss_fn, "__name__", None),
            "loss_reduction": self.loss_reduction,
            "instruments": {i.name: repr(i.schedule) for i in self.instruments},
            "checks": [c.name for c in self.checks],
            "config": dict(config or {}),
            "versions": {
                "trainspect": __version__,
                "torch": torch.__version__,
                "python": sys.version.split()[0],
                "numpy": np.__version__,
                "platform": platform.platform(),
            },
            "command": " ".join(sys.argv),
        }


def _due(instrument: Instrument, step: int) -> bool:
    """``instrument.is_due(step)``, with the common case — the base ``is_due`` and an ``every(n)`` schedule —
    as plain arithmetic (this runs for every instrument on every step)."""
    schedule = instrument.schedule
    if type(schedule) is Every and type(instrument).is_due is Instrument.is_due:
        return step >= schedule.offset and (step - schedule.offset) % schedule.interval == 0
    return instrument.is_due(step)


def _store_in_process(store: bool | str) -> bool:
    """Where the store commits: ``True`` (automatic) and ``"process"`` use the writer process, ``"sync"`` this one.

    The writer process takes the SQLite work (≈ 25–100 µs per step, as much as a whole step of a small model)
    off the training loop, which only pays a JSON encoding and a pipe write (≈ 15 µs); it commits in groups
    (``_writer_process.COMMIT_INTERVAL``) and runs on any core, not the one torch pinned its main thread to.
    Measured on 2 pinned cores with torch on both (digits MLP, 0.25 ms plain step): see ``docs/store.md``.
    """
    if store in ("sync", "process"):
        return store == "sync"
    if store is not True:
        raise ValueError(f"trainspect.attach: store must be True, False, 'sync' or 'process', got {store!r}")
    return False


def _check_curvature_batch(batch: Any) -> tuple[Any, Any] | str | None:
    """``curvature_batch`` as given (None, "first") or as an (inputs, targets) tuple; a clear error otherwise."""
    if batch is None or (isinstance(batch, str) and batch == "first"):
        return batch
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return (batch[0], batch[1])
    got = repr(batch) if isinstance(batch, str) else (
        f"a {type(batch).__name__} of length {len(batch)}" if isinstance(batch, (tuple, list))
        else f"a {type(batch).__name__}")
    raise ValueError(
        "trainspect.attach: curvature_batch must be None (each measured step's batch), 'first' (a copy of the "
        f"first step's batch) or a pair (inputs, targets), got {got}"
    )


def _copy_batch(inputs: Any, targets: Any) -> tuple[Any, Any]:
    """A detached copy of every tensor in (inputs, targets): the user's loop may reuse those buffers."""
    from torch.utils._pytree import tree_map

    def copy(x: Any) -> Any:
        return x.detach().clone() if isinstance(x, torch.Tensor) else x

    return tree_map(copy, (inputs, targets))


def attach(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    loss_fn: Callable[..., torch.Tensor] | None = None,
    **kwargs: Any,
) -> Inspector:
    """Attach trainspect to a training loop. See :class:`Inspector` for the options.

    Example::

        inspector = trainspect.attach(model, optimizer, loss_fn, run_dir="runs/mlp")
        for x, y in loader:
            optimizer.zero_grad()
            with inspector.step(x, y):
                loss = loss_fn(model(x), y)
                loss.backward()
            optimizer.step()
        inspector.close()
    """
    return Inspector(model, optimizer, loss_fn, **kwargs)
