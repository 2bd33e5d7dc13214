"""The ``trainspect`` command. Each module of this package adds one or more subcommands.

A command module defines ``register(subparsers)``, which adds its parser and sets ``func`` (called with
the parsed arguments, returning an exit code). New modules are found automatically.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trainspect",
        description="A debugger for neural-network training in PyTorch.",
    )
    from trainspect import __version__

    parser.add_argument("--version", action="version", version=f"trainspect {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if module.name.startswith("_"):
            continue
        mod = importlib.import_module(f"{__name__}.{module.name}")
        if hasattr(mod, "register"):
            mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except (ValueError, FileNotFoundError, PermissionError, KeyError) as error:
        print(f"trainspect {args.command}: error: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # a store problem, a user recipe that fails, ...
        from trainspect.store.errors import StoreError

        if isinstance(error, StoreError):
            print(f"trainspect {args.command}: error: {error}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
