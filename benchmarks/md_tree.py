"""Reproduce the MD-tree paper's protocol on the digits model zoo (clean F → 10 %-label-noise F').

    # build the zoo first (resumable; see docs/diagnosis.md for timings)
    trainspect zoo build --grid session --cache zoo/digits.sqlite
    PYTHONPATH=src python benchmarks/md_tree.py --cache zoo/digits.sqlite --grid session

Cases (Zhou et al., ICML 2024, Table B): Q1 and Q2a dataset transfer (a few configurations of the clean
collection → all of the noisy one), scale transfer by model size (widths ≤ k) and by data amount (data ≤ k);
plus Q2b dataset transfer. Every method is fitted on the same sample and tested on all usable configurations of
the noisy collection; mean ± std over the sampling seeds {42, 90, 38, 18, 72}.
"""

from __future__ import annotations

import argparse
import sys

from trainspect.diagnosis.protocol import METHODS, run_case
from trainspect.diagnosis.zoo import GRIDS, zoo_table


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", default="zoo/digits.sqlite")
    ap.add_argument("--grid", default="session", choices=sorted(GRIDS))
    ap.add_argument("--clean", default="digits-mlp", help="recipe of the training collection F")
    ap.add_argument("--noisy", default="digits-mlp-noisy", help="recipe of the test collection F'")
    ap.add_argument("--q1-pairs", type=int, default=4, help="(data, width) pairs sampled for Q1 dataset transfer")
    ap.add_argument("--q2a-levels", type=int, default=1, help="data levels sampled for Q2a dataset transfer")
    ap.add_argument("--q2b-min-width", type=float, default=16)
    args = ap.parse_args(argv)
    grid = GRIDS[args.grid]
    f = zoo_table(args.cache, args.clean, grid)
    g = zoo_table(args.cache, args.noisy, grid)
    small_w, small_d = sorted(grid.widths)[1], sorted(grid.data_fractions)[0]
    cases = [
        ("Q1 dataset transfer", "Q1", "random", args.q1_pairs, None, f"{args.q1_pairs} (data, width) pairs"),
        ("Q1 scale transfer (data)", "Q1", "data_limit", small_d, None, f"data ≤ {small_d:g}"),
        ("Q1 scale transfer (width)", "Q1", "width_limit", small_w, None, f"width ≤ {small_w}"),
        ("Q2a dataset transfer", "Q2a", "random_data", args.q2a_levels, None, f"{args.q2a_levels} data level(s)"),
        ("Q2a scale transfer (data)", "Q2a", "data_limit", small_d, None, f"data ≤ {small_d:g}"),
        ("Q2b dataset transfer", "Q2b", "random_width", 1, args.q2b_min_width, f"1 width ≥ {args.q2b_min_width:g}"),
    ]
    print(f"zoo: {args.cache}, grid {args.grid!r} ({len(grid)} configs × {len(grid.seeds)} seeds); "
          f"F = {args.clean} ({len(f['width'])} configs), F' = {args.noisy} ({len(g['width'])} configs)\n")
    short = {"Hyperparameter + DT": "Hyper DT", "Validation + DT": "Val DT", "Hyper + Validation + DT": "Hyp+Val DT",
             "Loss landscape + DT": "LL-metric DT", "MD tree": "MD tree", "MD tree (CKA)": "MD (CKA)"}
    header = f"{'case':<27} {'train sample':<22} {'n_tr':>5} {'n_te':>5} "
    header += " ".join(f"{short[m]:>13}" for m in METHODS)
    print(header)
    print("-" * len(header))
    results = {}
    for name, task, mode, k, min_w, desc in cases:
        try:
            r = run_case(name, task, f, g, mode, k, min_width=min_w)
        except ValueError as error:
            print(f"{name:<27} skipped: {error}")
            continue
        results[name] = r
        cells = []
        for m in METHODS:
            mean, std = r.mean_std(m)
            cells.append(f"{'—':>13}" if mean != mean else f"{mean:6.1f} ±{std:4.1f}")
        n_tr = f"{min(r.train_rows)}" if min(r.train_rows) == max(r.train_rows) else f"~{sum(r.train_rows) // 5}"
        print(f"{name:<27} {desc:<22} {n_tr:>5} {r.test_rows:>5} " + " ".join(f"{c:>13}" for c in cells))
    print()
    if "Q1 dataset transfer" in results:
        r = results["Q1 dataset transfer"]
        print(f"Q1 dataset transfer: MD tree {r.mean_std('MD tree')[0]:.1f}% vs validation "
              f"{r.mean_std('Validation + DT')[0]:.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
