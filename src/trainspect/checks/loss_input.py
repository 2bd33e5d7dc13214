"""What the model feeds the loss: probabilities where the loss expects logits or log-probabilities.

* ``double-softmax``: ``nn.CrossEntropyLoss`` applies log-softmax itself; if its input rows are already
  probability vectors (all entries in [0, 1] and each row summing to 1 within ``sum_tolerance``), the model
  ends with a softmax: gradients shrink by up to the number of classes and training stalls (UMLAUT's
  "softmax then from_logits=False" rule; AUTOTRAINER/DeepDiagnosis "improper output activation").
* ``nll-without-log-softmax``: ``nn.NLLLoss`` expects log-probabilities (≤ 0); positive inputs mean the
  model outputs probabilities or raw scores.
* ``double-sigmoid``: ``nn.BCEWithLogitsLoss`` applies the sigmoid itself; inputs that all lie in [0, 1]
  on ``evaluations`` (3) checks in a row mean the model already applied one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from torch import nn

from trainspect.checks._common import ThresholdCheck, fmt
from trainspect.checks.base import Finding

if TYPE_CHECKING:
    from trainspect.engine.context import StepContext
    from trainspect.engine.record import StepRecord


class LossInputCheck(ThresholdCheck):
    """``double-softmax``, ``nll-without-log-softmax``, ``double-sigmoid``."""

    name = "loss_input"
    deferrable = True  # reads the record, the run's structure and the step's extras only
    codes = ("double-softmax", "nll-without-log-softmax", "double-sigmoid")
    instruments: ClassVar[dict[str, Any]] = {"loss_input": None}
    defaults: ClassVar[dict[str, float]] = {"sum_tolerance": 1e-3, "evaluations": 3}

    def __init__(self, **thresholds: float):
        super().__init__(**thresholds)
        self._streak = {code: 0 for code in self.codes}

    def observe(self, record: StepRecord, ctx: StepContext) -> list[Finding]:
        stats = ctx.extras.get("loss_input", {})
        lo = stats.get("loss_input_min")
        hi = stats.get("loss_input_max")
        if lo is None or hi is None:
            return []
        loss_fn = ctx.inspector._user_loss_fn
        sum_err = stats.get("loss_input_sum_error")
        code = None
        if isinstance(loss_fn, nn.CrossEntropyLoss):
            if lo >= 0 and hi <= 1 and sum_err is not None and sum_err < self.t["sum_tolerance"]:
                code = "double-softmax"
        elif isinstance(loss_fn, nn.NLLLoss):
            if hi > 0:
                code = "nll-without-log-softmax"
        elif isinstance(loss_fn, nn.BCEWithLogitsLoss) and lo >= 0 and hi <= 1:
            code = "double-sigmoid"
        for c in self._streak:
            self._streak[c] = self._streak[c] + 1 if c == code else 0
        if code is None or self._streak[code] < self.t["evaluations"]:
            return []
        loss_name = type(loss_fn).__name__
        evidence = {"loss_input_min": lo, "loss_input_max": hi, "row_sum_error": sum_err,
                    "evaluations": self._streak[code]}
        if code == "double-softmax":
            return [Finding(
                code=code, severity="error", title=f"{loss_name} receives probabilities, not logits",
                explanation=(
                    f"Every row fed to {loss_name} lies in [0, 1] and sums to 1 (within {fmt(sum_err or 0)}): the "
                    "model ends with a softmax, and the loss applies log-softmax again. The double softmax "
                    "squashes the outputs, so gradients are tiny and the loss cannot go much below its start."
                ),
                evidence={**evidence, "threshold": f"rows in [0,1] summing to 1 ± {self.t['sum_tolerance']}"},
                remedies=("Remove the final nn.Softmax / F.softmax from the model; pass raw logits to "
                          "nn.CrossEntropyLoss (apply softmax only when you need probabilities at inference).",
                          "Or keep probabilities and use torch.log(p + eps) with nn.NLLLoss."),
                location=f"loss ({loss_name})",
            )]
        if code == "nll-without-log-softmax":
            return [Finding(
                code=code, severity="error", title="nn.NLLLoss receives values above 0, not log-probabilities",
                explanation=(
                    f"NLLLoss computes −input[target] and expects log-probabilities (≤ 0); its input reaches "
                    f"{fmt(hi)}. Without log_softmax the loss is unbounded below and meaningless."
                ),
                evidence={**evidence, "threshold": "max input ≤ 0"},
                remedies=("End the model with nn.LogSoftmax(dim=1), or pass raw logits to nn.CrossEntropyLoss.",),
                location=f"loss ({loss_name})",
            )]
        return [Finding(
            code=code, severity="warning", title="nn.BCEWithLogitsLoss receives values in [0, 1], not logits",
            explanation=(
                "All inputs to BCEWithLogitsLoss lie in [0, 1] on several checks: the model probably ends with a "
                "sigmoid, and the loss applies another one, so predictions can never go below 0.5 in effect."
            ),
            evidence={**evidence, "threshold": "all inputs in [0, 1]"},
            remedies=("Remove the final nn.Sigmoid from the model (keep it only for inference), or use nn.BCELoss.",),
            location=f"loss ({loss_name})",
        )]
