"""Cockpit + BackPACK, the reference system, imported once for the cross-check tests (or the module is skipped)."""

from __future__ import annotations

import warnings

import pytest

try:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from backpack import extend
        from cockpit import Cockpit, quantities
        from cockpit.utils.schedules import linear
except Exception as error:  # pragma: no cover - depends on the optional extra
    pytest.skip(f"Cockpit cannot be imported ({type(error).__name__}: {error}); install the `cockpit` test extra "
                "as described in docs/gradient-statistics.md", allow_module_level=True)

__all__ = ["Cockpit", "extend", "linear", "quantities"]
