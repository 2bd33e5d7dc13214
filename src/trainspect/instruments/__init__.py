"""Instruments: one file per family; every module here is imported so its instruments register."""

import importlib
import pkgutil

from trainspect.instruments.base import INSTRUMENTS, Instrument

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_") and _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["INSTRUMENTS", "Instrument"]
