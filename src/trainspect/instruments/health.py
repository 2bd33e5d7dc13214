"""Cheap health probes that feed the automatic checks (``trainspect.checks``).

* ``grad_at_step_start``: norm of the gradient already present when a step begins (missing ``zero_grad``);
* ``loss_input``: what the model hands to the loss (probabilities where logits are expected);
* ``input_scale``: per-feature scale of the inputs (features differing by orders of magnitude);
* ``nonfinite_origin``: on a step whose loss or gradients are NaN/inf, the first module whose output (or,
  walking back from the loss, whose gradient) became non-finite. Costs nothing on healthy steps.
"""

from __future__ import annotations

import contextlib
import math
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from trainspect.engine.schedules import every, first
from trainspect.engine.values import SeriesInfo
from trainspect.instruments.base import Instrument
from trainspect.providers.activations import unit_dim

if TYPE_CHECKING:
    from trainspect.engine.context import StepContext


def module_label(name: str, module: nn.Module) -> str:
    """``"encoder.layers.3.mlp.fc1 (Linear)"``; the root module is called ``model``."""
    return f"{name or 'model'} ({type(module).__name__})"


def first_tensor(value: Any) -> torch.Tensor | None:
    """The tensor in ``value`` (itself, the first of a tuple/list, or the first value of a dict)."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (list, tuple)):
        for v in value:
            t = first_tensor(v)
            if t is not None:
                return t
    if isinstance(value, dict):
        for v in value.values():
            t = first_tensor(v)
            if t is not None:
                return t
    return None


class GradAtStepStart(Instrument):
    """‖g‖₂ of the gradients already in ``p.grad`` when the step began (0 after ``zero_grad``)."""

    name = "grad_at_step_start"
    local_only = True
    requires = ("grad_norms_at_start",)
    series = (
        SeriesInfo("grad_norm_at_step_start", "scalar", "‖.grad‖₂ before this step's backward",
                   "0 (zero_grad was called)", group="health"),
    )

    def __init__(self, schedule: Any = None):
        super().__init__(schedule)
        self._held: torch.Tensor | None = None

    def compute(self, ctx: StepContext) -> dict[str, Any]:
        norms = ctx.get("grad_norms_at_start")
        if norms is None:
            return {"grad_norm_at_step_start": 0.0}
        if ctx.optimizer is not None:
            # only the optimizer's parameters are zeroed by optimizer.zero_grad(); the others are reported
            # by the parameter-not-in-optimizer check
            if self._held is None or self._held.shape != norms.shape:
                ids = {id(p) for g in ctx.optimizer.param_groups for p in g["params"]}
                self._held = torch.tensor([id(p) in ids for p in ctx.params], dtype=torch.float64)
            norms = norms * self._held.to(norms.device)
        return {"grad_norm_at_step_start": norms.square().sum().sqrt()}


class LossInput(Instrument):
    """Statistics of the loss function's first argument (the model's output as the loss sees it).

    ``loss_input_min``/``max``, and ``loss_input_sum_error``: max over samples of |Σ_c x_c − 1| along the class
    dimension (dimension 1), which is ~0 exactly when the rows are probability vectors.
    """

    name = "loss_input"
    local_only = True
    default_schedule = first(3) | every(10)
    series = (
        SeriesInfo("loss_input_min", "scalar", "smallest value fed to the loss", group="health"),
        SeriesInfo("loss_input_max", "scalar", "largest value fed to the loss", group="health"),
        SeriesInfo("loss_input_sum_error", "scalar", "max |Σ_c x_c − 1| over samples (0: probabilities)",
                   "far from 0 for logits", group="health"),
    )

    def compute(self, ctx: StepContext) -> dict[str, Any]:
        x = ctx.model_output
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.numel() == 0:
            return {}
        x = x.detach()
        out = {"loss_input_min": x.min(), "loss_input_max": x.max()}
        if x.dim() >= 2 and x.shape[1] > 1:
            out["loss_input_sum_error"] = (x.sum(dim=1) - 1).abs().max()
        # for the checks only (rank-local statistics: not recorded as series, which must be global)
        ctx.extras["loss_input"] = {k: float(v) for k, v in out.items()}
        return {}


class InputScale(Instrument):
    """Per-feature RMS of the inputs, accumulated over the evaluations so far.

    A feature is an input column (2-D inputs), a channel (4-D/5-D images), or the last dimension (3-D
    sequences). Features that are exactly zero on every batch seen (e.g. blank border pixels) are left out.
    Series: ``input_feature_rms_ratio`` = largest / median feature RMS (the median, not the smallest: after
    standardisation a rarely non-zero pixel has a tiny RMS on most batches), ``input_feature_rms_median``.
    """

    name = "input_scale"
    local_only = True
    default_schedule = first(5) | every(50)
    series = (
        SeriesInfo("input_feature_rms_ratio", "scalar", "largest / median per-feature RMS of the inputs",
                   "below 100", log_scale=True, group="health"),
        SeriesInfo("input_feature_rms_median", "scalar", "median per-feature RMS of the inputs",
                   "about 1", log_scale=True, group="health"),
    )

    def __init__(self, schedule: Any = None):
        super().__init__(schedule)
        self._sum_sq: torch.Tensor | None = None
        self._count = 0
        self.last_rms: torch.Tensor | None = None

    def compute(self, ctx: StepContext) -> dict[str, Any]:
        x = first_tensor(ctx.inputs)
        if x is None or not x.is_floating_point() or x.dim() < 2 or x.numel() == 0:
            return {}
        x = x.detach().to(torch.float64)
        d = unit_dim(x)
        dims = [i for i in range(x.dim()) if i != d]
        sum_sq = x.square().sum(dim=dims)
        n = x.numel() // x.shape[d]
        if self._sum_sq is None or self._sum_sq.shape != sum_sq.shape:
            self._sum_sq, self._count = sum_sq, n
        else:
            self._sum_sq, self._count = self._sum_sq + sum_sq, self._count + n
        rms = (self._sum_sq / self._count).sqrt()
        self.last_rms = rms
        live = rms[rms > 0]
        if live.numel() < 2:
            return {}
        # for the checks only (rank-local statistics: not recorded as series, which must be global)
        ctx.extras["input_scale"] = {"input_feature_rms_ratio": float(live.max() / live.median()),
                                     "input_feature_rms_median": float(live.median())}
        return {}


class NonFiniteOrigin(Instrument):
    """Where NaN/inf first appeared, on steps whose loss or gradients are non-finite (else nothing).

    The step's forward is replayed on the same batch with hooks on every leaf module (random-number state
    and buffers such as BatchNorm running statistics are saved and restored, so the user's training is not
    changed); the first module in execution order whose output is non-finite is the origin. If the forward is
    finite, the backward is replayed and the module nearest the loss whose *input* gradient is non-finite
    while its output gradient is finite is the origin. The result goes to ``ctx.extras["nonfinite_origin"]``.
    """

    name = "nonfinite_origin"
    local_only = True
    requires = ("grad_norms",)
    series = ()

    def __init__(self, schedule: Any = None):
        super().__init__(schedule)
        self._located = 0

    def compute(self, ctx: StepContext) -> dict[str, Any]:
        # reuse the verdicts of the ``nonfinite`` instrument when it ran this step (no second device sync)
        seen = ctx.values
        if "nonfinite_loss" in seen:
            loss_bad = float(seen["nonfinite_loss"][1]) > 0
        else:
            loss_bad = ctx.loss is not None and not bool(torch.isfinite(ctx.loss.detach()).all())
        if "nonfinite_grads" in seen:
            grads_bad = float(seen["nonfinite_grads"][1]) > 0
        else:
            grads_bad = not math.isfinite(sum(ctx.floats("grad_norms")))  # norms ≥ 0: finite iff all are
        if not (loss_bad or grads_bad):
            return {}
        # a run that stays NaN would replay every step: locate the first few, then every 100th
        self._located += 1
        if self._located <= 5 or self._located % 100 == 0:
            ctx.extras["nonfinite_origin"] = locate_nonfinite(ctx, loss_bad=loss_bad, grads_bad=grads_bad)
        return {}


def _leaf_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if not any(True for _ in m.children())]


def _bad(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all())


def locate_nonfinite(ctx: StepContext, *, loss_bad: bool, grads_bad: bool) -> dict[str, Any]:
    """Find the origin of non-finite values on this step. Returns ``{"where", "stage", "detail"}``."""
    model = ctx.model
    # replay on the module inside DistributedDataParallel: its wrapper would expect a synchronised backward
    model = getattr(model, "module", model) if type(model).__name__ == "DistributedDataParallel" else model
    inputs = ctx.inputs
    x = first_tensor(inputs)
    if x is not None and _bad(x):
        n = int((~torch.isfinite(x)).sum())
        return {"where": "inputs", "stage": "data", "detail": f"{n} of {x.numel()} input entries are NaN/inf"}
    for name, p in zip(ctx.param_names, ctx.params):
        if _bad(p.detach()):
            mod = _module_of(model, name)
            return {"where": mod, "stage": "parameters",
                    "detail": f"parameter {name} already holds {int((~torch.isfinite(p)).sum())} NaN/inf entries"}
    if inputs is None:
        return {"where": "", "stage": "unknown", "detail": "no inputs were passed to inspector.step(x, y)"}
    leaves = _leaf_modules(model)
    outputs: list[tuple[str, nn.Module, torch.Tensor]] = []
    handles = []

    def hook_for(name: str) -> Any:
        def hook(mod: nn.Module, args: Any, out: Any) -> None:
            t = first_tensor(out)
            if isinstance(t, torch.Tensor) and t.is_floating_point():
                outputs.append((name, mod, t))

        return hook

    buffers = {k: v.detach().clone() for k, v in model.named_buffers()}
    try:
        for name, mod in leaves:
            handles.append(mod.register_forward_hook(hook_for(name)))
        with torch.random.fork_rng(devices=[]), torch.enable_grad():
            if isinstance(inputs, (list, tuple)):
                out = model(*inputs)
            elif isinstance(inputs, dict):
                out = model(**inputs)
            else:
                out = model(inputs)
        for name, mod, t in outputs:
            if _bad(t):
                return {"where": module_label(name, mod), "stage": "forward",
                        "detail": f"output of {module_label(name, mod)} has {int((~torch.isfinite(t)).sum())} "
                                  f"NaN/inf of {t.numel()} entries while its inputs were finite"}
        out_t = first_tensor(out)
        loss_fn = ctx.inspector._user_loss_fn
        target = ctx.loss_target if ctx.loss_target is not None else ctx.targets
        if loss_fn is None or out_t is None or target is None:
            return {"where": "loss", "stage": "loss", "detail": "the model's output is finite; the loss is not"} \
                if loss_bad else {"where": "", "stage": "backward", "detail": "no loss function to replay backward"}
        loss = loss_fn(out, target)
        if _bad(loss.detach()):
            return {"where": f"loss ({type(loss_fn).__name__})", "stage": "loss",
                    "detail": f"the model's output is finite but the loss is {float(loss):.3g}"}
        tensors = [t for _, _, t in outputs if t.requires_grad]
        names = [(n, m) for n, m, t in outputs if t.requires_grad]
        grads = torch.autograd.grad(loss, tensors, allow_unused=True) if tensors else ()
        bad = [g is not None and _bad(g) for g in grads]
        if any(bad):
            last_bad = max(i for i, b in enumerate(bad) if b)
            if last_bad + 1 < len(names):
                n, m = names[last_bad + 1]
                return {"where": module_label(n, m), "stage": "backward",
                        "detail": f"the gradient w.r.t. the output of {module_label(n, m)} is finite, w.r.t. its "
                                  "input it is NaN/inf"}
            return {"where": f"loss ({type(loss_fn).__name__})", "stage": "backward",
                    "detail": "the gradient of the loss w.r.t. the model's output is NaN/inf"}
        for name, g in reversed(list(zip(ctx.param_names, ctx.get("grads")))):
            if _bad(g):
                return {"where": _module_of(model, name), "stage": "backward",
                        "detail": f"the gradient of parameter {name} is NaN/inf"}
        return {"where": "", "stage": "unknown", "detail": "the replay was finite (non-deterministic fault?)"}
    except Exception as error:  # the replay is best effort; never fail the user's step
        return {"where": "", "stage": "unknown", "detail": f"could not replay the step: {error}"}
    finally:
        for h in handles:
            h.remove()
        with torch.no_grad(), contextlib.suppress(Exception):
            for k, v in model.named_buffers():
                if k in buffers:
                    v.copy_(buffers[k])


def _module_of(model: nn.Module, param_name: str) -> str:
    mod_name = param_name.rpartition(".")[0]
    try:
        mod = model.get_submodule(mod_name) if mod_name else model
    except AttributeError:
        return param_name
    return module_label(mod_name, mod)

