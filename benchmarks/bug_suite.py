"""Run trainspect's default checks on the bug suite (``benchmarks/bugs/``) and print the scores.

    PYTHONPATH=src:. python benchmarks/bug_suite.py            # all cases (about a minute or two on 2 cores)
    PYTHONPATH=src:. python benchmarks/bug_suite.py --only mlp  # cases whose name contains "mlp"

For every case: a plain run (no trainspect) verifies that the fault really shows (or, for healthy cases,
that the run trains well); then the same seed runs under ``trainspect.attach`` with the default
instruments and checks. A faulty case is detected when one of its expected codes is reported; a healthy
case has a false alarm when any finding of severity warning or error is reported.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import trainspect
from benchmarks.bugs.cases import CASES
from benchmarks.bugs.common import Case, run


def evaluate(case: Case, root: Path) -> dict:
    plain, _ = run(case)
    verified, how = case.verify(plain) if case.verify else (True, "")

    def factory(setup):  # type: ignore[no-untyped-def]
        return trainspect.attach(setup.model, setup.optimizer, setup.loss_fn, run_dir=root / case.name,
                                 overwrite=True, progress=False)

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        _, inspector = run(case, factory)
        inspector.close()
    findings = list(inspector.findings)
    alarms = [f for f in findings if f.severity in ("warning", "error")]
    hits = [f for f in findings if f.code in case.expected]
    first = min((f.first_step for f in hits), default=None)
    return {"case": case, "verified": verified, "how": how, "codes": sorted({f.code for f in findings}),
            "alarms": alarms, "detected": bool(hits), "first_step": first,
            "primary": any(f.code == case.expected[0] for f in hits) if case.expected else False,
            "errors": inspector.errors}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="", help="run only cases whose name contains this")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    cases = [c for c in CASES if args.only in c.name]
    rows = []
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        for case in cases:
            rows.append(evaluate(case, Path(tmp)))
            r = rows[-1]
            status = ("healthy" if not case.fault else "DETECTED" if r["detected"] else "missed")
            if not case.fault and r["alarms"]:
                status = "FALSE ALARM"
            verified = "yes" if r["verified"] else "NO "
            print(f"{case.name:32s} {case.family:11s} {case.fault or '-':28s} verified={verified}"
                  f" step={r['first_step'] if r['first_step'] is not None else '-':>4} {status:11s} "
                  f"codes={','.join(r['codes']) or '-'}   [{r['how']}]", flush=True)
            for e in r["errors"]:
                print(f"    ! {e['source']}: {e['message']}")
    faulty = [r for r in rows if r["case"].fault]
    healthy = [r for r in rows if not r["case"].fault]
    detected = [r for r in faulty if r["detected"]]
    steps = [r["first_step"] for r in detected]
    print()
    kinds = len({r["case"].fault for r in faulty})
    print(f"fault kinds: {kinds}, faulty cases: {len(faulty)}, healthy: {len(healthy)}, "
          f"verified by a plain run: {sum(r['verified'] for r in rows)}/{len(rows)}, time {time.time() - t0:.0f} s")
    print(f"primary code reported: {sum(r['primary'] for r in faulty)}/{len(faulty)}")
    print(f"fault detection rate: {len(detected)}/{len(faulty)}")
    print(f"healthy runs with a false alarm: {sum(bool(r['alarms']) for r in healthy)}/{len(healthy)}")
    print(f"median steps to detection: {statistics.median(steps) if steps else float('nan'):g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
