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

Gauss–Radau estimate (``refine=True``, the default): after k products the Lanczos relation
H Q_k = Q_k T_k + β_k q_{k+1} e_kᵀ also knows β_k, i.e. one more moment qᵀH^{2k}q of the start vector's
spectral measure than the Ritz values (the k-point Gauss rule) use. The (k+1)-point Gauss–Radau rule with a
fixed node ℓ matches all 2k+1 moments: its nodes are the eigenvalues of T_{k+1} whose unknown last diagonal
entry is replaced by α̃ = ℓ + β_k² e_kᵀ(T_k − ℓI)⁻¹e_k (Golub 1973, *Some modified matrix eigenvalue
problems*; Golub & Meurant, *Matrices, Moments and Quadrature*, 2010, §6.2). With ℓ ≤ λ_min the largest
node lies in [θ_max, λ_max]: a lower bound on λ_max at least as tight as the Ritz value, without another
product — the new information is roughly half a Lanczos step. ℓ is not known: the estimate uses
ℓ = min(θ_min − r_min, 0) (the smallest Ritz value less its residual, and at most 0: Hessians of trained
networks have λ_min slightly below zero), mirrored for λ_min (fixed node max(θ_max + r_max, 0)). Because ℓ is
a heuristic, the estimate is clamped into the interval [θ_max, θ_max + bound] that contains λ_max whenever
the bound above holds, so the reported bound still bounds its error and the stopping rule is unchanged;
``ritz_largest``/``ritz_smallest`` keep the plain Ritz values (which never over/underestimate).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass
class LanczosResult:
    """Extreme eigenvalue estimates of a symmetric operator.

    Attributes:
        largest, smallest: the estimates of the largest and smallest (most negative) eigenvalue: the
            Gauss–Radau refinement of the extreme Ritz values (see the module docstring), or the Ritz values
            themselves with ``refine=False``.
        num_matvecs: operator products used.
        converged: both requested ends met the relative accuracy target.
        converged_largest, converged_smallest: per end.
        error_bound_largest, error_bound_smallest: the a-posteriori bounds min(r, r²/δ) at the end (they bound
            the error of both the Ritz value and the refined estimate, which lies between it and the bound).
        ritz_largest, ritz_smallest: the extreme Ritz values (the largest never exceeds λ_max, the smallest
            is never below λ_min).
        ritz_values: all Ritz values of the final tridiagonal matrix (ascending).
        largest_vector, smallest_vector: the Ritz vectors (unit norm), if ``return_vectors``.
        largest_history, smallest_history: the estimates (``largest``/``smallest``) after each product (for
            benchmarks and convergence plots).
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
    ritz_largest: float = float("nan")
    ritz_smallest: float = float("nan")
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


def _gauss_radau(
    theta: torch.Tensor, s_last: torch.Tensor, beta: float, r: torch.Tensor, bounds: torch.Tensor
) -> tuple[float, float]:
    """Gauss–Radau estimates of the largest and smallest eigenvalue, clamped into the a-posteriori intervals.

    In the eigenbasis of T_k, T_{k+1} with the Radau entry α̃ is the arrowhead matrix
    [[diag θ, β s], [β sᵀ, α̃]], s = last row of the eigenvectors of T_k; α̃ = ℓ + β² Σ_i s_i² / (θ_i − ℓ).
    """
    hi, lo = float(theta[-1]), float(theta[0])
    if beta == 0.0:
        return hi, lo
    b = beta * s_last
    out = []
    for fixed, end in ((min(lo - float(r[0]), 0.0), "hi"), (max(hi + float(r[-1]), 0.0), "lo")):
        ritz = hi if end == "hi" else lo
        diff = theta - fixed
        outside = fixed < lo if end == "hi" else fixed > hi  # the fixed node must lie outside the Ritz values
        if not outside or bool((diff == 0).any()):
            out.append(ritz)
            continue
        alpha = fixed + float((b.square() / diff).sum())
        k = theta.numel()
        arrow = torch.zeros(k + 1, k + 1, dtype=torch.float64)
        arrow[:k, :k] = torch.diag(theta)
        arrow[:k, k] = arrow[k, :k] = b
        arrow[k, k] = alpha
        nodes = torch.linalg.eigvalsh(arrow)
        if end == "hi":  # interlacing puts the node above θ_max; the bound caps a too-optimistic ℓ
            est = min(max(float(nodes[-1]), ritz), ritz + float(bounds[-1]))
        else:
            est = max(min(float(nodes[0]), ritz), ritz - float(bounds[0]))
        out.append(est if est == est else ritz)  # nan (overflow) -> the Ritz value
    return out[0], out[1]


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
    refine: bool = True,
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
        refine: report the Gauss–Radau refinement of the extreme Ritz values (module docstring): the same
            products, a closer estimate; ``False`` reports the Ritz values. Stopping rule and bounds are the same.

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
        resid, bounds = _error_bounds(theta, S[-1], beta)
        est_hi, est_lo = (
            _gauss_radau(theta, S[-1], beta, resid, bounds) if refine else (float(theta[-1]), float(theta[0]))
        )
        hist_hi.append(est_hi)
        hist_lo.append(est_lo)
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
        largest=hist_hi[-1],
        smallest=hist_lo[-1],
        num_matvecs=num_matvecs,
        converged=converged,
        converged_largest=conv_hi,
        converged_smallest=conv_lo,
        error_bound_largest=float(bounds[-1]),
        error_bound_smallest=float(bounds[0]),
        ritz_values=theta,
        ritz_largest=float(theta[-1]),
        ritz_smallest=float(theta[0]),
        largest_vector=vec_hi,
        smallest_vector=vec_lo,
        largest_history=hist_hi,
        smallest_history=hist_lo,
    )
