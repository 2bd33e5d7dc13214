"""Extreme eigenvalues of a symmetric operator by the Lanczos method with full reorthogonalization.

Lanczos (1950) builds an orthonormal basis Q_k of the Krylov space span{q, Aq, …, A^{k-1}q} and the
tridiagonal T_k = Q_kᵀ A Q_k; the extreme eigenvalues θ of T_k (Ritz values) converge to the extreme
eigenvalues of A at a rate set by the *relative gap*, like Chebyshev polynomials — roughly the square
root of the number of iterations power iteration needs (Golub & Van Loan, *Matrix Computations*, §10.1;
Saad, *Numerical Methods for Large Eigenvalue Problems*, §6.6). Power iteration (Cockpit's ``HessMaxEV``,
PyHessian) converges like (λ₂/λ₁)^k and only finds the eigenvalue of largest *magnitude*; Lanczos gets
both ends from the same products, so the most negative Hessian eigenvalue costs nothing extra when it
converges together with the largest one.

Full reorthogonalization (two passes of classical Gram-Schmidt, "twice is enough") keeps Q_k orthonormal
in floating point, which prevents the spurious copies of converged Ritz values of plain Lanczos.

Stopping rule: for a Ritz pair (θ, y = Q_k s) the residual is r = ‖A y − θ y‖ = β_k |s_k| (last entry of
the eigenvector of T_k); some eigenvalue λ of A satisfies |λ − θ| ≤ r and, with gap δ to the rest of the
spectrum, |λ − θ| ≤ r²/δ (Kato-Temple; δ estimated conservatively from the neighbouring Ritz values and
their residuals, so this refinement is an a-posteriori estimate, not a guarantee). Extreme Ritz values
always lie inside the spectrum (Cauchy interlacing): the largest never overestimates λ_max, the smallest
never underestimates λ_min.
An end has converged when min(r, r²/δ) ≤ rtol · max(|θ|, floor · max|θ_j|), i.e. relative accuracy ``rtol``,
except that an eigenvalue much smaller than the spectral radius (|θ| < floor·max|θ_j|, default 1e-3) is measured
relative to floor·max|θ_j| — a relative accuracy on an eigenvalue that is numerically zero means nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass
class LanczosResult:
    """Extreme eigenvalue estimates of a symmetric operator.

    Attributes:
        largest, smallest: the largest and smallest (most negative) Ritz values.
        num_matvecs: operator products used.
        converged: both requested ends met the relative accuracy target.
        converged_largest, converged_smallest: per end.
        error_bound_largest, error_bound_smallest: the a-posteriori bounds min(r, r²/δ) at the end.
        ritz_values: all Ritz values of the final tridiagonal matrix (ascending).
        largest_vector, smallest_vector: the Ritz vectors (unit norm), if ``return_vectors``.
        largest_history, smallest_history: the extreme Ritz values after each product (for benchmarks
            and convergence plots).
    """

    largest: float
    smallest: float
    num_matvecs: int
    converged: bool
    converged_largest: bool
    converged_smallest: bool
    error_bound_largest: float
    error_bound_smallest: float
    ritz_values: torch.Tensor
    largest_vector: torch.Tensor | None = None
    smallest_vector: torch.Tensor | None = None
    largest_history: list[float] | None = None
    smallest_history: list[float] | None = None


_WHICH = ("both", "largest", "smallest")


def _error_bounds(theta: torch.Tensor, s_last: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Residual norms r_i = β|s_{k,i}| and the gap-refined estimates min(r, r²/δ) for each Ritz value.

    δ_i is a conservative gap: the distance to the neighbouring Ritz values minus *their* residuals (an
    unconverged neighbour may still move towards θ_i); where that is not positive, only r_i is used.
    """
    r = beta * s_last.abs()
    k = theta.numel()
    if k == 1:
        return r, r
    inf = torch.full((1,), float("inf"), dtype=theta.dtype)
    left = torch.cat([inf, theta[1:] - theta[:-1] - r[:-1]])
    right = torch.cat([theta[1:] - theta[:-1] - r[1:], inf])
    gaps = torch.minimum(left, right)
    refined = torch.where(gaps > 0, r.square() / gaps.clamp_min(torch.finfo(theta.dtype).tiny), r)
    return r, torch.minimum(r, refined)


def lanczos_extreme_eigenvalues(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    dim: int,
    *,
    rtol: float = 1e-4,
    max_iter: int | None = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
    which: str = "both",
    floor: float = 1e-3,
    min_iter: int = 3,
    return_vectors: bool = False,
    start: torch.Tensor | None = None,
) -> LanczosResult:
    """Largest and smallest eigenvalues of a symmetric ``dim × dim`` operator, to relative accuracy ``rtol``.

    Args:
        matvec: v ↦ A v on flat vectors of length ``dim`` (e.g. ``HessianOperator.matvec``).
        dim: the operator's size.
        rtol: relative accuracy target on each requested end (see the module docstring for the bound).
        max_iter: maximum number of products (default min(dim, 100), Cockpit's power-iteration budget).
        seed: seed of the random start vector (deterministic given the seed).
        dtype: dtype of the Krylov basis (float64 default; float32 halves memory for large models).
        device: device of the basis (default: CPU, or that of the first product).
        which: ``"both"`` (default), ``"largest"`` or ``"smallest"``: the ends that must converge.
        floor: eigenvalues smaller than ``floor`` × spectral radius are measured relative to that.
        min_iter: products before convergence is tested (guards against a lucky start vector).
        return_vectors: also return the Ritz vectors of both ends.
        start: start vector (default: Gaussian from ``seed``). A warm start, e.g. last step's Ritz vector
            plus a little noise, converges in fewer products when the operator changed little.

    Raises:
        ValueError: for a non-positive ``dim``/``max_iter``/``rtol``, an unknown ``which``, or a product of
            the wrong shape.
    """
    if not isinstance(dim, int) or dim < 1:
        raise ValueError(f"lanczos_extreme_eigenvalues: dim must be a positive integer, got {dim!r}")
    if which not in _WHICH:
        raise ValueError(f"lanczos_extreme_eigenvalues: which must be one of {_WHICH}, got {which!r}")
    if not rtol > 0:
        raise ValueError(f"lanczos_extreme_eigenvalues: rtol must be positive, got {rtol!r}")
    max_iter = min(dim, 100) if max_iter is None else min(int(max_iter), dim)
    if max_iter < 1:
        raise ValueError(f"lanczos_extreme_eigenvalues: max_iter must be positive, got {max_iter!r}")

    if start is not None:
        if start.shape != (dim,) or not bool(torch.isfinite(start).all()) or float(start.norm()) == 0.0:
            raise ValueError(f"lanczos_extreme_eigenvalues: start must be a finite non-zero vector of shape ({dim},)")
        q = start.detach().to(dtype=dtype, device=device if device is not None else start.device)
    else:
        gen = torch.Generator().manual_seed(seed)
        q = torch.randn(dim, generator=gen, dtype=torch.float64).to(dtype=dtype, device=device)
    q = q / q.norm()
    basis = torch.empty(max_iter + 1, dim, dtype=dtype, device=q.device)
    basis[0] = q
    alphas: list[float] = []
    betas: list[float] = []
    num_matvecs = 0
    theta = torch.zeros(1, dtype=torch.float64)
    S = torch.ones(1, 1, dtype=torch.float64)
    bounds = torch.full((1,), float("inf"), dtype=torch.float64)
    conv_hi = conv_lo = False
    hist_hi: list[float] = []
    hist_lo: list[float] = []
    for k in range(max_iter):
        w = matvec(basis[k])
        num_matvecs += 1
        if w.shape != (dim,):
            raise ValueError(f"lanczos_extreme_eigenvalues: matvec returned shape {tuple(w.shape)}, expected ({dim},)")
        w = w.to(dtype=dtype, device=q.device)
        if not torch.isfinite(w).all():
            raise FloatingPointError(
                "lanczos_extreme_eigenvalues: the operator product contains inf/nan (non-finite loss or gradient)"
            )
        alpha = float(torch.dot(w, basis[k]))
        alphas.append(alpha)
        Q = basis[: k + 1]
        # Full reorthogonalization, twice (Kahan/Parlett "twice is enough").
        w = w - Q.T @ (Q @ w)
        w = w - Q.T @ (Q @ w)
        beta = float(w.norm())
        T = torch.diag(torch.tensor(alphas, dtype=torch.float64))
        if k > 0:
            off = torch.tensor(betas, dtype=torch.float64)
            T += torch.diag(off, 1) + torch.diag(off, -1)
        theta, S = torch.linalg.eigh(T)
        hist_hi.append(float(theta[-1]))
        hist_lo.append(float(theta[0]))
        _, bounds = _error_bounds(theta, S[-1], beta)
        scale = float(theta.abs().max())
        tol = rtol * torch.clamp(theta.abs(), min=floor * scale)
        invariant = beta <= 1e-12 * max(scale, 1e-300) or k + 1 == dim
        conv_hi = bool(bounds[-1] <= tol[-1]) or invariant
        conv_lo = bool(bounds[0] <= tol[0]) or invariant
        done = {"both": conv_hi and conv_lo, "largest": conv_hi, "smallest": conv_lo}[which]
        if invariant or (done and k + 1 >= min_iter):
            break
        if k + 1 < max_iter:
            betas.append(beta)
            basis[k + 1] = w / beta
    m = theta.numel()
    vec_hi = vec_lo = None
    if return_vectors:
        Q = basis[:m]
        vec_hi = Q.T @ S[:, -1].to(dtype=dtype, device=Q.device)
        vec_lo = Q.T @ S[:, 0].to(dtype=dtype, device=Q.device)
        vec_hi, vec_lo = vec_hi / vec_hi.norm(), vec_lo / vec_lo.norm()
    converged = {"both": conv_hi and conv_lo, "largest": conv_hi, "smallest": conv_lo}[which]
    return LanczosResult(
        largest=float(theta[-1]),
        smallest=float(theta[0]),
        num_matvecs=num_matvecs,
        converged=converged,
        converged_largest=conv_hi,
        converged_smallest=conv_lo,
        error_bound_largest=float(bounds[-1]),
        error_bound_smallest=float(bounds[0]),
        ritz_values=theta,
        largest_vector=vec_hi,
        smallest_vector=vec_lo,
        largest_history=hist_hi,
        smallest_history=hist_lo,
    )
