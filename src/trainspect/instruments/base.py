"""The instrument base class: a name, a schedule, what it needs, and a ``compute``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from trainspect.engine.schedules import Schedule, ScheduleLike, as_schedule, every
from trainspect.engine.values import SeriesInfo

if TYPE_CHECKING:
    from trainspect.engine.context import StepContext

INSTRUMENTS: dict[str, type[Instrument]] = {}

#: bumped whenever an instrument's schedule is set: the engine caches the due sets of periodic schedules
SCHEDULE_EPOCH = [0]


class Instrument:
    """One measured quantity (or a small family of them), computed on a schedule.

    A new instrument is one small class in one file under ``trainspect/instruments/``::

        class GradNorm(Instrument):
            name = "grad_norm"
            requires = ("grad_norms",)
            series = (SeriesInfo("grad_norm", "scalar", "‖∇L‖₂ of the mini-batch gradient"),)

            def compute(self, ctx):
                return {"grad_norm": float(np.linalg.norm(ctx.get("grad_norms")))}

    Attributes:
        name: registry key (``trainspect.attach(..., instruments=[name, ...])``).
        requires: names of the shared per-step providers it uses (``ctx.get(name)``).
        after_update: ``True`` if it needs the parameters after ``optimizer.step()`` (e.g. the update).
        series: metadata of every series it can return (views and the store read it).
        default_schedule: when it runs unless the configuration or the user says otherwise.
        local_only: ``True`` if ``compute`` never communicates across processes (no ``all_reduce_sum``):
            under ``torch.distributed`` a phase whose due instruments are all local-only needs no
            end-of-phase agreement between ranks (one collective fewer per phase).
    """

    name: ClassVar[str] = ""
    requires: ClassVar[tuple[str, ...]] = ()
    after_update: ClassVar[bool] = False
    series: ClassVar[tuple[SeriesInfo, ...]] = ()
    default_schedule: ClassVar[Schedule] = every(1)
    local_only: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name:
            INSTRUMENTS[cls.name] = cls

    def __init__(self, schedule: ScheduleLike = None):
        self.schedule = (
            self.default_schedule if schedule is None else as_schedule(schedule, what=f"{self.name} schedule")
        )

    @property
    def schedule(self) -> Schedule:
        return self._schedule

    @schedule.setter
    def schedule(self, value: Schedule) -> None:
        self._schedule = value
        SCHEDULE_EPOCH[0] += 1  # the engine's cache of which instruments are due when is rebuilt

    def series_info(self, name: str) -> SeriesInfo:
        """Metadata of output series ``name`` (declared in ``series``; override for dynamic names)."""
        for info in self.series:
            if info.name == name:
                return info
        raise KeyError(
            f"instrument {self.name!r} returned a series {name!r} it does not declare in `series`; "
            f"declared: {[i.name for i in self.series]}"
        )

    def is_due(self, step: int) -> bool:
        return self.schedule(step)

    def before_update(self, ctx: StepContext) -> None:
        """Optional, for ``after_update`` instruments: called just before ``optimizer.step()`` on a step where the
        instrument is due, while θ_t and the optimizer's state before the step are still there (alpha projects on
        SGD's momentum buffer here, which the step overwrites). Failures disable the instrument, as in compute."""

    def compute(self, ctx: StepContext) -> dict[str, Any]:  # pragma: no cover - abstract
        """Return ``{series_name: value}`` for this step (see :mod:`trainspect.engine.values`)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(schedule={self.schedule!r})"
