"""``trainspect zoo``: build a model zoo (train + measure a grid), show its table, fit MD trees on it."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    from trainspect.diagnosis.recipes import RECIPES
    from trainspect.diagnosis.zoo import GRIDS, STAGES

    p = sub.add_parser("zoo", help="build a model zoo and fit MD trees on it (model diagnosis)",
                       description="Train a grid width × batch size × data fraction × seeds with a recipe, measure "
                                   "loss-landscape metrics, label every configuration by its room for improvement, "
                                   "and fit MD trees. Recipes: " + ", ".join(sorted(RECIPES)) + ". Grids: "
                                   + "; ".join(f"{k}: {len(g)} configs × {len(g.seeds)} seeds"
                                               for k, g in GRIDS.items()))
    zs = p.add_subparsers(dest="zoo_command", metavar="ACTION")
    b = zs.add_parser("build", help="train and measure (resumes an interrupted build)")
    b.add_argument("--recipe", default="digits-mlp,digits-mlp-noisy", help="comma-separated recipe names")
    b.add_argument("--grid", default="session", choices=sorted(GRIDS))
    b.add_argument("--cache", default="zoo/digits.sqlite", help="the SQLite file of the zoo")
    b.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    b.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    b.set_defaults(func=_build)
    t = zs.add_parser("table", help="print a collection's label counts and write its table as CSV")
    t.add_argument("--recipe", default="digits-mlp")
    t.add_argument("--grid", default=None, choices=sorted(GRIDS), help="restrict to a grid's configurations")
    t.add_argument("--cache", default="zoo/digits.sqlite")
    t.add_argument("--csv", default=None, help="write the table to this CSV file")
    t.set_defaults(func=_table)
    f = zs.add_parser("fit", help="fit the MD trees on a collection and write them as JSON (for diagnose --trees)")
    f.add_argument("--recipe", default="digits-mlp", help="comma-separated: fit on the union of these collections")
    f.add_argument("--grid", default=None, choices=sorted(GRIDS))
    f.add_argument("--cache", default="zoo/digits.sqlite")
    f.add_argument("--q2b-min-width", type=float, default=16, help="fit Q2b on widths ≥ this (paper: 32 of 2..128)")
    f.add_argument("--out", default="md_trees.json")
    f.set_defaults(func=_fit)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _build(args: argparse.Namespace) -> int:
    import torch

    from trainspect.diagnosis.zoo import GRIDS, build_zoo

    torch.set_num_threads(args.threads)
    for recipe in args.recipe.split(","):
        build_zoo(recipe.strip(), GRIDS[args.grid], args.cache, stages=args.stages.split(","),
                  progress=not args.quiet)
    print(f"zoo stored in {args.cache}")
    return 0


def _table(args: argparse.Namespace) -> int:
    from collections import Counter

    from trainspect.diagnosis.zoo import GRIDS, table_to_csv, zoo_table

    table = zoo_table(args.cache, args.recipe, GRIDS[args.grid] if args.grid else None)
    print(f"{args.recipe}: {len(table['width'])} configurations")
    for col in ("bs_failure", "width_vs_batch", "data_vs_batch"):
        counts = Counter("optimal" if v is None else v for v in table[col])
        print(f"  {col:<16} " + "  ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    if args.csv:
        table_to_csv(table, args.csv)
        print(f"table written to {args.csv}")
    return 0


def _fit(args: argparse.Namespace) -> int:
    from trainspect.diagnosis.tree import fit_trees, save_trees
    from trainspect.diagnosis.zoo import GRIDS, concat_tables, zoo_table

    grid = GRIDS[args.grid] if args.grid else None
    table = concat_tables(*(zoo_table(args.cache, r.strip(), grid) for r in args.recipe.split(",")))
    trees = fit_trees(table, q2b_min_width=args.q2b_min_width)
    save_trees(trees, args.out, {"recipe": args.recipe, "grid": args.grid, "cache": str(Path(args.cache).name),
                                 "q2b_min_width": args.q2b_min_width})
    for name, tree in trees.items():
        print(f"{name:<7} thresholds {[round(t, 3) for t in tree.thresholds]}  "
              f"training accuracy {100 * tree.info['train_accuracy']:.1f}% on {tree.info['train_rows']} rows")
    print(f"trees written to {args.out}")
    return 0
