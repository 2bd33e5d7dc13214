"""Scale transfer *within* one collection of the digits zoo (not the paper's protocol; a diagnostic of this zoo):
fit on widths ≤ 8 (or data ≤ 0.5) and test on widths ≥ 16 (data > 0.5) of the same collection.

    PYTHONPATH=src python benchmarks/md_tree_in_collection.py     # after `trainspect zoo build --grid session`
"""

from trainspect.diagnosis.protocol import rows, run_case
from trainspect.diagnosis.zoo import GRIDS, zoo_table

g = GRIDS["session"]
for rec in ("digits-mlp", "digits-mlp-noisy"):
    t = zoo_table("zoo/digits.sqlite", rec, g)
    # in-distribution scale transfer: fit on widths <= 8, test on widths >= 16 of the same collection
    small, big = rows(t, t["width"] <= 8), rows(t, t["width"] >= 16)
    for task in ("Q1", "Q2a"):
        r = run_case("x", task, small, big, "width_limit", 8)
        print(rec, task, "width<=8 -> >=16", r.train_rows[0], r.test_rows,
              {m: round(r.mean_std(m)[0], 1) for m in r.accuracies})
    small, big = rows(t, t["data_fraction"] <= 0.5), rows(t, t["data_fraction"] > 0.5)
    for task in ("Q1", "Q2a"):
        r = run_case("x", task, small, big, "data_limit", 0.5)
        print(rec, task, "data<=.5 -> >.5", r.train_rows[0], r.test_rows,
              {m: round(r.mean_std(m)[0], 1) for m in r.accuracies})
