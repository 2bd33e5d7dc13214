"""Named instrument configurations (like Cockpit's ``configuration(label)``) and their resolution.

A configuration maps instrument names to schedules (``None``: the instrument's own default schedule).
``default`` is cheap enough to leave on for every training run; ``cheap`` runs the same instruments every
step; ``economy``, ``business`` and ``full`` follow Cockpit's presets as their instruments land.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from trainspect.engine.schedules import ScheduleLike, as_schedule, every
from trainspect.instruments import INSTRUMENTS, Instrument

#: per-layer bookkeeping runs every 10 steps by default: it needs a copy of the parameters around the
#: optimizer step, which on large models costs a noticeable fraction of a step.
LAYER_INTERVAL = 10
#: distance from initialization varies slowly (a running sum of all updates) but costs the most of these: a
#: subtraction from θ_0 and a norm, reading two copies of the parameters (1.3 ms of a 6–7 ms step on the
#: 784-1000-500-100-10 MLP, 3 ms on 2c2d, 2 cores); every 50 steps still draws its curve.
DISTANCE_INTERVAL = 50

_CHEAP = ("loss", "grad_norm", "learning_rate", "nonfinite", "step_time",
          "param_norm", "update_size", "update_to_weight", "distance", "amp")

_ECONOMY = ("alpha", "distance", "grad_hist_1d", "grad_norm", "inner_test", "loss", "norm_test", "ortho_test",
            "update_size")
#: Cockpit's TICDiag, HessTrace (business) and HessMaxEV (full), plus the other curvature instruments. They
#: keep their own default schedule (logarithmic + every 250 steps, ``instruments/curvature.py``): each costs
#: tens of Hessian-vector products, so "every step" would multiply the cost of training.
_CURVATURE_BUSINESS: tuple[str, ...] = ("tic_diag", "hessian_trace")
_CURVATURE_FULL: tuple[str, ...] = ("hessian_max_eigenvalue", "hessian_min_eigenvalue", "sharpness", "loss_slice")


def _registered(names: tuple[str, ...]) -> tuple[str, ...]:
    """The instruments among ``names`` that exist (curvature instruments land on another branch)."""
    return tuple(n for n in names if n in INSTRUMENTS)


CONFIGURATIONS: dict[str, dict[str, ScheduleLike]] = {
    "default": {
        "loss": every(1),
        "grad_norm": every(1),
        "learning_rate": every(1),
        "nonfinite": every(1),
        "step_time": every(1),
        "param_norm": every(LAYER_INTERVAL),
        "update_size": every(LAYER_INTERVAL),
        "update_to_weight": every(LAYER_INTERVAL),
        "distance": every(DISTANCE_INTERVAL),
        "amp": every(1),  # GradScaler scale / skipped steps; empty (free) without a scaler
    },
    "cheap": {name: every(1) for name in _CHEAP},
    # Cockpit's presets (cockpit/utils/configuration.py), every step unless `schedule=` says otherwise.
    # economy: first-order only, all from one per-sample pass (per_sample_grads) + cheap byproducts.
    "economy": {name: every(1) for name in _ECONOMY},
    # business = economy + TICDiag and HessTrace in Cockpit; full = business + HessMaxEV and GradHist2d.
    # The curvature instruments come from the `curvature` branch: only those registered are included
    # (see _CURVATURE_BUSINESS / _CURVATURE_FULL; the curvature branch fills in the names).
    "business": {**{name: every(1) for name in _ECONOMY}, **dict.fromkeys(_registered(_CURVATURE_BUSINESS))},
    "full": {
        **{name: every(1) for name in (*_ECONOMY, "grad_hist_2d")},
        **dict.fromkeys((*_registered(_CURVATURE_BUSINESS), *_registered(_CURVATURE_FULL))),
    },
    "none": {},
}


def configuration_names() -> list[str]:
    return sorted(CONFIGURATIONS)


def resolve_instruments(
    spec: str | Iterable[Any] | Mapping[str, ScheduleLike] | None, schedule: ScheduleLike = None
) -> list[Instrument]:
    """Instantiate the instruments of a configuration name, a list of names/instances, or ``{name: schedule}``.

    Args:
        spec: e.g. ``"default"``, ``["loss", "grad_norm"]``, ``{"loss": 1, "distance": 50}``, or a list
            mixing names and :class:`Instrument` instances.
        schedule: if given, overrides every instrument's schedule (Cockpit's ``track_schedule``).

    Raises:
        ValueError: for an unknown configuration or instrument name (the message lists the known ones).
        TypeError: for an invalid schedule.
    """
    if spec is None:
        spec = "default"
    override = None if schedule is None else as_schedule(schedule)
    items: list[tuple[str | Instrument, ScheduleLike]]
    if isinstance(spec, str):
        names = [s.strip() for s in spec.split("+")]
        items = []
        for name in names:
            if name not in CONFIGURATIONS:
                raise ValueError(
                    f"unknown instrument configuration {name!r}; known: {', '.join(configuration_names())} "
                    "(or pass a list of instrument names)"
                )
            items.extend(CONFIGURATIONS[name].items())
    elif isinstance(spec, Mapping):
        items = list(spec.items())
    else:
        items = [(s, None) for s in spec]
    out: dict[str, Instrument] = {}
    for item, sched in items:
        if isinstance(item, Instrument):
            instrument = item
        elif isinstance(item, str):
            cls = INSTRUMENTS.get(item)
            if cls is None:
                raise ValueError(
                    f"unknown instrument {item!r}; known: {', '.join(sorted(INSTRUMENTS))}"
                )
            instrument = cls(sched)
        else:
            raise TypeError(f"instruments must be names or Instrument instances, got {type(item).__name__}")
        if override is not None:
            instrument.schedule = override
        out[instrument.name] = instrument  # a later entry for the same instrument wins
    return list(out.values())
