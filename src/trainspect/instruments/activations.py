"""Activation health: fraction of dead rectifier units and of saturated sigmoid/tanh units, per module.

Both come from :class:`trainspect.providers.activations.Activations` (forward hooks on due steps only).

* ``dead_units:<module>``: fraction of the module's units active (``x > 0``) on fewer than 1 % of this
  batch's entries (SageMaker Debugger's ``dead_relu`` rule calls a unit dead when active < 1 %).
* ``saturated_units:<module>``: fraction of units whose pre-activation is in the saturated region
  (derivative < 1 % of its maximum) on at least 90 % of the batch's entries (TheDeepChecker flags a unit
  with ρ_B > 0.85; SageMaker Debugger with fewer than 1 % unsaturated entries).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

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
    local_only = True
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
        fractions: dict[str, float] = {}
        units: list[ActivationUnits] = []
        for s in ctx.get("activations"):
            frac = s.count.double() / max(s.entries, 1)
            if s.kind == "rectifier":
                bad, key = frac < DEAD_ACTIVE_FRACTION, f"dead_units:{s.module}"
            else:
                bad, key = frac >= SATURATED_ENTRY_FRACTION, f"saturated_units:{s.module}"
            bad = bad.cpu()
            fractions[key] = float(bad.double().mean()) if bad.numel() else 0.0
            units.append(ActivationUnits(s.module, s.module_class, s.kind, s.threshold, bad))
        # for the checks (ActivationHealthCheck reads the per-unit verdicts); the fractions are rank-local under
        # torch.distributed, so they are not recorded as series (series must be global)
        ctx.extras["activation_fractions"] = fractions
        ctx.extras["activation_units"] = units
        return {}


@dataclass
class ActivationUnits:
    """One activation module's per-unit verdict on one step (computed once, for the instrument's fractions and the
    check): ``bad`` (bool, on the CPU) is True where the unit was dead (a rectifier active on < 1 % of the
    entries) or saturated (on ≥ ``SATURATED_ENTRY_FRACTION`` of them)."""

    module: str
    module_class: str
    kind: str
    threshold: float | None
    bad: torch.Tensor
