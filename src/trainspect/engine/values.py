"""What instruments return, and the metadata that tells views how to show it.

An instrument's ``compute`` returns ``{series_name: value}`` where the value is one of

* a scalar: a Python number or a 0-d tensor (kind ``"scalar"``);
* a per-layer vector: a 1-D tensor or array with one entry per tracked parameter tensor, in the order of
  ``StepContext.param_names`` (kind ``"layers"``);
* a :class:`Histogram` (kind ``"histogram"``) or :class:`Histogram2d` (kind ``"histogram2d"``);
* a :class:`Curve` (kind ``"curve"``): y over x, e.g. a 1-D loss slice along a direction.

Values are converted to NumPy once per step, by the engine, so instruments never call ``.item()``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

SeriesKind = Literal["scalar", "layers", "histogram", "histogram2d", "curve"]
KINDS: tuple[str, ...] = ("scalar", "layers", "histogram", "histogram2d", "curve")


@dataclass(frozen=True)
class SeriesInfo:
    """Metadata of one output series of an instrument; stored in the run so views need no code per series.

    Attributes:
        name: series name, unique in a run (snake_case; per-layer series start with ``layer_``).
        kind: one of ``scalar``, ``layers``, ``histogram``, ``histogram2d``.
        description: one line saying what it is.
        healthy: one line saying what a healthy value looks like (shown in figure titles and tooltips).
        unit: unit or scale hint (e.g. ``"s"``, ``"ratio"``); empty if dimensionless.
        log_scale: whether views should use a log axis.
        group: Cockpit-style panel group: ``step_size``, ``gradients``, ``curvature``, ``performance``,
            ``hyperparameters``, ``health``.
        reduce: how partial values combine across processes (``"sum"``, ``"mean"``, ``"max"``,
            ``"none"`` for values already global such as norms of all-reduced gradients).
    """

    name: str
    kind: SeriesKind = "scalar"
    description: str = ""
    healthy: str = ""
    unit: str = ""
    log_scale: bool = False
    group: str = "performance"
    reduce: str = "none"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"series {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")


@dataclass
class Histogram:
    """A 1-D histogram: ``counts[i]`` values fell in ``[edges[i], edges[i + 1])``."""

    counts: torch.Tensor | np.ndarray
    edges: torch.Tensor | np.ndarray


@dataclass
class Histogram2d:
    """A 2-D histogram: ``counts[i, j]`` pairs fell in x-bin i and y-bin j."""

    counts: torch.Tensor | np.ndarray
    x_edges: torch.Tensor | np.ndarray
    y_edges: torch.Tensor | np.ndarray


@dataclass
class Curve:
    """A curve ``y[i]`` at ``x[i]`` (e.g. the loss along a direction); stored like a histogram (y, x)."""

    x: torch.Tensor | np.ndarray
    y: torch.Tensor | np.ndarray


def to_numpy(value: Any) -> np.ndarray:
    """Detach a tensor (or number, or array) to a float64 NumPy array."""
    if isinstance(value, torch.Tensor):
        if value.dtype is torch.float64 and not value.requires_grad and value.device.type == "cpu":
            return value.numpy()  # the common case (norm vectors): no tensor operation at all
        return value.detach().to("cpu", torch.float64).numpy()
    return np.asarray(value, dtype=np.float64)
