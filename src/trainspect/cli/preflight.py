"""``trainspect preflight module:function``: run the preflight checks on a user's setup.

The function takes no arguments and returns ``(model, loss_fn, optimizer, (inputs, targets))`` — or
``(model, loss_fn, optimizer, inputs, targets)``, or a dict with those keys. ``module`` is an importable
module name or a path to a ``.py`` file. The optimizer is used as a template: the fits build fresh
optimizers of the same class with the same defaults.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("preflight", help="check a model, loss and optimizer before training",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("target", help="module:function (or path/to/file.py:function) returning the setup")
    p.add_argument("--skip", action="append", default=[],
                   help="a check to skip (gradients, initial_loss, no_gradient, batch_independence, overfit)")
    p.add_argument("--overfit-steps", type=int, default=500, help="step budget of the ~100-example fit")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_run)


def load_target(target: str) -> Any:
    """The function named by ``module:function`` or ``path.py:function``."""
    if ":" not in target:
        raise ValueError(f"preflight: expected module:function, got {target!r}")
    mod_name, _, fn_name = target.rpartition(":")
    if mod_name.endswith(".py") or Path(mod_name).exists():
        path = Path(mod_name)
        if not path.exists():
            raise FileNotFoundError(f"preflight: no such file {path}")
        spec = importlib.util.spec_from_file_location(path.stem, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.path.insert(0, str(path.parent.resolve()))
        spec.loader.exec_module(module)
    else:
        sys.path.insert(0, ".")
        try:
            module = importlib.import_module(mod_name)
        except ImportError as error:
            raise ValueError(f"preflight: cannot import {mod_name!r} ({error}); give an importable module name "
                             "or a path to a .py file") from error
    fn = getattr(module, fn_name, None)
    if fn is None or not callable(fn):
        raise ValueError(f"preflight: {mod_name} has no function {fn_name!r}")
    return fn


def unpack_setup(value: Any) -> tuple[Any, Any, Any, Any, Any]:
    """``(model, loss_fn, optimizer, inputs, targets)`` from what the user's function returned."""
    if isinstance(value, dict):
        try:
            return value["model"], value["loss_fn"], value.get("optimizer"), value["inputs"], value["targets"]
        except KeyError as error:
            raise ValueError(f"preflight: the setup dict lacks {error}; keys: model, loss_fn, optimizer, inputs, "
                             "targets") from error
    if isinstance(value, (tuple, list)):
        if len(value) == 4 and isinstance(value[3], (tuple, list)) and len(value[3]) == 2:
            return value[0], value[1], value[2], value[3][0], value[3][1]
        if len(value) == 5:
            return tuple(value)  # type: ignore[return-value]
    raise ValueError("preflight: the function must return (model, loss_fn, optimizer, (inputs, targets)), "
                     "(model, loss_fn, optimizer, inputs, targets) or a dict with those keys")


def _run(args: argparse.Namespace) -> int:
    import torch

    from trainspect.checks.preflight import ALL_CHECKS, factory_from_optimizer, preflight

    model, loss_fn, optimizer, inputs, targets = unpack_setup(load_target(args.target)())
    factory = factory_from_optimizer(optimizer) if isinstance(optimizer, torch.optim.Optimizer) else None
    checks = [c for c in ALL_CHECKS if c not in set(args.skip)]
    report = preflight(model, loss_fn, inputs, targets, factory, checks=checks, seed=args.seed,
                       overfit_set_steps=args.overfit_steps)
    print(report)
    return 0 if report.ok else 1
