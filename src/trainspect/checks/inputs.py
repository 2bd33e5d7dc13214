"""Input features on very different scales, or inputs far from unit scale.

From ``instruments/health.py::InputScale`` (per-feature RMS accumulated over the first batches):

* ``input-feature-scales``: the largest feature RMS is more than ``ratio`` (1e2: two orders of magnitude)
  times the median feature RMS. Gradient steps are then dominated by the large features and the
  small ones are learned hundreds of times slower (LeCun et al., "Efficient BackProp", 1998, §4.3:
  inputs should have similar covariances). TheDeepChecker and UMLAUT check that inputs are normalised.
* ``inputs-not-normalized``: the median feature RMS is above ``max_scale`` (20), e.g. raw 0–255 pixels
  (UMLAUT and DeepDiagnosis flag inputs outside [−1, 1]; a factor 20 margin avoids alarms on data that is
  merely unnormalised but harmless, such as 0–16 counts).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch

from trainspect.checks._common import ThresholdCheck, fmt
from trainspect.checks.base import Finding

if TYPE_CHECKING:
    from trainspect.engine.context import StepContext
    from trainspect.engine.record import StepRecord

REMEDIES = (
    "Standardise each input feature with the training set's mean and standard deviation "
    "(sklearn.preprocessing.StandardScaler, or torchvision.transforms.Normalize for images).",
    "For heavy-tailed features (prices, counts) use log1p before standardising.",
)


class InputScaleCheck(ThresholdCheck):
    """``input-feature-scales`` and ``inputs-not-normalized`` (rules in the module docstring)."""

    name = "input_scale"
    deferrable = True  # reads the record, the run's structure and the step's extras only
    codes = ("input-feature-scales", "inputs-not-normalized")
    instruments: ClassVar[dict[str, Any]] = {"input_scale": None}
    defaults: ClassVar[dict[str, float]] = {"ratio": 1e2, "max_scale": 20.0, "evaluations": 3}

    def __init__(self, **thresholds: float):
        super().__init__(**thresholds)
        self._evaluations = 0

    def observe(self, record: StepRecord, ctx: StepContext) -> list[Finding]:
        stats = ctx.extras.get("input_scale", {})
        ratio = stats.get("input_feature_rms_ratio")
        scale = stats.get("input_feature_rms_median")
        if ratio is None or scale is None:
            return []
        self._evaluations += 1
        if self._evaluations < self.t["evaluations"]:
            return []
        out: list[Finding] = []
        if ratio > self.t["ratio"]:
            inst = next((i for i in ctx.inspector.instruments if i.name == "input_scale"), None)
            rms = getattr(inst, "last_rms", None)
            detail = {}
            if isinstance(rms, torch.Tensor):
                live = torch.nonzero(rms > 0).flatten()
                order = live[torch.argsort(rms[live])]
                detail = {"largest_features": {int(i): float(rms[i]) for i in order[-3:].flip(0)},
                          "smallest_features": {int(i): float(rms[i]) for i in order[:3]}}
            out.append(Finding(
                code="input-feature-scales", severity="warning",
                title=f"Input features differ in scale by {fmt(ratio)}×",
                explanation=(
                    f"The largest input feature has {fmt(ratio)}× the RMS of the median feature. With one "
                    "learning rate for all, the large features dominate the gradient and the small ones are "
                    "learned very slowly (or the large ones make training unstable)."
                ),
                evidence={"rms_ratio": ratio, "threshold": self.t["ratio"], **detail},
                remedies=REMEDIES, location="inputs",
            ))
        if scale > self.t["max_scale"]:
            out.append(Finding(
                code="inputs-not-normalized", severity="warning",
                title=f"Inputs are not normalised: typical feature RMS {fmt(scale)}",
                explanation=(
                    f"The median input feature has RMS {fmt(scale)} (about 1 is expected). Large inputs make the "
                    "first layer's pre-activations and gradients large, which saturates units and forces a tiny "
                    "learning rate."
                ),
                evidence={"median_feature_rms": scale, "threshold": self.t["max_scale"]},
                remedies=("Scale the inputs, e.g. pixels / 255 then mean/std normalisation.", *REMEDIES),
                location="inputs",
            ))
        return out
