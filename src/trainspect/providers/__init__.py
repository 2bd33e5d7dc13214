"""Shared per-step computations; every module here is imported so its providers register."""

import importlib
import pkgutil

from trainspect.providers.base import PROVIDERS, Provider

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_") and _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["PROVIDERS", "Provider"]
