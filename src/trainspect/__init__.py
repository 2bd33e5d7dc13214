"""trainspect: a debugger for neural-network training in PyTorch.

    inspector = trainspect.attach(model, optimizer, loss_fn, run_dir="runs/mlp")
    for inputs, targets in loader:
        optimizer.zero_grad()
        with inspector.step(inputs, targets):
            loss = loss_fn(model(inputs), targets)
            loss.backward()
        optimizer.step()
    inspector.close()
"""

__version__ = "0.1.0"

# the engine
from trainspect.checks import CHECKS, Check, Finding
from trainspect.checks.compare import compare
from trainspect.checks.preflight import PreflightReport, preflight
from trainspect.configurations import CONFIGURATIONS

# post-training diagnosis (MD tree)
from trainspect.diagnosis import diagnose
from trainspect.engine.inspector import Inspector, attach
from trainspect.engine.schedules import every, first, logarithmic

# extension points
from trainspect.engine.values import Histogram, Histogram2d, SeriesInfo
from trainspect.instruments import INSTRUMENTS, Instrument
from trainspect.providers import PROVIDERS, Provider

# reading runs
from trainspect.store import RunReader, list_runs, open_run

__all__ = [
    "CHECKS",
    "CONFIGURATIONS",
    "INSTRUMENTS",
    "PROVIDERS",
    "Check",
    "Finding",
    "Histogram",
    "Histogram2d",
    "Inspector",
    "Instrument",
    "PreflightReport",
    "Provider",
    "RunReader",
    "SeriesInfo",
    "__version__",
    "attach",
    "compare",
    "diagnose",
    "every",
    "first",
    "list_runs",
    "logarithmic",
    "open_run",
    "preflight",
]
