"""Plain-text summaries of runs for the terminal (``trainspect runs``, ``trainspect show``)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table
from rich.text import Text

from trainspect.store import list_runs, open_run
from trainspect.views.terminal import format_number


def print_runs(root: str | os.PathLike[str], console: Console | None = None) -> int:
    console = console or Console()
    runs = list_runs(root) if Path(root).exists() else []
    if not runs:
        console.print(f"no trainspect runs under {root}")
        return 1
    table = Table(title=f"runs in {root}")
    for col in ("run", "started", "status", "steps", "model", "findings"):
        table.add_column(col)
    for path in runs:
        try:
            with open_run(path) as r:
                meta = r.meta
                last = r.last_step
                table.add_row(_relative(path, root), str(meta.get("start_time", ""))[:19], str(meta.get("status", "?")),
                              str(0 if last is None else last + 1), str(meta.get("model_class", "")),
                              str(len(r.findings())))
        except Exception as error:  # one unreadable run must not hide the others
            table.add_row(_relative(path, root), "", f"unreadable: {error}", "", "", "")
    console.print(table)
    return 0


def _relative(path: Path, root: str | os.PathLike[str]) -> str:
    try:
        return str(path.relative_to(root)) or path.name
    except ValueError:
        return str(path)


def print_summary(run: str | os.PathLike[str], console: Console | None = None) -> None:
    console = console or Console()
    with open_run(run) as r:
        meta = r.meta
        steps = r.steps()
        n = len(steps["step"])
        console.print(Text(f"run {r.run_dir}", style="bold blue"))
        console.print(f"  {meta.get('model_class')} · {meta.get('trainable_parameter_count', 0):,} trainable "
                      f"parameters · optimizer {meta.get('optimizer')} · loss {meta.get('loss')} "
                      f"({meta.get('loss_reduction')})")
        console.print(f"  started {str(meta.get('start_time', ''))[:19]} · status {meta.get('status')} · {n} steps")
        if n:
            user = steps["user_seconds"]
            over = steps["overhead_seconds"]
            ratio = (np.median(user + over) / np.median(user)) if np.median(user) > 0 else math.nan
            console.print(f"  median step {1e3 * np.median(user):.2f} ms, trainspect adds "
                          f"{1e3 * np.median(over):.2f} ms ({ratio:.2f}x)")
        table = Table(title="scalar series", show_lines=False)
        for col in ("series", "first", "last", "min", "max", "points"):
            table.add_column(col, justify="right" if col != "series" else "left")
        for name in r.series_names("scalar"):
            s = r.series(name)
            if len(s) == 0:
                continue
            v = s.values
            finite = v[np.isfinite(v)]
            table.add_row(name, format_number(v[0]), format_number(v[-1]),
                          format_number(finite.min()) if finite.size else "nan",
                          format_number(finite.max()) if finite.size else "nan", str(len(v)))
        console.print(table)
        findings = r.findings()
        if findings:
            console.print(Text(f"{len(findings)} finding(s)", style="bold"))
            for f in findings:
                where = f" at {f['location']}" if f["location"] else ""
                console.print(f"  [{f['severity']}] {f['code']}{where} (steps {f['first_step']}–{f['last_step']}): "
                              f"{f['title']}")
                for remedy in f["remedies"][:3]:
                    console.print(f"      try: {remedy}")
        else:
            console.print(Text("no findings", style="green"))
        errors = r.errors()
        if errors:
            console.print(Text(f"{len(errors)} failure(s) of instruments or checks:", style="red"))
            for e in errors:
                console.print(f"  {e['source']} at step {e['step']}: {e['message']}")
