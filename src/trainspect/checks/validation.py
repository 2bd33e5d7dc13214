"""Training loss falls while the validation metric the user reports stays at chance.

The model memorises the training set but learns nothing that transfers: the labels are not learnable
from the inputs (shuffled independently of the inputs, mismatched after a sort, a wrong label column).
TheDeepChecker tests this offline by retraining on shuffled labels; here it is read from the metrics the
user logs with ``inspector.log(val_accuracy=...)``.

Rule (``labels-not-learnable``): on ``reports`` (2) consecutive reports, a validation accuracy metric
(a logged name containing ``val`` or ``test`` and ``acc``) is at most chance + ``margin`` (chance = 1/C, C
the number of classes read from the loss input; margin 0.05 or half of chance, whichever is larger) while the
training loss has fallen by at least ``train_drop`` (5 %) from its start and below (1 − ``train_drop``) × the
loss of a chance-level predictor (ln C for cross-entropy with C classes).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from trainspect.checks._common import ThresholdCheck, fmt, median
from trainspect.checks.base import Finding

if TYPE_CHECKING:
    from trainspect.engine.context import StepContext
    from trainspect.engine.record import StepRecord


class ValidationAtChanceCheck(ThresholdCheck):
    """``labels-not-learnable``: train loss falls, reported validation accuracy stays at chance."""

    name = "validation_at_chance"
    codes = ("labels-not-learnable",)
    instruments: ClassVar[dict[str, Any]] = {"loss": 1}
    defaults: ClassVar[dict[str, float]] = {"reports": 2, "train_drop": 0.05, "margin": 0.05, "chance": 0.0,
                                            "baseline_steps": 10}

    def __init__(self, **thresholds: float):
        super().__init__(**thresholds)
        self._first: list[float] = []
        self._recent: list[float] = []
        self._classes: int | None = None
        self._streak = 0
        self._inspector = None

    def observe(self, record: StepRecord, ctx: StepContext) -> list[Finding]:
        loss = record.scalars.get("loss")
        if loss is not None and math.isfinite(loss):
            if len(self._first) < self.t["baseline_steps"]:
                self._first.append(loss)
            self._recent = [*self._recent[-19:], loss]
        if self._classes is None:
            out = ctx.model_output
            fn = ctx.inspector._user_loss_fn
            if isinstance(out, torch.Tensor) and out.dim() >= 2 and isinstance(fn, (nn.CrossEntropyLoss, nn.NLLLoss)):
                self._classes = int(out.shape[1])
            elif isinstance(fn, (nn.BCEWithLogitsLoss, nn.BCELoss)):
                self._classes = 2
        self._inspector = ctx.inspector
        return []

    def observe_user_values(self, record: StepRecord) -> None:
        keys = [k for k in record.scalars if ("val" in k.lower() or "test" in k.lower()) and "acc" in k.lower()]
        if not keys or not self._first or not self._recent:
            return
        chance = self.t["chance"] or (1.0 / self._classes if self._classes else 0.0)
        if chance <= 0:
            return
        limit = chance + max(self.t["margin"], 0.5 * chance)
        acc = record.scalars[keys[0]]
        start, now = median(self._first), median(self._recent)
        # below the loss of a chance-level predictor (ln C for cross-entropy): the training set is being fit.
        # A loss that falls from a huge start (bad init) but stays above chance is not memorisation.
        chance_loss = math.log(self._classes) if self._classes else float("inf")
        fell = (start > 0 and now < (1 - self.t["train_drop"]) * start
                and 0 <= now < (1 - self.t["train_drop"]) * chance_loss)
        if acc <= limit and fell:
            self._streak += 1
        else:
            self._streak = 0
        if self._streak >= self.t["reports"] and self._inspector is not None:
            self._inspector.add_finding(Finding(
                code="labels-not-learnable", severity="error",
                title=f"Training loss falls ({fmt(start)} → {fmt(now)}) but {keys[0]} stays at chance ({fmt(acc)})",
                explanation=(
                    f"{keys[0]} is {fmt(acc)} on {self._streak} reports in a row, no better than guessing "
                    f"({fmt(chance)}), while the training loss keeps falling: the model memorises the training "
                    "labels but learns nothing that carries over. The labels are probably not a function of the "
                    "inputs: shuffled or re-ordered separately from the inputs, the wrong column, or a "
                    "train/validation preprocessing mismatch."
                ),
                evidence={"metric": keys[0], "value": acc, "chance": chance, "threshold": limit,
                          "train_loss_start": start, "train_loss_now": now, "reports": self._streak},
                remedies=(
                    "Check that inputs and labels are shuffled together (one index permutation, or a Dataset "
                    "returning (x, y) pairs).",
                    "Plot a few training inputs with their labels; check the label column and the class order.",
                    "Check that validation data gets exactly the training preprocessing.",
                ),
                location="",
            ), record.step)
