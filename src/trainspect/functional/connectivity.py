"""Mode connectivity between two trained networks: curves in weight space and the summary numbers.

Garipov, Izmailov, Podoprikhin, Vetrov, Wilson, "Loss Surfaces, Mode Connectivity, and Fast Ensembling of
DNNs" (NeurIPS 2018): a quadratic Bezier curve with fixed endpoints w₀, w₁ and one trainable control point θ,

    φ_θ(t) = (1 − t)² w₀ + 2 t (1 − t) θ + t² w₁,   t ∈ [0, 1],

is trained to minimise E_{t~U(0,1)} L(φ_θ(t)). The MD-tree paper (Zhou et al., ICML 2024) and Yang et al.'s
loss-landscape taxonomy summarise the curve by the training error e(t) (%) at t ∈ {0, .25, .5, .75, 1}.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch


def bezier_point(start: Mapping[str, torch.Tensor], control: Mapping[str, torch.Tensor],
                 end: Mapping[str, torch.Tensor], t: float) -> dict[str, torch.Tensor]:
    """Weights at ``t`` on the quadratic Bezier curve (1 − t)² w₀ + 2t(1 − t) θ + t² w₁ (differentiable in θ)."""
    a, b, c = (1.0 - t) ** 2, 2.0 * t * (1.0 - t), t**2
    return {k: a * start[k] + b * control[k] + c * end[k] for k in start}


def linear_point(start: Mapping[str, torch.Tensor], end: Mapping[str, torch.Tensor],
                 t: float) -> dict[str, torch.Tensor]:
    """Weights (1 − t) w₀ + t w₁ on the straight line between two models."""
    return {k: (1.0 - t) * start[k] + t * end[k] for k in start}


def mode_connectivity_peak(errors: Sequence[float]) -> float:
    """``mode_connectivity_peak`` of the MD tree: −max over the interior points of the training error.

    ``errors`` are e(t) at equally spaced t including both endpoints (e.g. t = 0, .25, .5, .75, 1); the
    endpoints are excluded. 0 means a zero-error path; −30 means the curve crosses 30 % training error.
    """
    if len(errors) < 3:
        raise ValueError(f"need the errors at ≥ 3 points including both endpoints, got {len(errors)}")
    return -float(max(errors[1:-1]))


def mode_connectivity_signed(errors: Sequence[float]) -> float:
    """The taxonomy's signed ``mode_connectivity``: m − e(t*), where m = (e(0) + e(1))/2 and
    t* = argmax_t |e(t) − m|. Negative when the curve has a barrier, positive when it dips below the ends."""
    if len(errors) < 3:
        raise ValueError(f"need the errors at ≥ 3 points including both endpoints, got {len(errors)}")
    m = 0.5 * (errors[0] + errors[-1])
    worst = max(errors, key=lambda e: abs(e - m))
    return float(m - worst)


def interpolation_barrier(values: Sequence[float]) -> float:
    """Barrier height along a path: max_t [v(t) − ((1 − t) v(0) + t v(1))] over equally spaced t, ≥ 0 when the
    path rises above the chord (Frankle et al., 2020 use it for the linear-interpolation error barrier)."""
    n = len(values)
    if n < 2:
        raise ValueError("need the values at ≥ 2 points")
    chord = [values[0] + (values[-1] - values[0]) * i / (n - 1) for i in range(n)]
    return float(max(v - c for v, c in zip(values, chord)))
