"""Preflight: checks to run *before* training, on the user's model, loss and one data sample.

    report = trainspect.preflight(model, loss_fn, inputs, targets,
                                  optimizer_factory=lambda params: torch.optim.Adam(params, lr=1e-3))
    print(report)            # verdicts with evidence and remedies
    report.findings          # list[trainspect.Finding]

Checks (each can be turned off with ``checks=[...]``):

* ``gradients``: float64 finite-difference gradient check per parameter tensor (``gradcheck.py``);
* ``initial_loss``: the loss at initialisation against its expected value (ln C for C-class cross-entropy and
  language models, ln 2 per output for binary cross-entropy, E[y²] for MSE with near-zero outputs), and
  probabilities fed to ``nn.CrossEntropyLoss`` (``double-softmax``);
* ``no_gradient``: trainable parameters that receive no gradient from the loss;
* ``batch_independence``: sample i's output must not depend on sample j's input (``independence.py``);
* ``overfit``: fit 1 example, then ~100 examples, within a step budget; if the set cannot be fitted,
  retrain on zeroed inputs (does the model use its input?) and, for a plain ``nn.Sequential`` MLP, train a
  small known-good MLP on the same set as a control (``fitting.py``).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from trainspect.checks.base import Finding
from trainspect.checks.preflight.fitting import (
    FitResult,
    OptimizerFactory,
    batch_len,
    fit,
    simple_stack_control,
    take,
    zeros_like_inputs,
)
from trainspect.checks.preflight.gradcheck import call_model, finite_difference_check
from trainspect.checks.preflight.independence import batch_dependence

ALL_CHECKS = ("gradients", "initial_loss", "no_gradient", "batch_independence", "overfit")


@dataclass
class PreflightReport:
    """The preflight's verdicts: ``findings`` (problems) and ``results`` (numbers of every check, passed or not)."""

    findings: list[Finding] = field(default_factory=list)
    results: dict[str, Any] = field(default_factory=dict)
    passed: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No finding of severity error."""
        return not any(f.severity == "error" for f in self.findings)

    def codes(self) -> list[str]:
        return [f.code for f in self.findings]

    def __str__(self) -> str:
        lines = ["trainspect preflight"]
        for name in self.passed:
            lines.append(f"  ok    {name}: {self.results.get(name, {}).get('summary', '')}")
        for f in self.findings:
            lines.append(f"  {f.severity.upper():5s} {f.code}{' at ' + f.location if f.location else ''}: {f.title}")
            lines.append(f"        {f.explanation}")
            for r in f.remedies:
                lines.append(f"        try: {r}")
        lines.append("verdict: " + ("ready to train" if self.ok else "fix the errors above before training"))
        return "\n".join(lines)


def default_optimizer_factory(params: list[nn.Parameter]) -> torch.optim.Optimizer:
    """Adam at 3e-4... 1e-3 is the "safe" default (Karpathy's recipe); 1e-3 fits tiny sets in few steps."""
    return torch.optim.Adam(params, lr=1e-3)


def factory_from_optimizer(optimizer: torch.optim.Optimizer) -> OptimizerFactory:
    """Build fresh optimizers of the same class and defaults as ``optimizer`` (for the CLI)."""
    cls, defaults = type(optimizer), dict(optimizer.defaults)
    return lambda params: cls(params, **defaults)


def expected_initial_loss(loss_fn: Any, output: torch.Tensor, targets: Any) -> tuple[float, str] | None:
    """The loss of an uninformed model, and how it was derived; None if the loss kind is unknown."""
    if isinstance(loss_fn, (nn.CrossEntropyLoss, nn.NLLLoss)) and output.dim() >= 2:
        c = int(output.shape[1])
        return math.log(c), f"ln C with C = {c} classes (uniform prediction)"
    if isinstance(loss_fn, (nn.BCEWithLogitsLoss, nn.BCELoss)):
        return math.log(2.0), "ln 2 per output (prediction 0.5)"
    if isinstance(loss_fn, nn.MSELoss) and isinstance(targets, torch.Tensor):
        return float(targets.double().square().mean()), "E[y²] (outputs near 0)"
    if isinstance(loss_fn, nn.L1Loss) and isinstance(targets, torch.Tensor):
        return float(targets.double().abs().mean()), "E[|y|] (outputs near 0)"
    return None


def preflight(
    model: nn.Module,
    loss_fn: Callable[..., torch.Tensor],
    inputs: Any,
    targets: Any,
    optimizer_factory: OptimizerFactory | None = None,
    *,
    checks: Iterable[str] = ALL_CHECKS,
    seed: int = 0,
    gradcheck_samples: int = 4,
    overfit_one_steps: int = 200,
    overfit_set_size: int = 100,
    overfit_set_steps: int = 500,
    fit_fraction_one: float = 0.05,
    fit_fraction_set: float = 0.2,
    min_accuracy: float = 0.95,
    initial_loss_tolerance: float = 0.5,
    gradient_error: float = 1e-2,
    gradient_warning: float = 1e-4,
) -> PreflightReport:
    """Run the preflight checks on ``model`` (never modified: every check works on a deep copy).

    Args:
        model, loss_fn: the model and loss as used in training (``loss_fn(model(inputs), targets)``).
        inputs, targets: a data sample, ideally ≥ 100 examples (the ~100-example fit uses up to
            ``overfit_set_size`` of them).
        optimizer_factory: ``params -> optimizer`` for the fits (default: Adam, lr 1e-3).
        checks: which checks to run (``ALL_CHECKS``).
        gradcheck_samples: examples used by the finite-difference check (it costs 2 forwards per entry).
        overfit_*: step budgets and set size of the fits; ``fit_fraction_*``: the loss must fall to this
            fraction of its start; ``min_accuracy``: for classification.
        initial_loss_tolerance: flag |L₀ − expected| > tolerance × expected (TheDeepChecker uses 1.0).
        gradient_error, gradient_warning: relative-error thresholds of the gradient check (CS231n).

    Returns:
        A :class:`PreflightReport`; ``print(report)`` shows it.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"preflight: model must be a torch.nn.Module, got {type(model).__name__}")
    if not callable(loss_fn):
        raise TypeError(f"preflight: loss_fn must be callable, got {type(loss_fn).__name__}")
    checks = tuple(checks)
    unknown = set(checks) - set(ALL_CHECKS)
    if unknown:
        raise ValueError(f"preflight: unknown check(s) {sorted(unknown)}; known: {', '.join(ALL_CHECKS)}")
    n = batch_len(inputs)
    if n < 1:
        raise ValueError("preflight: the data sample is empty")
    factory = optimizer_factory or default_optimizer_factory
    report = PreflightReport()
    module_class = {name: type(mod).__name__ for name, mod in model.named_modules()}

    def where(param_name: str) -> str:
        mod = param_name.rpartition(".")[0]
        return f"{param_name} ({module_class.get(mod, type(model).__name__)})"

    if "gradients" in checks:
        _gradients(report, model, loss_fn, take(inputs, gradcheck_samples), take(targets, gradcheck_samples),
                   seed, gradient_error, gradient_warning, where)
    if "initial_loss" in checks:
        _initial_loss(report, model, loss_fn, inputs, targets, initial_loss_tolerance, seed)
    if "no_gradient" in checks:
        _no_gradient(report, model, loss_fn, inputs, targets, where)
    if "batch_independence" in checks:
        _independence(report, model, inputs)
    if "overfit" in checks:
        _overfit(report, model, loss_fn, inputs, targets, factory, seed, overfit_one_steps, overfit_set_size,
                 overfit_set_steps, fit_fraction_one, fit_fraction_set, min_accuracy)
    return report


# -- the checks ------------------------------------------------------------------------------------------
def _gradients(report, model, loss_fn, x, y, seed, error, warning, where) -> None:  # type: ignore[no-untyped-def]
    per = finite_difference_check(model, loss_fn, x, y, seed=seed)
    worst = max((v["relative_error"] for v in per.values()), default=0.0)
    report.results["gradients"] = {"per_parameter": per, "max_relative_error": worst,
                                   "summary": f"max relative error {worst:.2g} over {len(per)} tensors "
                                              f"({sum(v['skipped_kinks'] for v in per.values())} entries "
                                              "at kinks skipped)"}
    bad = [(k, v) for k, v in per.items() if v["relative_error"] > warning and v["checked"] > 0]
    for name, v in bad:
        severe = v["relative_error"] > error
        report.findings.append(Finding(
            code="gradient-mismatch", severity="error" if severe else "warning",
            title=f"Back-propagated gradient of {name} disagrees with finite differences "
                  f"(relative error {v['relative_error']:.2g})",
            explanation=(
                "In float64, with dropout off and kinks skipped, autograd's gradient and the central difference "
                f"should agree to ~1e-7; here they differ by {v['relative_error']:.2g} (‖autograd‖ "
                f"{v['analytic_norm']:.3g}, ‖numeric‖ {v['numeric_norm']:.3g}). The loss depends on this parameter "
                "in a way autograd does not see, or a custom backward is wrong."
            ),
            evidence={**v, "threshold_error": error, "threshold_warning": warning,
                      "formula": "‖a − n‖ / (‖a‖ + ‖n‖), central differences h = 1e-6"},
            remedies=(
                "Check custom torch.autograd.Function backward() implementations against torch.autograd.gradcheck.",
                "Look for .detach(), .data, torch.no_grad(), in-place edits of saved tensors, or "
                "non-differentiable ops (round, argmax, integer casts) between this parameter and the loss.",
                "Check gradient hooks (register_hook) that rescale or zero gradients.",
            ),
            location=where(name),
        ))
    if not bad:
        report.passed.append("gradients")


def _initial_loss(report, model, loss_fn, inputs, targets, tolerance, seed) -> None:  # type: ignore[no-untyped-def]
    m = copy.deepcopy(model).eval()
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        out = call_model(m, inputs)
        loss = float(loss_fn(out, targets))
    if (isinstance(loss_fn, nn.CrossEntropyLoss) and isinstance(out, torch.Tensor) and out.dim() >= 2
            and out.shape[1] > 1 and bool((out >= 0).all()) and bool(((out.sum(1) - 1).abs() < 1e-3).all())):
        report.findings.append(Finding(
            code="double-softmax", severity="error", title="nn.CrossEntropyLoss receives probabilities, not logits",
            explanation="The model's output rows lie in [0, 1] and sum to 1: it ends with a softmax, and "
                        "CrossEntropyLoss applies log-softmax again, which squashes the gradients.",
            evidence={"min": float(out.min()), "max": float(out.max()), "threshold": "rows summing to 1 ± 1e-3"},
            remedies=("Remove the final softmax; pass raw logits to nn.CrossEntropyLoss.",),
            location=f"loss ({type(loss_fn).__name__})",
        ))
    expected = expected_initial_loss(loss_fn, out, targets) if isinstance(out, torch.Tensor) else None
    if expected is None:
        report.results["initial_loss"] = {"loss": loss, "summary": f"{loss:.4g} (no expected value for "
                                                                    f"{type(loss_fn).__name__})"}
        report.passed.append("initial_loss")
        return
    value, how = expected
    off = abs(loss - value) > tolerance * value if value > 0 else loss > 1e-12
    report.results["initial_loss"] = {"loss": loss, "expected": value, "derivation": how,
                                      "summary": f"{loss:.4g}, expected ≈ {value:.4g} ({how})"}
    if not off:
        report.passed.append("initial_loss")
        return
    high = loss > value
    report.findings.append(Finding(
        code="initial-loss-off", severity="warning",
        title=f"Initial loss {loss:.4g} is far from the expected {value:.4g} ({how})",
        explanation=(
            f"At initialisation the model is {loss / value:.1f}× worse than an uninformed guess: its outputs are "
             "too large and confidently wrong, which wastes the first steps and can saturate or destabilise "
             "training." if high else
             "At initialisation the loss is already well below an uninformed guess: check for label leakage into "
             "the inputs, a loss that is not averaged correctly, or pretrained weights you did not expect."
        ),
        evidence={"initial_loss": loss, "expected": value, "derivation": how,
                  "threshold": f"|L0 − expected| > {tolerance} × expected (TheDeepChecker: 1.0)"},
        remedies=(
            ("Use the default (Kaiming/Xavier) initialisation; initialise the last layer's weights small and its "
             "bias to the log class prior (Karpathy's 'init well').", "Normalise the inputs.")
            if high else ("Check that inputs do not contain the label, and that the loss uses reduction='mean'.",)
        ),
        location="",
    ))


def _no_gradient(report, model, loss_fn, inputs, targets, where) -> None:  # type: ignore[no-untyped-def]
    m = copy.deepcopy(model)
    m.train()
    loss = loss_fn(call_model(m, inputs), targets)
    named = [(k, p) for k, p in m.named_parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
    missing = [k for (k, _), g in zip(named, grads) if g is None or not bool(g.ne(0).any())]
    report.results["no_gradient"] = {"parameters": len(named), "without_gradient": missing,
                                     "summary": f"{len(named) - len(missing)}/{len(named)} parameter tensors get a "
                                                "gradient"}
    for k in missing:
        report.findings.append(Finding(
            code="no-gradient", severity="error", title=f"{k} receives no gradient from the loss",
            explanation="Its gradient is None or exactly zero on the sample: it cannot learn. The graph is cut "
                        "before it (.detach(), .data, torch.no_grad(), .item()), or it is not used in forward().",
            evidence={"parameter": k, "gradient": "None or 0"},
            remedies=("Find where the forward leaves autograd between this parameter and the loss.",
                      "If the module is unused on purpose, delete it or set requires_grad_(False)."),
            location=where(k),
        ))
    if not missing:
        report.passed.append("no_gradient")


def _independence(report, model, inputs) -> None:  # type: ignore[no-untyped-def]
    res = batch_dependence(model, inputs)
    if not res["checked"]:
        report.results["batch_independence"] = {**res, "summary": f"skipped: {res['reason']}"}
        return
    report.results["batch_independence"] = {**res, "summary": f"outputs of {res['samples']} samples depend only on "
                                                               "their own input" if not res["leaks"] else ""}
    if not res["leaks"]:
        report.passed.append("batch_independence")
        return
    i, j, ratio = max(res["leaks"], key=lambda t: t[2])
    report.findings.append(Finding(
        code="batch-mixing", severity="error",
        title=f"The output for sample {i} depends on the input of sample {j}",
        explanation=(
            f"In eval mode, ∂ output[{i}] / ∂ input[{j}] is non-zero ({ratio:.2g}× the sample's own gradient): "
            "information flows between examples of the batch. Usually a .view()/.reshape() that mixes the batch "
            "dimension with another (where a .transpose()/.permute() was meant), a softmax or normalisation over "
            "dim 0, or attention over the batch (batch_first mismatch)."
        ),
        evidence={"leaks": res["leaks"][:10], "max_ratio": ratio, "threshold": "exactly 0 (ratio > 1e-6)"},
        remedies=("Print the shapes through forward(); replace .view(...) on permuted data by .permute(...) or "
                  "einops.rearrange with named axes.",
                  "Check batch_first= of RNN/attention layers and the dim= of softmax/normalisation."),
        location="",
    ))


def _fit_summary(r: FitResult) -> str:
    acc = f", accuracy {r.accuracy:.0%}" if r.accuracy is not None else ""
    return f"{r.examples} example(s), {r.steps} steps: loss {r.start_loss:.3g} → {r.final_loss:.3g}{acc}"


def _overfit(report, model, loss_fn, inputs, targets, factory, seed, one_steps, set_size, set_steps,  # type: ignore[no-untyped-def]
             frac_one, frac_set, min_acc) -> None:
    one = fit(model, loss_fn, take(inputs, 1), take(targets, 1), factory, steps=one_steps, fit_fraction=frac_one,
              min_accuracy=1.0, seed=seed, eval_mode=True)
    report.results["overfit_one"] = {**one.__dict__, "summary": _fit_summary(one)}
    if one.fitted:
        report.passed.append("overfit_one")
    else:
        report.findings.append(_fit_finding("cannot-overfit-one", one, frac_one))
    k = min(set_size, batch_len(inputs))
    if k < 2:
        return
    xs, ys = take(inputs, k), take(targets, k)
    many = fit(model, loss_fn, xs, ys, factory, steps=set_steps, fit_fraction=frac_set, min_accuracy=min_acc,
               seed=seed)
    report.results["overfit_set"] = {**many.__dict__, "summary": _fit_summary(many)}
    if many.fitted:
        report.passed.append("overfit_set")
        return
    report.findings.append(_fit_finding("cannot-overfit-small-set", many, frac_set))
    # controls: does the model use its input at all? does a small known-good network fit the same set?
    zero = fit(model, loss_fn, zeros_like_inputs(xs), ys, factory, steps=set_steps, fit_fraction=frac_set,
               min_accuracy=min_acc, seed=seed)
    report.results["zero_input_control"] = {**zero.__dict__, "summary": _fit_summary(zero)}
    if not many.nonfinite and not zero.nonfinite and many.final_loss >= 0.9 * zero.final_loss:
        report.findings.append(Finding(
            code="model-ignores-input", severity="error",
            title="The model fits its training set no better than with all inputs set to zero",
            explanation=(f"Trained on the real inputs the loss reaches {many.final_loss:.3g}; on zeroed inputs "
                         f"{zero.final_loss:.3g}. The model's output does not depend on its input (TheDeepChecker's "
                         "zeroed-input test): the input is overwritten, detached or not connected."),
            evidence={"loss_real_inputs": many.final_loss, "loss_zero_inputs": zero.final_loss,
                      "threshold": "real ≥ 0.9 × zero"},
            remedies=("Check that forward() uses its argument (not a stale attribute or a constant).",
                      "Check the data pipeline: are the inputs all identical or all zero?"),
            location="",
        ))
    small = simple_stack_control(model)
    if small is not None:
        torch.manual_seed(seed)
        control = fit(small, loss_fn, xs, ys, default_optimizer_factory, steps=set_steps,
                      fit_fraction=frac_set, min_accuracy=min_acc, seed=seed)
        report.results["small_network_control"] = {**control.__dict__, "summary": _fit_summary(control)}
        if control.fitted:
            report.findings.append(Finding(
                code="smaller-network-fits", severity="error",
                title="A small 1-hidden-layer MLP fits the set that this model cannot",
                explanation=(f"A 64-unit MLP trained with Adam (lr 1e-3) reaches loss {control.final_loss:.3g} "
                             f"on the same {k} examples, the model only {many.final_loss:.3g}: the problem is the "
                             "model's initialisation, depth/activations or the optimizer settings, not the data."),
                evidence={"model_loss": many.final_loss, "control_loss": control.final_loss,
                          "control": "Linear(in, 64) → ReLU → Linear(64, out), Adam 1e-3"},
                remedies=("Use default initialisation, ReLU activations and normalisation layers; add depth back "
                          "one piece at a time (Karpathy's recipe).",
                          "Try the optimizer the control used (Adam, lr 1e-3)."),
                location="",
            ))


def _fit_finding(code: str, r: FitResult, frac: float) -> Finding:
    what = "1 example" if code == "cannot-overfit-one" else f"{r.examples} examples"
    acc = f" and accuracy {r.accuracy:.0%}" if r.accuracy is not None else ""
    return Finding(
        code=code, severity="error",
        title=f"Cannot overfit {what} in {r.steps} steps (loss {r.start_loss:.3g} → {r.final_loss:.3g}{acc})",
        explanation=(
            ("The loss became NaN/inf while fitting. " if r.nonfinite else "") +
            f"A working model and optimizer drive the loss on {what} close to zero quickly (Karpathy: 'overfit one "
            "batch'); this one did not, so full training cannot work either. Common causes: a learning rate far off, "
            "a loss/output mismatch (softmax before CrossEntropyLoss), labels in the wrong format, a cut graph, "
            "dead or saturated units."
        ),
        evidence={"examples": r.examples, "steps": r.steps, "start_loss": r.start_loss, "best_loss": r.final_loss,
                  "accuracy": r.accuracy, "threshold": f"loss ≤ {frac} × start" + (", all correct" if r.accuracy
                                                                                  is not None else "")},
        remedies=("Read the other preflight findings first (gradient check, initial loss, no gradient).",
                  "Try Adam with lr 1e-3 (optimizer_factory=...); remove regularisation (dropout, weight decay).",
                  "Check the output activation against the loss (logits for CrossEntropyLoss/BCEWithLogitsLoss)."),
        location="",
    )


__all__ = ["ALL_CHECKS", "PreflightReport", "expected_initial_loss", "factory_from_optimizer", "preflight"]
