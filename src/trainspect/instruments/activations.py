"""Activation health: fraction of dead rectifier units and of saturated sigmoid/tanh units, per module.

Both come from :class:`trainspect.providers.activations.Activations` (forward hooks on due steps only).

* ``dead_units:<module>``: fraction of the module's units active (``x > 0``) on fewer than 1 % of this
  batch's entries (SageMaker Debugger's ``dead_relu`` rule calls a unit dead when active < 1 %).
* ``saturated_units:<module>``: fraction of units whose pre-activation is in the saturated region
  (derivative < 1 % of its maximum) on at least 90 % of the batch's entries (TheDeepChecker flags a unit
  with ρ_B > 0.85; SageMaker Debugger with fewer than 1 % unsaturated entries).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from trainspect.engine.schedules import every
from trainspect.engine.values import SeriesInfo
from trainspect.instruments.base import Instrument

if TYPE_CHECKING:
    from trainspect.engine.context import StepContext

#: a rectifier unit active on fewer than this fraction of the entries is dead on this batch (SMD: 1 %)
DEAD_ACTIVE_FRACTION = 0.01
#: a squashing unit saturated on at least this fraction of the entries is saturated on this batch
SATURATED_ENTRY_FRACTION = 0.8


class ActivationHealth(Instrument):
    """Dead-unit and saturated-unit fractions per activation module (every 10 steps by default)."""

    name = "activations"
    requires = ("activations",)
    default_schedule = every(10)
    series = ()

    def series_info(self, name: str) -> SeriesInfo:
        kind, _, module = name.partition(":")
        if kind == "dead_units":
            return SeriesInfo(name, "scalar", f"fraction of dead units (active < 1 %) after {module}",
                              "below 0.5", unit="fraction", group="health")
        if kind == "saturated_units":
            return SeriesInfo(name, "scalar", f"fraction of saturated units after {module}",
                              "below 0.5", unit="fraction", group="health")
        return super().series_info(name)

    def compute(self, ctx: StepContext) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for s in ctx.get("activations"):
            frac = s.count.double() / max(s.entries, 1)
            if s.kind == "rectifier":
                out[f"dead_units:{s.module}"] = (frac < DEAD_ACTIVE_FRACTION).double().mean()
            else:
                out[f"saturated_units:{s.module}"] = (frac >= SATURATED_ENTRY_FRACTION).double().mean()
        return out
