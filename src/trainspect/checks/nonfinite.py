"""Non-finite values: NaN/inf in the loss, the gradients or the parameters, with where they first appeared.

Every published detector flags a NaN loss (AUTOTRAINER, DeepDiagnosis, UMLAUT, TheDeepChecker, SageMaker
Debugger's ``exploding_tensor``); ``torch.autograd.detect_anomaly`` localises backward NaNs only, at a large
cost on every step. Here the step is checked every time for free (the norms are computed anyway) and the
localisation (``instruments/health.py::NonFiniteOrigin``) replays only the faulty step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from trainspect.checks._common import ThresholdCheck
from trainspect.checks.base import Finding

if TYPE_CHECKING:
    from trainspect.engine.context import StepContext
    from trainspect.engine.record import StepRecord

REMEDIES = {
    "forward": (
        "Look at the operation inside the named module: log/sqrt/division of values that can reach 0 or below "
        "(add an epsilon or clamp), exp of large values (use logsumexp / log_softmax), fp16 overflow "
        "(use bf16 or a GradScaler).",
        "If it happens after some steps, the weights grew until the layer overflowed: lower the learning rate, "
        "add warmup or gradient clipping (torch.nn.utils.clip_grad_norm_).",
    ),
    "backward": (
        "The named module's backward divides by something that is zero here (sqrt, norm, pow with a "
        "fractional exponent at 0, acos/asin at ±1): add an epsilon inside the operation.",
        "Clip gradients (torch.nn.utils.clip_grad_norm_) and lower the learning rate if the gradient overflowed.",
    ),
    "loss": (
        "The loss received finite outputs but produced NaN/inf: check for log(0) (use the logits version: "
        "nn.CrossEntropyLoss / nn.BCEWithLogitsLoss on raw outputs), targets outside the valid range, or "
        "a division by an empty batch.",
    ),
    "data": ("The batch itself contains NaN/inf: clean or impute the data, check the preprocessing.",),
    "parameters": (
        "A previous update wrote NaN/inf into the weights: lower the learning rate, add gradient clipping, and "
        "check the step where the gradients first became non-finite.",
    ),
    "unknown": ("Rerun with torch.autograd.set_detect_anomaly(True) around the failing step.",),
}


class NonFiniteCheck(ThresholdCheck):
    """NaN/inf in the loss, gradients or parameters (any occurrence is an error; there is no threshold)."""

    name = "nonfinite"
    deferrable = True  # reads the record, the run's structure and the step's extras only
    codes = ("nonfinite-loss", "nonfinite-gradients", "nonfinite-parameters")
    instruments: ClassVar[dict[str, Any]] = {"nonfinite": 1, "nonfinite_origin": 1}

    def observe(self, record: StepRecord, ctx: StepContext) -> list[Finding]:
        loss_bad = record.scalars.get("nonfinite_loss", 0.0) > 0
        n_grads = record.scalars.get("nonfinite_grads", 0.0)
        n_params = record.scalars.get("nonfinite_params", 0.0)
        if not (loss_bad or n_grads > 0 or n_params > 0):
            return []
        origin = ctx.extras.get("nonfinite_origin", {"where": "", "stage": "unknown", "detail": ""})
        if loss_bad:
            code, what = "nonfinite-loss", "The loss is NaN/inf"
        elif n_grads > 0:
            code, what = "nonfinite-gradients", f"{int(n_grads)} gradient entries are NaN/inf"
        else:
            code, what = "nonfinite-parameters", f"{int(n_params)} parameter entries are NaN/inf"
        where = origin.get("where", "")
        stage = origin.get("stage", "unknown")
        title = f"{what}" + (f"; first non-finite {stage} at {where}" if where else "")
        return [Finding(
            code=code, severity="error", title=title,
            explanation=(
                f"{what} at step {record.step}. {origin.get('detail', '')}. Once NaN/inf reaches the weights, "
                "every later step is wasted."
            ),
            evidence={"step": record.step, "nonfinite_loss": float(loss_bad), "nonfinite_gradient_entries":
                      float(n_grads), "nonfinite_parameter_entries": float(n_params), "origin_stage": stage,
                      "origin": where, "threshold": "any non-finite value"},
            remedies=REMEDIES.get(stage, REMEDIES["unknown"]),
            location=where,
        )]
