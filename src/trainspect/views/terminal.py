"""The terminal view: a live ``rich`` panel while training, and a findings summary at the end.

The panel is rebuilt only when rich refreshes it (4 times a second, on its own thread); a step only
stores the latest numbers, so the view costs next to nothing per step. Quiet mode (no terminal, or
``progress=False``) prints nothing during training and only the short summary at the end.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from trainspect.engine.record import Sink, StepRecord

if TYPE_CHECKING:
    from trainspect.engine.inspector import Inspector

#: series shown in the panel, in this order, when present
KEY_SERIES = ("loss", "grad_norm", "lr", "update_to_weight", "distance", "alpha", "norm_test",
              "hessian_max_eigenvalue", "step_time")

_SEVERITY_STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}


def format_number(value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    a = abs(value)
    if a != 0 and (a < 1e-3 or a >= 1e5):
        return f"{value:.3e}"
    return f"{value:.4g}"


class TerminalView(Sink):
    """Live progress and key numbers in the terminal; findings printed once, as they appear."""

    def __init__(self, progress: bool | str = "auto", total_steps: int | None = None,
                 run_dir: Path | None = None, console: Console | None = None):
        self.console = console or Console(stderr=False)
        if progress == "auto":
            progress = sys.stdout.isatty() and self.console.is_terminal
        self.live_enabled = bool(progress)
        self.total_steps = total_steps
        self.run_dir = run_dir
        self.latest: dict[str, float] = {}
        self.step = 0
        self.t_start = time.perf_counter()
        self.live: Live | None = None
        self.new_findings: list[Any] = []

    # -- sink ------------------------------------------------------------------------------------------
    def open(self, meta: dict[str, Any], layers: list[dict[str, Any]]) -> None:
        self.meta = meta
        self.t_start = time.perf_counter()
        if self.live_enabled:
            self.live = Live(get_renderable=self._render, console=self.console, refresh_per_second=4,
                             transient=False, redirect_stdout=True, redirect_stderr=True)
            self.live.start()

    def write_step(self, record: StepRecord) -> None:
        self.step = record.step + 1
        self.latest.update(record.scalars)

    def write_user_values(self, record: StepRecord) -> None:
        self.latest.update(record.scalars)

    def write_finding(self, finding: Any, *, new: bool) -> None:
        if not new:
            return
        style = _SEVERITY_STYLE.get(finding.severity, "")
        where = f" at {finding.location}" if finding.location else ""
        text = Text.assemble((f"[{finding.severity}] ", style), (f"{finding.code}", "bold"),
                             f"{where} (step {finding.first_step}): {finding.title}")
        self.console.print(text)

    def write_error(self, step: int | None, source: str, message: str, traceback: str) -> None:
        self.console.print(Text(f"trainspect: {source} failed at step {step} and was disabled: {message}",
                                style="red"))

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None

    # -- rendering ---------------------------------------------------------------------------------------
    def _render(self) -> Panel:
        elapsed = time.perf_counter() - self.t_start
        rate = self.step / elapsed if elapsed > 0 else 0.0
        head = Table.grid(padding=(0, 2))
        head.add_column()
        head.add_column()
        if self.total_steps:
            eta = (self.total_steps - self.step) / rate if rate > 0 else float("nan")
            bar = ProgressBar(total=self.total_steps, completed=min(self.step, self.total_steps), width=40)
            head.add_row(bar, Text(f"{self.step}/{self.total_steps} steps · {rate:.1f} steps/s · "
                                   f"ETA {_duration(eta)}"))
        else:
            head.add_row(Text(f"step {self.step}"), Text(f"{rate:.1f} steps/s · {_duration(elapsed)} elapsed"))
        numbers = Table(box=None, show_header=False, padding=(0, 1))
        numbers.add_column(style="bold")
        numbers.add_column(justify="right")
        shown = [k for k in KEY_SERIES if k in self.latest]
        shown += sorted(k for k in self.latest if k.startswith("val_"))
        for key in shown:
            numbers.add_row(key, format_number(self.latest[key]))
        title = f"trainspect · {self.meta.get('name', '')}" if hasattr(self, "meta") else "trainspect"
        return Panel(Group(head, numbers), title=title, border_style="blue", expand=False)

    def summary(self, inspector: Inspector) -> None:
        """Print where the run is stored, the findings and failures, after the live panel stops."""
        self.close()
        c = self.console
        findings = list(inspector.findings)
        steps = inspector.global_step
        c.print(Text.assemble(("trainspect", "bold blue"), f": {steps} steps recorded"
                              + (f" in {inspector.run_dir}" if inspector.run_dir else "")))
        if findings:
            c.print(Text(f"{len(findings)} finding(s):", style="bold"))
            for f in sorted(findings, key=lambda f: ("error", "warning", "info").index(f.severity)):
                where = f" at {f.location}" if f.location else ""
                c.print(Text.assemble((f"  [{f.severity}] ", _SEVERITY_STYLE.get(f.severity, "")),
                                      (f.code, "bold"), f"{where}: {f.title} (steps {f.first_step}–{f.last_step})"))
                for remedy in list(f.remedies)[:2]:
                    c.print(Text(f"      try: {remedy}", style="dim"))
        else:
            c.print(Text("no findings", style="green"))
        if inspector.errors:
            c.print(Text(f"{len(inspector.errors)} instrument failure(s) (see `trainspect show`):", style="red"))
            for e in inspector.errors:
                c.print(Text(f"  {e['source']} at step {e['step']}: {e['message']}", style="red"))


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"
