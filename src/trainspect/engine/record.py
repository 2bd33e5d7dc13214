"""What one finished step hands to the sinks (store, terminal, TensorBoard) and the checks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from trainspect.engine.values import SeriesInfo


@dataclass
class HistogramValue:
    """A histogram in NumPy form; ``y_edges`` is None for a 1-D histogram (and a curve: counts=y, x_edges=x)."""

    counts: np.ndarray
    x_edges: np.ndarray
    y_edges: np.ndarray | None = None


@dataclass
class StepRecord:
    """The values of one step, already converted to NumPy / floats.

    Attributes:
        scalars: ``{series: float}``.
        layers: ``{series: float64 vector over the tracked parameters}``.
        histograms: ``{series: HistogramValue}``.
        new_series: ``(instrument name, SeriesInfo)`` of series seen for the first time this step.
    """

    step: int
    wall_time: float
    user_seconds: float
    overhead_seconds: float
    optimizer_stepped: bool
    scalars: dict[str, float] = field(default_factory=dict)
    layers: dict[str, np.ndarray] = field(default_factory=dict)
    histograms: dict[str, HistogramValue] = field(default_factory=dict)
    new_series: list[tuple[str, SeriesInfo]] = field(default_factory=list)

    def get(self, name: str, default: Any = None) -> Any:
        """A value of any kind by series name."""
        for table in (self.scalars, self.layers, self.histograms):
            if name in table:
                return table[name]
        return default


class Sink:
    """Receives the run as it happens. The store, the terminal view and TensorBoard are sinks."""

    def open(self, meta: dict[str, Any], layers: list[dict[str, Any]]) -> None:
        """Start of the run: its metadata and the tracked parameters (name, module, class, shape)."""

    def write_step(self, record: StepRecord) -> None:
        """One finished step."""

    def write_user_values(self, record: StepRecord) -> None:
        """User metrics logged with ``inspector.log`` (scalars only, at ``record.step``)."""

    def write_finding(self, finding: Any, *, new: bool) -> None:
        """A finding of a check: ``new`` the first time its (code, location) is seen, else an update."""

    def write_error(self, step: int | None, source: str, message: str, traceback: str) -> None:
        """An instrument, provider or check failed and was disabled."""

    def write_meta(self, meta: dict[str, Any]) -> None:
        """Additional run metadata (e.g. status and end time at close)."""

    def close(self) -> None:
        """End of the run."""
