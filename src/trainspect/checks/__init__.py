"""Automatic checks: in-flight verdicts (this package) and preflight checks (``preflight/``).

Every module of this package is imported so that its checks register themselves.
"""

import importlib
import pkgutil

from trainspect.checks.base import CHECKS, Check, Finding, FindingsBook

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_") and _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["CHECKS", "Check", "Finding", "FindingsBook"]
