"""The provider base class: one shared per-step computation, computed at most once per step."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from trainspect.engine.context import StepContext
    from trainspect.engine.inspector import Inspector

PROVIDERS: dict[str, type[Provider]] = {}


class Provider:
    """A shared computation that instruments request by name (``Instrument.requires``).

    Subclasses set ``name`` (registered automatically) and implement :meth:`compute`. They may also
    implement :meth:`arm`/:meth:`disarm` to capture tensors during the forward and backward pass (only on
    steps where some due instrument needs them, so idle steps cost nothing), :meth:`before_update` to
    see the parameters just before ``optimizer.step()``, and :meth:`end_step` to act once the step is done.

    One instance lives for the whole run (``self.inspector``), so a provider can keep state across steps
    (e.g. the initial parameters). Per-step results belong in the return value of :meth:`compute`,
    which the step context caches and releases at the end of the step.

    Attributes:
        requires: names of providers this one uses; they are armed whenever this one is.
    """

    name: ClassVar[str] = ""
    requires: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name:
            PROVIDERS[cls.name] = cls

    def __init__(self, inspector: Inspector):
        self.inspector = inspector

    def arm(self, ctx: StepContext) -> None:
        """Before the forward pass of a step where this provider is needed (install hooks)."""

    def disarm(self, ctx: StepContext) -> None:
        """After the backward pass (remove hooks; must never raise)."""

    def before_update(self, ctx: StepContext) -> None:
        """Just before ``optimizer.step()`` on a step where this provider is needed."""

    def end_step(self, ctx: StepContext) -> None:
        """At the end of a step where this provider was needed, after every instrument (e.g. release memory
        kept for the next step if :meth:`Inspector.provider_needed_at` says it will not be needed)."""

    def compute(self, ctx: StepContext) -> Any:  # pragma: no cover - abstract
        """Return this step's value (cached by the context)."""
        raise NotImplementedError

    def close(self) -> None:
        """At the end of the run (release hooks and memory)."""
