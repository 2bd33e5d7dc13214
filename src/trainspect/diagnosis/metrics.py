"""Loss-landscape metrics of trained models (the features of the MD tree), each with its cost.

Definitions follow the MD-tree paper (Zhou, Chen, Cao, Schürholt, Yang, "MD tree: a model-diagnostic tree
grounded on loss landscape", ICML 2024) and the code that computed its features (Yang et al.'s loss-landscape
taxonomy): see ``docs/diagnosis.md``. Every function returns a small result object with ``seconds`` and the
unit of work it spent (forward passes, Hessian-vector products, optimizer steps), so a user can budget them.

Errors are in percent (as in the paper's tables); losses are the mean cross-entropy unless ``loss_fn`` says
otherwise. Models are evaluated in ``eval()`` mode and restored to their previous mode afterwards.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.func import functional_call

from trainspect.functional.cka import linear_cka, mixup_inputs
from trainspect.functional.connectivity import (
    bezier_point,
    interpolation_barrier,
    linear_point,
    mode_connectivity_peak,
    mode_connectivity_signed,
)

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _default_loss(loss_fn: LossFn | None) -> LossFn:
    return loss_fn if loss_fn is not None else nn.CrossEntropyLoss()


class _eval_mode:
    """Context manager: model.eval() inside, previous mode restored after."""

    def __init__(self, *models: nn.Module) -> None:
        self.models = models
        self.modes = [m.training for m in models]

    def __enter__(self) -> None:
        for m in self.models:
            m.eval()

    def __exit__(self, *exc: object) -> None:
        for m, mode in zip(self.models, self.modes):
            m.train(mode)


def _check_data(x: torch.Tensor, y: torch.Tensor, what: str) -> None:
    if len(x) != len(y):
        raise ValueError(f"{what}: inputs and targets have different lengths ({len(x)} vs {len(y)})")
    if len(x) == 0:
        raise ValueError(f"{what}: empty data")


# ---------------------------------------------------------------------------------------------- loss/error
@dataclass
class LossError:
    """Mean loss and classification error (%) of a model on a data set."""

    loss: float
    error: float
    num_samples: int
    seconds: float


@torch.no_grad()
def loss_and_error(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, loss_fn: LossFn | None = None,
                   batch_size: int = 2048) -> LossError:
    """Mean loss and top-1 error (%) over (inputs, targets) in eval mode. Cost: one forward pass over the data."""
    _check_data(inputs, targets, "loss_and_error")
    loss_fn = _default_loss(loss_fn)
    start = time.perf_counter()
    total_loss, wrong = 0.0, 0
    with _eval_mode(model):
        for i in range(0, len(inputs), batch_size):
            out = model(inputs[i: i + batch_size])
            t = targets[i: i + batch_size]
            total_loss += float(loss_fn(out, t)) * len(t)
            wrong += int((out.argmax(1) != t).sum())
    n = len(inputs)
    return LossError(total_loss / n, 100.0 * wrong / n, n, time.perf_counter() - start)


# ---------------------------------------------------------------------------------------------- Hessian
@dataclass
class HessianMetrics:
    """Top eigenvalue and trace of the training-loss Hessian on one batch (``hessian_e``/``hessian_t`` of the
    MD tree are their logarithms)."""

    top_eigenvalue: float
    trace: float
    trace_standard_error: float
    num_samples: int
    num_matvecs: int
    seconds: float
    converged: bool

    @property
    def log_top_eigenvalue(self) -> float:
        return _safe_log(self.top_eigenvalue)

    @property
    def log_trace(self) -> float:
        return _safe_log(self.trace)


def _safe_log(v: float) -> float:
    return math.log(v) if v > 0 else float("nan")


def hessian_metrics(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, loss_fn: LossFn | None = None,
                    *, num_samples: int = 200, seed: int = 0, trace_matvecs: int = 100, rtol: float = 1e-3,
                    max_iter: int = 100) -> HessianMetrics:
    """Largest Hessian eigenvalue (Lanczos) and Hessian trace (Hutchinson) of the mean loss on one batch of
    ``num_samples`` training samples drawn with ``seed``, model in eval mode (as PyHessian in the paper's code:
    one batch of 200 training samples, BN with running statistics).

    Uses the curvature machinery in ``trainspect.functional`` (``HessianOperator``, Lanczos, Hutchinson).
    Cost: ``num_matvecs`` Hessian-vector products on ``num_samples`` samples (each ≈ 2 forward+backward).
    """
    _check_data(inputs, targets, "hessian_metrics")
    from trainspect.diagnosis._curvature import hessian_top_and_trace

    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(inputs), generator=g)[: min(num_samples, len(inputs))]
    start = time.perf_counter()
    with _eval_mode(model):
        top, trace, trace_se, matvecs, converged = hessian_top_and_trace(
            model, _default_loss(loss_fn), inputs[idx], targets[idx], seed=seed, trace_matvecs=trace_matvecs,
            rtol=rtol, max_iter=max_iter)
    return HessianMetrics(top, trace, trace_se, len(idx), matvecs, time.perf_counter() - start, converged)


# ---------------------------------------------------------------------------------------------- connectivity
@dataclass
class Connectivity:
    """Training error/loss along a path between two models.

    ``peak`` = −max interior error (%) (the MD tree's ``mode_connectivity_peak``); ``signed`` = the taxonomy's
    m − e(t*); ``barrier`` = max height (%) of the error above the chord between the endpoints.
    """

    kind: str  # "bezier" or "linear"
    ts: list[float]
    errors: list[float]
    losses: list[float]
    peak: float
    signed: float
    barrier: float
    seconds: float
    num_steps: int = 0  # optimizer steps spent training the curve
    num_forward_samples: int = 0  # samples passed forward to evaluate the path
    details: dict = field(default_factory=dict)


def _params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def _check_pair(model_a: nn.Module, model_b: nn.Module) -> None:
    pa, pb = dict(model_a.named_parameters()), dict(model_b.named_parameters())
    if pa.keys() != pb.keys() or any(pa[k].shape != pb[k].shape for k in pa):
        diff = sorted(set(pa) ^ set(pb)) or [k for k in pa if pa[k].shape != pb[k].shape]
        raise ValueError(f"the two models must have the same architecture (parameters differ: {diff[:3]}); "
                         "mode connectivity and CKA compare two seeds of one configuration")


def _has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@torch.no_grad()
def _evaluate_point(model: nn.Module, weights: dict[str, torch.Tensor], inputs: torch.Tensor, targets: torch.Tensor,
                    loss_fn: LossFn, batch_size: int) -> tuple[float, float]:
    """(loss, error %) of ``model`` with ``weights``; BN statistics are recomputed for these weights first
    (running statistics of the endpoints are meaningless at an interior point)."""
    probe = copy.deepcopy(model)
    probe.load_state_dict(weights, strict=False)
    if _has_batchnorm(probe):
        for m in probe.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.reset_running_stats()
                m.momentum = None  # cumulative average over the pass
        probe.train()
        for i in range(0, len(inputs), batch_size):
            probe(inputs[i: i + batch_size])
    result = loss_and_error(probe, inputs, targets, loss_fn, batch_size)
    return result.loss, result.error


def linear_interpolation_connectivity(model_a: nn.Module, model_b: nn.Module, inputs: torch.Tensor,
                                      targets: torch.Tensor, loss_fn: LossFn | None = None, *,
                                      num_points: int = 5, batch_size: int = 2048) -> Connectivity:
    """Training error along the straight line (1 − t) w_a + t w_b: the cheap connectivity proxy (no curve
    training). Cost: ``num_points`` forward passes over the data (plus a BN pass per point if the model has BN).
    """
    _check_pair(model_a, model_b)
    _check_data(inputs, targets, "linear_interpolation_connectivity")
    loss_fn = _default_loss(loss_fn)
    start = time.perf_counter()
    wa, wb = _params(model_a), _params(model_b)
    ts = [i / (num_points - 1) for i in range(num_points)]
    losses, errors = [], []
    for t in ts:
        loss, err = _evaluate_point(model_a, linear_point(wa, wb, t), inputs, targets, loss_fn, batch_size)
        losses.append(loss)
        errors.append(err)
    return Connectivity("linear", ts, errors, losses, mode_connectivity_peak(errors), mode_connectivity_signed(errors),
                        interpolation_barrier(errors), time.perf_counter() - start,
                        num_forward_samples=num_points * len(inputs))


def bezier_mode_connectivity(model_a: nn.Module, model_b: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                             loss_fn: LossFn | None = None, *, epochs: int = 30, batch_size: int = 64,
                             lr: float = 0.01, momentum: float = 0.9, weight_decay: float = 5e-4,
                             num_points: int = 5, seed: int = 0, eval_batch_size: int = 2048) -> Connectivity:
    """Mode connectivity by training a quadratic Bezier curve between two models (Garipov et al., 2018).

    The control point θ starts at the linear midpoint and is trained with SGD (momentum, L2 penalty
    ½·wd·‖φ_θ(t)‖², one t ~ U(0, 1) per mini-batch; learning rate constant for 50 % of the epochs, then linear
    decay to 1 % by 90 %, as the taxonomy code). The training error e(t) is then evaluated at ``num_points``
    equally spaced t on the full (inputs, targets), and ``peak`` = −max(e(.25), e(.5), e(.75)) for 5 points.

    Cost: ``epochs × ⌊n / batch_size⌋`` optimizer steps on the curve (each ≈ one training step) plus
    ``num_points`` forward passes over the data.
    """
    _check_pair(model_a, model_b)
    _check_data(inputs, targets, "bezier_mode_connectivity")
    if num_points < 3:
        raise ValueError("num_points must be ≥ 3 (both endpoints and at least one interior point)")
    loss_fn = _default_loss(loss_fn)
    start = time.perf_counter()
    wa, wb = _params(model_a), _params(model_b)
    control = {k: (0.5 * (wa[k] + wb[k])).requires_grad_(True) for k in wa}
    opt = torch.optim.SGD(list(control.values()), lr=lr, momentum=momentum)
    net = copy.deepcopy(model_a)
    net.train()
    g = torch.Generator().manual_seed(seed)
    n = len(inputs)
    bs = min(batch_size, n)
    steps = 0
    for epoch in range(epochs):
        # the taxonomy's schedule: 1 until 50 %, linear to 0.01 at 90 %, then 0.01
        frac = epoch / max(1, epochs)
        factor = 1.0 if frac <= 0.5 else (1.0 - 0.99 * (frac - 0.5) / 0.4 if frac <= 0.9 else 0.01)
        for group in opt.param_groups:
            group["lr"] = lr * factor
        perm = torch.randperm(n, generator=g)
        for i in range(0, n - bs + 1, bs):
            idx = perm[i: i + bs]
            t = float(torch.rand((), generator=g))
            w = bezier_point(wa, control, wb, t)
            out = functional_call(net, w, (inputs[idx],))
            loss = loss_fn(out, targets[idx])
            if weight_decay:
                loss = loss + 0.5 * weight_decay * sum((p**2).sum() for p in w.values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
    control = {k: v.detach() for k, v in control.items()}
    ts = [i / (num_points - 1) for i in range(num_points)]
    losses, errors = [], []
    for t in ts:
        loss_t, err_t = _evaluate_point(model_a, bezier_point(wa, control, wb, t), inputs, targets, loss_fn,
                                        eval_batch_size)
        losses.append(loss_t)
        errors.append(err_t)
    return Connectivity("bezier", ts, errors, losses, mode_connectivity_peak(errors), mode_connectivity_signed(errors),
                        interpolation_barrier(errors), time.perf_counter() - start, num_steps=steps,
                        num_forward_samples=num_points * n)


# ---------------------------------------------------------------------------------------------- CKA
@dataclass
class CKA:
    """Linear CKA between two models' softmax outputs on mixup inputs."""

    value: float
    num_samples: int
    seconds: float


@torch.no_grad()
def output_cka(model_a: nn.Module, model_b: nn.Module, inputs: torch.Tensor, *, num_batches: int = 6,
               batch_size: int = 128, mixup_alpha: float = 16.0, seed: int = 0) -> CKA:
    """Linear CKA (Kornblith et al., 2019) between the softmax outputs of two models on
    ``num_batches × batch_size`` mixup training inputs (α = 16; the MD tree's ``CKA`` feature uses 6 × 128).
    Cost: 2 × num_batches × batch_size forward samples, plus an O(n · classes²) product.
    """
    _check_pair(model_a, model_b)
    if len(inputs) < 2:
        raise ValueError("output_cka needs at least 2 inputs")
    start = time.perf_counter()
    g = torch.Generator().manual_seed(seed)
    outs_a, outs_b = [], []
    with _eval_mode(model_a, model_b):
        for _ in range(num_batches):
            idx = torch.randperm(len(inputs), generator=g)[: min(batch_size, len(inputs))]
            batch = mixup_inputs(inputs[idx], mixup_alpha, g)
            outs_a.append(torch.softmax(model_a(batch), dim=1))
            outs_b.append(torch.softmax(model_b(batch), dim=1))
    a, b = torch.cat(outs_a), torch.cat(outs_b)
    return CKA(float(linear_cka(a, b)), len(a), time.perf_counter() - start)
