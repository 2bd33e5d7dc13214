"""Findings and the check base class.

A check reads the stream of step records (with its own small state: windows, first-seen step) and emits
findings. The engine de-duplicates them by ``(code, location)``: a finding is announced once, then only its
``last_step`` and ``count`` are updated.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from trainspect.engine.context import StepContext
    from trainspect.engine.record import StepRecord

CHECKS: dict[str, type[Check]] = {}
SEVERITIES = ("info", "warning", "error")


@dataclass
class Finding:
    """A verdict with its evidence and what to do about it.

    Attributes:
        code: stable identifier, e.g. ``"vanishing-gradients"``.
        severity: ``info``, ``warning`` or ``error``.
        title: one line, e.g. "Gradients vanish below layer fc3".
        explanation: plain words: what was seen and why it matters.
        evidence: the numbers and the threshold that triggered it.
        remedies: concrete things to try, most likely first.
        location: where (e.g. ``"encoder.layers.3.mlp.fc1 (Linear)"``), ``""`` for the whole model.
        first_step, last_step, count: when it was first and last observed, and on how many steps.
        rank: the process rank where the fault is rank-local, else None.
    """

    code: str
    severity: str
    title: str
    explanation: str
    evidence: dict[str, Any] = field(default_factory=dict)
    remedies: tuple[str, ...] | list[str] = ()
    location: str = ""
    first_step: int | None = None
    last_step: int | None = None
    count: int = 1
    rank: int | None = None

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"finding {self.code!r}: severity must be one of {SEVERITIES}, got {self.severity!r}")


class Check:
    """An in-flight check. Subclasses set ``name`` and ``codes`` and implement :meth:`observe`.

    Attributes:
        name: registry key.
        codes: the finding codes it can emit.
        instruments: instruments it needs (added to the run if the configuration lacks them), as
            ``{instrument name: schedule or None}``.
        deferrable: whether it may observe records in batches, a few steps late (see below).
    """

    name: ClassVar[str] = ""
    codes: ClassVar[tuple[str, ...]] = ()
    instruments: ClassVar[dict[str, Any]] = {}
    #: True if :meth:`observe` reads only the record and, of ``ctx``, the run's structure (``params``,
    #: ``param_names``, ``optimizer``, ``model``, ``inspector``) and the step's ``step``, ``batch_size``, ``extras``
    #: and ``nonfinite_loss_ranks`` (``engine.context.CheckFacts``): the
    #: engine may then hand it the records of several steps at once, a few steps late (``Inspector.CHECK_BATCH``;
    #: at once on a step with a non-finite loss or gradient, and before anyone reads the findings). Inside a
    #: training step every check's code is cold, ≈ 5–15 µs per check and step; in a batch it stays in cache.
    deferrable: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name:
            CHECKS[cls.name] = cls

    def observe(self, record: StepRecord, ctx: StepContext) -> list[Finding]:  # pragma: no cover - abstract
        """Findings observed at this step (the engine de-duplicates repeated ones)."""
        raise NotImplementedError


class FindingsBook:
    """Keeps one finding per ``(code, location)`` and tells whether an emitted one is new."""

    def __init__(self) -> None:
        self.findings: dict[tuple[str, str], Finding] = {}

    def add(self, finding: Finding, step: int) -> tuple[Finding, bool]:
        key = (finding.code, finding.location)
        known = self.findings.get(key)
        if known is None:
            finding.first_step = step if finding.first_step is None else finding.first_step
            finding.last_step = step
            self.findings[key] = finding
            return finding, True
        known.last_step = step
        known.count += 1
        known.evidence = finding.evidence or known.evidence
        if SEVERITIES.index(finding.severity) > SEVERITIES.index(known.severity):
            known.severity = finding.severity
        return known, False

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.findings.values())

    def __len__(self) -> int:
        return len(self.findings)
