"""The quantity × layer matrix: which module types have a fast path, and how to build its handler.

A fast path is a function ``build(record, index_of, scale, memory_cap, workspace=None) -> LayerStatistics | None``
for a module type, registered with :func:`fast_path` (``workspace``: a :class:`.Workspace` for its large
temporaries, reused across steps); ``supports(module) -> str | None`` returns why a given
instance cannot use it (e.g. a grouped convolution), and then the module's parameters go to the
``torch.func`` fallback.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from torch import nn

from trainspect.providers.per_sample.capture import ModuleCapture
from trainspect.providers.per_sample.layer import LayerStatistics, Workspace


class Builder(Protocol):
    """A fast path's handler factory (see the module docstring)."""

    def __call__(self, record: ModuleCapture, index_of: dict[int, int], scale: float, memory_cap: int,
                 workspace: Workspace | None = None) -> LayerStatistics | None: ...


@dataclass
class FastPath:
    types: tuple[type[nn.Module], ...]
    build: Builder
    supports: Callable[[nn.Module], str | None]


FAST_PATHS: list[FastPath] = []


def fast_path(*types: type[nn.Module], supports: Callable[[nn.Module], str | None] | None = None):
    """Register ``build`` as the fast path of the given module types."""

    def register(build: Builder) -> Builder:
        FAST_PATHS.append(FastPath(types, build, supports or (lambda m: None)))
        return build

    return register


def find_fast_path(module: nn.Module) -> tuple[FastPath | None, str]:
    """The fast path for this module (exact type match first), or None and the reason."""
    for fp in FAST_PATHS:
        if type(module) in fp.types:
            reason = fp.supports(module)
            return (None, reason) if reason else (fp, "")
    for fp in FAST_PATHS:
        if isinstance(module, fp.types):
            reason = fp.supports(module)
            return (None, reason) if reason else (fp, "")
    return None, f"no fast path for {type(module).__name__}"
