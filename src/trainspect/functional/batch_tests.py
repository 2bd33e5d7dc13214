"""Statistics of the per-sample gradient distribution, from sums (so they can be all-reduced first).

Notation (Cockpit's conventions, ``shared/reference/cockpit.md`` §1.8–1.13): g_i = ∇ℓ_i is the gradient of
sample i's own loss, N the number of samples, ḡ = (1/N) Σ_i g_i the mini-batch gradient (for
``reduction="mean"``). Every function takes *sums over samples*, never per-sample tensors, so a
distributed run all-reduces the sums and then calls the same function (the one-process case is the same).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch


def _t(x: float | torch.Tensor) -> torch.Tensor:
    return x.to(torch.float64) if isinstance(x, torch.Tensor) else torch.tensor(float(x), dtype=torch.float64)


def _numpy(*values: Any) -> bool:
    """Whether the arguments are Python floats or NumPy arrays (no tensor): then the tests are computed in NumPy
    float64, with the same IEEE results as the tensor path (0/0 = NaN, √(negative) = NaN), and return a float or
    an array. Inside a training step a NumPy operation on a few numbers costs a fraction of a torch dispatch."""
    return not any(isinstance(v, torch.Tensor) for v in values)


def _result(value: Any) -> Any:
    return float(value) if np.ndim(value) == 0 else value


def norm_test(sum_sq_norms: float | torch.Tensor, mean_grad_sq_norm: float | torch.Tensor, n: int) -> torch.Tensor:
    """Norm test of Byrd, Chin, Nocedal, Wu (2012), "Sample size selection in optimization methods for
    machine learning", Eq. 3.9 — the smallest θ for which the test passes (Cockpit's ``NormTest``):

        θ = √( (Σ_i ‖g_i‖² − N‖ḡ‖²) / ((N − 1) · N · ‖ḡ‖²) )

    i.e. √(tr Var̂[g] / (N‖ḡ‖²)) with the unbiased sample variance. Large θ: the gradient is noisy
    relative to its norm (a larger batch would help).

    Args:
        sum_sq_norms: Σ_i ‖g_i‖².
        mean_grad_sq_norm: ‖ḡ‖².
        n: N (≥ 2).
    """
    if _numpy(sum_sq_norms, mean_grad_sq_norm):
        with np.errstate(all="ignore"):
            s, g2 = np.asarray(sum_sq_norms, np.float64), np.asarray(mean_grad_sq_norm, np.float64)
            return _result(np.sqrt((s - n * g2) / (n - 1) / (n * g2)))
    s, g2 = _t(sum_sq_norms), _t(mean_grad_sq_norm)
    var = (s - n * g2) / (n - 1)
    return torch.sqrt(var / (n * g2))


def inner_product_test(
    sum_proj_sq: float | torch.Tensor, mean_grad_sq_norm: float | torch.Tensor, n: int
) -> torch.Tensor:
    """Inner-product test of Bollapragada, Byrd, Nocedal (2017), "Adaptive sampling strategies for
    stochastic optimization", Eq. 2.6 (Cockpit's ``InnerTest``), with π_i = g_iᵀḡ:

        θ = √( (Σ_i π_i² − N‖ḡ‖⁴) / ((N − 1) · N · ‖ḡ‖⁴) )

    the (unbiased) spread of the per-sample gradients *along* ḡ, relative to ‖ḡ‖².

    Args:
        sum_proj_sq: Σ_i (g_iᵀḡ)².
        mean_grad_sq_norm: ‖ḡ‖².
        n: N.
    """
    if _numpy(sum_proj_sq, mean_grad_sq_norm):
        with np.errstate(all="ignore"):
            p2, g2 = np.asarray(sum_proj_sq, np.float64), np.asarray(mean_grad_sq_norm, np.float64)
            return _result(np.sqrt((p2 - n * g2 * g2) / (n - 1) / (n * g2 * g2)))
    p2, g2 = _t(sum_proj_sq), _t(mean_grad_sq_norm)
    var = (p2 - n * g2 * g2) / (n - 1)
    return torch.sqrt(var / (n * g2 * g2))


def orthogonality_test(
    sum_sq_norms: float | torch.Tensor, sum_proj_sq: float | torch.Tensor, mean_grad_sq_norm: float | torch.Tensor,
    n: int,
) -> torch.Tensor:
    """Orthogonality test of Bollapragada et al. (2017), Eq. 3.3 (Cockpit's ``OrthoTest``):

        ν = √( (Σ_i ‖g_i‖² − Σ_i π_i²/‖ḡ‖²) / ((N − 1) · N · ‖ḡ‖²) )

    the spread of the per-sample gradients *orthogonal* to ḡ (π_i = g_iᵀḡ).
    """
    if _numpy(sum_sq_norms, sum_proj_sq, mean_grad_sq_norm):
        with np.errstate(all="ignore"):
            s, p2, g2 = (np.asarray(v, np.float64) for v in (sum_sq_norms, sum_proj_sq, mean_grad_sq_norm))
            return _result(np.sqrt((s - p2 / g2) / (n - 1) / (n * g2)))
    s, p2, g2 = _t(sum_sq_norms), _t(sum_proj_sq), _t(mean_grad_sq_norm)
    var = (s - p2 / g2) / (n - 1)
    return torch.sqrt(var / (n * g2))


def _coordinate_moments(sum_grads: list[torch.Tensor], sum_grads_squared: list[torch.Tensor], n: int):
    mean = torch.cat([s.reshape(-1).to(torch.float64) for s in sum_grads]) / n
    second = torch.cat([s.reshape(-1).to(torch.float64) for s in sum_grads_squared]) / n
    return mean, second


def mean_gsnr(sum_grads: list[torch.Tensor], sum_grads_squared: list[torch.Tensor], n: int,
              epsilon: float = 1e-5) -> torch.Tensor:
    """Mean gradient signal-to-noise ratio, Liu et al. (2020), "Understanding why neural networks
    generalize well through GSNR of parameters" (Cockpit's ``MeanGSNR``, same ε and biased variance):

        GSNR_d = ḡ_d² / ( (1/N) Σ_i g_{i,d}² − ḡ_d² + ε ),   output: mean over coordinates d.
    """
    mean, second = _coordinate_moments(sum_grads, sum_grads_squared, n)
    return (mean.square() / (second - mean.square() + epsilon)).mean()


def cabs_batch_size(sum_grads: list[torch.Tensor], sum_grads_squared: list[torch.Tensor], n: int,
                    learning_rate: float | torch.Tensor, loss: float | torch.Tensor) -> torch.Tensor:
    """CABS suggested batch size, Balles, Romero, Hennig (2017), "Coupling adaptive batch sizes with
    learning rates", Eq. 22 (Cockpit's ``CABS``):

        B_CABS = α · tr(Σ̂) / L,   tr(Σ̂) = Σ_d ( (1/N) Σ_i g_{i,d}² − ḡ_d² )   (biased variance)

    with α the learning rate and L the mini-batch loss. For optimizers other than plain SGD the caller
    passes an *effective* learning rate (see :func:`effective_learning_rate`).
    """
    mean, second = _coordinate_moments(sum_grads, sum_grads_squared, n)
    return _t(learning_rate) * (second - mean.square()).sum() / _t(loss)


def effective_learning_rate(grad_dot_update: float | torch.Tensor, grad_sq_norm: float | torch.Tensor) -> torch.Tensor:
    """The SGD learning rate that makes the same first-order progress as the update d actually taken:

        α_eff = −ḡᵀd / ‖ḡ‖²

    For plain SGD (d = −α ḡ) it is exactly α; for momentum, Adam, weight decay, ... it is the step length
    along −ḡ that the optimizer effectively took this step (negative if it moved uphill along ḡ).
    """
    return -_t(grad_dot_update) / _t(grad_sq_norm)


def early_stopping_criterion(sum_grads: list[torch.Tensor], sum_grads_squared: list[torch.Tensor], n: int,
                             epsilon: float = 1e-5) -> torch.Tensor:
    """Evidence-based early stopping, Mahsereci, Balles, Lassner, Hennig (2017), "Early stopping without
    a validation set", left-hand side of Eq. 7 (Cockpit's ``EarlyStopping``):

        1 − (N / D) Σ_d ḡ_d² / (σ̂_d² + ε),   σ̂_d² = (Σ_i g_{i,d}² − N ḡ_d²)/(N − 1)  (unbiased)

    Stop training when it is > 0 (the gradient is indistinguishable from noise).
    """
    mean, second = _coordinate_moments(sum_grads, sum_grads_squared, n)
    var = (n * second - n * mean.square()) / (n - 1)
    return 1 - n * (mean.square() / (var + epsilon)).mean()


def _solve3(a: list[list[float]], b: list[float]) -> list[float] | None:
    """x with a·x = b for a 3×3 system: Gaussian elimination with partial pivoting (as LAPACK's ``gesv``);
    None if a pivot is exactly zero (singular)."""
    m = [[*row, v] for row, v in zip(a, b)]
    for col in range(3):
        pivot = max(range(col, 3), key=lambda r: abs(m[r][col]))
        if m[pivot][col] == 0:
            return None
        m[col], m[pivot] = m[pivot], m[col]
        for r in range(col + 1, 3):
            f = m[r][col] / m[col][col]
            for c in range(col, 4):
                m[r][c] -= f * m[col][c]
    x = [0.0, 0.0, 0.0]
    for r in (2, 1, 0):
        x[r] = (m[r][3] - sum(m[r][c] * x[c] for c in range(r + 1, 3))) / m[r][r]
    return x


def alpha_quadratic_fit(
    step_length: float,
    f0: float, f1: float, df0: float, df1: float,
    var_f0: float, var_f1: float, var_df0: float, var_df1: float,
) -> float | None:
    """Normalized step length α of Cockpit's ``Alpha`` (cockpit.md §1.7; Mahsereci & Hennig 2017's noisy
    1-D line-search model).

    A quadratic f(x) = μ0 + μ1 x + μ2 x² along the step (x ∈ [0, t], t = ‖d‖) is fitted by weighted least
    squares to the losses f0 = L(θ_t), f1 = L(θ_{t+1}) and the directional derivatives df0, df1 (slopes
    ḡᵀd/‖d‖ at both ends), weighted by their sample variances (zeros replaced by 1e-10):

        μ = (Φ Λ⁻¹ Φᵀ)⁻¹ Φ Λ⁻¹ [f0, f1, df0, df1],  Φ rows [1,0,0], [1,t,t²], [0,1,0], [0,1,2t]

    Then α = −1 if μ2 < 0 (concave), else α = 2t/ᾱ − 1 with ᾱ = −μ1/μ2: −1 = no progress, 0 = landed in
    the minimum of the parabola, +1 = landed at the same height on the other side. Returns −1 if t = 0
    and None if the fit is singular.
    """
    if step_length == 0:
        return -1.0
    t = float(step_length)
    w0, w1, w2, w3 = (1.0 / float(v) if v != 0 else 1e10 for v in (var_f0, var_f1, var_df0, var_df1))
    f0, f1, df0, df1 = float(f0), float(f1), float(df0), float(df1)
    # the 3×3 normal equations Φ Λ⁻¹ Φᵀ μ = Φ Λ⁻¹ y written out, in Python floats: this runs every step alpha
    # is due, and a solve of this size costs far more in NumPy's or torch's call overhead than in arithmetic
    t2 = t * t
    normal = [[w0 + w1, w1 * t, w1 * t2],
              [w1 * t, w1 * t2 + w2 + w3, w1 * t2 * t + 2 * t * w3],
              [w1 * t2, w1 * t2 * t + 2 * t * w3, w1 * t2 * t2 + 4 * t2 * w3]]
    rhs = [w0 * f0 + w1 * f1, w1 * t * f1 + w2 * df0 + w3 * df1, w1 * t2 * f1 + 2 * t * w3 * df1]
    mu = _solve3(normal, rhs)
    if mu is None:  # singular
        return None
    mu1, mu2 = float(mu[1]), float(mu[2])
    if not (math.isfinite(mu1) and math.isfinite(mu2)):
        return None
    if mu2 < 0:
        return -1.0
    if mu2 == 0 or mu1 == 0:  # a line (no minimum) or a minimum exactly at the start: α undefined
        return None
    alpha_bar = -mu1 / mu2
    return 2 * t / alpha_bar - 1
