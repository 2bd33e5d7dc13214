"""``trainspect.diagnose``: why is this trained model bad? (MD tree on loss-landscape metrics)

Given a trained classifier, its training data and validation data, this measures the MD tree's features and
walks the three diagnostic trees (Zhou et al., ICML 2024):

- Q1: is the optimizer temperature (learning rate / batch size) too small or too large?
- Q2a: is the failure source the model size or the optimizer hyper-parameters?
- Q2b: is the failure source the amount of data or the optimizer hyper-parameters?

Mode connectivity and CKA compare two models of the *same* configuration trained with different seeds, so
they need a sibling: pass ``sibling=`` (an already trained one) or ``recipe=`` (``seed -> trained model``, called
with ``sibling_seed``). Without either, the trees answer only where their path does not need those metrics.
As in the paper, the per-model features (errors, losses, Hessian) are averaged over the model and its sibling.

The default trees (``default_trees.json``) were fitted on the digits MLP zoo shipped with trainspect; their
thresholds are scale-specific (training error %, connectivity %, log Hessian trace), so refit them on a zoo of
your own architecture (``trainspect zoo build`` + ``trainspect zoo fit``) before trusting them elsewhere.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from trainspect.diagnosis.metrics import (
    bezier_mode_connectivity,
    hessian_metrics,
    linear_interpolation_connectivity,
    loss_and_error,
    output_cka,
)
from trainspect.diagnosis.tree import QUESTIONS, Decision, MDTree, load_trees

Data = tuple[torch.Tensor, torch.Tensor]


@dataclass
class MetricCost:
    """What one metric cost: wall seconds and its unit of work."""

    seconds: float
    work: str


@dataclass
class Diagnosis:
    """Metrics, their costs, and one :class:`Decision` per question."""

    metrics: dict[str, float]
    costs: dict[str, MetricCost]
    decisions: dict[str, Decision]
    trees: dict[str, MDTree] = field(repr=False, default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return self.render()

    def render(self) -> str:
        lines = ["Model diagnosis (MD tree, Zhou et al. ICML 2024)", "", "Metrics:"]
        for k, v in self.metrics.items():
            lines.append(f"  {k:<24} {v: .4g}")
        lines.append("")
        for task, d in self.decisions.items():
            lines.append(f"{task}: {QUESTIONS[task]}")
            for step in d.path:
                lines.append(f"    - {step}")
            if d.label is None:
                lines.append(f"    → cannot answer: needs {d.missing!r} (pass sibling= or recipe= to measure it)")
            else:
                lines.append(f"    → {d.verdict}")
                lines.append(f"    remedy: {d.remedy}")
            lines.append("")
        lines.append("Cost:")
        for k, c in self.costs.items():
            lines.append(f"  {k:<24} {c.seconds:7.2f} s   {c.work}")
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)


def _check_pair_data(data: Data, what: str) -> Data:
    if not (isinstance(data, (tuple, list)) and len(data) == 2):
        raise ValueError(f"diagnose: {what} must be a pair (inputs, targets) of tensors")
    x, y = data
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor) or len(x) != len(y) or len(x) == 0:
        raise ValueError(f"diagnose: {what} must be two tensors with the same non-zero number of samples")
    return x, y


def diagnose(
    model: nn.Module,
    train_data: Data,
    val_data: Data,
    *,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    sibling: nn.Module | None = None,
    recipe: Callable[[int], nn.Module] | None = None,
    sibling_seed: int = 1,
    trees: Mapping[str, MDTree] | str | Path | None = None,
    hessian_samples: int = 200,
    trace_matvecs: int = 50,
    curve_epochs: int = 30,
    curve_batch_size: int = 64,
    curve_lr: float = 0.01,
    seed: int = 0,
) -> Diagnosis:
    """Measure the MD-tree metrics of ``model`` and answer Q1/Q2a/Q2b.

    Args:
        model: the trained classifier (outputs logits).
        train_data, val_data: (inputs, targets) tensors; the training data is what the model was trained on.
        loss_fn: the training loss (default: cross-entropy).
        sibling: a model of the same configuration trained with another seed.
        recipe: ``seed -> trained model`` for the same configuration; used when ``sibling`` is None.
        trees: a mapping task → :class:`MDTree`, a JSON path, or None for the shipped trees.
        hessian_samples, trace_matvecs: Hessian batch (paper: 200) and Hutchinson products.
        curve_epochs, curve_batch_size, curve_lr: the Bezier-curve fit of the mode connectivity.

    Returns:
        a :class:`Diagnosis` (``print(diagnosis)`` gives the answers, decision paths and remedies).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"diagnose: model must be an nn.Module, got {type(model).__name__}")
    x, y = _check_pair_data(train_data, "train_data")
    xv, yv = _check_pair_data(val_data, "val_data")
    tree_map = dict(trees) if isinstance(trees, Mapping) else load_trees(trees)
    costs: dict[str, MetricCost] = {}
    notes: list[str] = []

    if sibling is None and recipe is not None:
        start = time.perf_counter()
        sibling = recipe(sibling_seed)
        if not isinstance(sibling, nn.Module):
            raise TypeError(f"diagnose: recipe({sibling_seed}) must return the trained nn.Module, got "
                            f"{type(sibling).__name__}")
        costs["sibling training"] = MetricCost(time.perf_counter() - start, f"recipe(seed={sibling_seed})")
    models = [model] + ([sibling] if sibling is not None else [])

    per_model: dict[str, list[float]] = {}
    matvecs = 0
    for i, m in enumerate(models):
        tr = loss_and_error(m, x, y, loss_fn)
        va = loss_and_error(m, xv, yv, loss_fn)
        _add_cost(costs, "loss/error", tr.seconds + va.seconds, f"forward over {tr.num_samples + va.num_samples} "
                  f"samples × {len(models)} model(s)")
        h = hessian_metrics(m, x, y, loss_fn, num_samples=hessian_samples, seed=seed + i, trace_matvecs=trace_matvecs)
        matvecs += h.num_matvecs
        _add_cost(costs, "Hessian top/trace", h.seconds, f"{matvecs} Hessian-vector products on "
                  f"{h.num_samples} samples ({len(models)} model(s))")
        if not h.converged:
            notes.append("Lanczos did not reach its tolerance for the top Hessian eigenvalue")
        for k, v in (("train_error", tr.error), ("train_loss", tr.loss), ("test_error", va.error),
                     ("test_loss", va.loss), ("hessian_top", h.top_eigenvalue), ("hessian_trace", h.trace)):
            per_model.setdefault(k, []).append(v)
    metrics = {k: sum(v) / len(v) for k, v in per_model.items()}
    metrics["hessian_e"] = math.log(metrics.pop("hessian_top")) if metrics["hessian_top"] > 0 else math.nan
    metrics["hessian_t"] = math.log(metrics.pop("hessian_trace")) if metrics["hessian_trace"] > 0 else math.nan
    metrics["mode_connectivity_peak"] = math.nan
    metrics["CKA"] = math.nan
    if sibling is not None:
        mc = bezier_mode_connectivity(model, sibling, x, y, loss_fn, epochs=curve_epochs, batch_size=curve_batch_size,
                                      lr=curve_lr, seed=seed)
        costs["mode connectivity"] = MetricCost(mc.seconds, f"{mc.num_steps} curve-training steps + "
                                                f"{mc.num_forward_samples} forward samples")
        lin = linear_interpolation_connectivity(model, sibling, x, y, loss_fn)
        costs["linear barrier"] = MetricCost(lin.seconds, f"{lin.num_forward_samples} forward samples")
        c = output_cka(model, sibling, x, seed=seed)
        costs["CKA"] = MetricCost(c.seconds, f"2 × {c.num_samples} forward samples (mixup)")
        metrics.update({"mode_connectivity_peak": mc.peak, "linear_peak": lin.peak,
                        "linear_barrier": lin.barrier, "CKA": c.value})
    else:
        notes.append("no sibling model: mode connectivity and CKA were not measured (pass sibling= or recipe=)")
    decisions = {task: tree.decide(metrics) for task, tree in tree_map.items() if task in QUESTIONS}
    return Diagnosis(metrics, costs, decisions, tree_map, notes)


def _add_cost(costs: dict[str, MetricCost], key: str, seconds: float, work: str) -> None:
    if key in costs:
        costs[key] = MetricCost(costs[key].seconds + seconds, work)
    else:
        costs[key] = MetricCost(seconds, work)
