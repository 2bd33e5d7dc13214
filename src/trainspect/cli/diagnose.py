"""``trainspect diagnose``: why is this trained model bad? (MD tree on loss-landscape metrics)"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    from trainspect.diagnosis.recipes import RECIPES

    p = sub.add_parser(
        "diagnose", help="diagnose a trained model: temperature too small/large, model too small, too little data",
        description="Measure loss-landscape metrics (training error, Hessian trace, mode connectivity, CKA) of a "
                    "trained model and walk the MD trees. Either train a configuration of a built-in recipe "
                    "(--recipe, --width, --batch-size, --data) or load your own with --from FILE.py:FUNCTION, a "
                    "function returning a dict with 'model', 'train' (x, y), 'val' (x, y) and optionally 'recipe' "
                    "(seed -> trained model of the same configuration), 'sibling', 'loss_fn'.")
    p.add_argument("--from", dest="source", default=None, help="FILE.py:FUNCTION or module:function")
    p.add_argument("--recipe", default="digits-mlp", choices=sorted(RECIPES))
    p.add_argument("--width", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--data", type=float, default=1.0, help="fraction of the training data (0, 1]")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-sibling", action="store_true", help="skip the pairwise metrics (no second model trained)")
    p.add_argument("--trees", default=None, help="an MD-tree JSON (from `trainspect zoo fit`); default: shipped")
    p.add_argument("--threads", type=int, default=None)
    p.set_defaults(func=_run)


def _load_source(spec: str):
    if ":" not in spec:
        raise ValueError(f"--from expects FILE.py:FUNCTION or module:function, got {spec!r}")
    target, name = spec.rsplit(":", 1)
    if target.endswith(".py"):
        path = Path(target)
        if not path.exists():
            raise FileNotFoundError(f"--from: no file {path}")
        mod_spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(mod_spec)
        mod_spec.loader.exec_module(module)
    else:
        module = importlib.import_module(target)
    if not hasattr(module, name):
        raise ValueError(f"--from: {target} has no function {name!r}")
    out = getattr(module, name)()
    if not isinstance(out, dict) or not {"model", "train", "val"} <= set(out):
        raise ValueError("--from: the function must return a dict with 'model', 'train' and 'val'")
    return out


def _run(args: argparse.Namespace) -> int:
    import torch

    from trainspect.diagnosis.diagnose import diagnose
    from trainspect.diagnosis.recipes import get_recipe

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.source:
        src = _load_source(args.source)
        kwargs = {k: src[k] for k in ("recipe", "sibling", "loss_fn") if k in src}
        if args.no_sibling:
            kwargs.pop("recipe", None)
            kwargs.pop("sibling", None)
        result = diagnose(src["model"], tuple(src["train"]), tuple(src["val"]), trees=args.trees, **kwargs)
    else:
        recipe = get_recipe(args.recipe)
        print(f"training {recipe.name}: width {args.width}, batch size {args.batch_size}, data {args.data:g}, "
              f"seed {args.seed}")
        model = recipe.train(args.width, args.batch_size, args.data, args.seed)
        data = recipe.data()
        sibling = None if args.no_sibling else recipe.sibling_recipe(args.width, args.batch_size, args.data)
        result = diagnose(model, data.subset(args.data), (data.x_test, data.y_test), recipe=sibling,
                          sibling_seed=args.seed + 1, trees=args.trees)
    print(result)
    return 0
