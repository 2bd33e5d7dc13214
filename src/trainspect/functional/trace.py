"""Trace and diagonal of a symmetric operator from matrix-vector products.

* ``hutchinson_trace``: tr(A) ≈ (1/m) Σ_j z_jᵀ A z_j with Rademacher probes z_j (Hutchinson 1989);
  unbiased, variance 2(‖A‖_F² − Σ_i A_ii²)/m. Standard error: sample standard deviation / √m.
* ``hutchpp_trace``: Hutch++ (Meyer, Musco, Musco & Woodruff 2021, Algorithm 1). With m products: k = m/3
  go into a sketch A S whose orthonormal basis Q captures the top of the spectrum, k into the exact trace
  tr(Qᵀ A Q) of that part, and the rest into Hutchinson on the deflated residual (I − QQᵀ) A (I − QQᵀ).
  Neural-network Hessians have a few large outlier eigenvalues (about one per class, Papyan 2020) that
  dominate ‖A‖_F, so deflating them shrinks the variance far more than averaging more probes would.
  Standard error: that of the residual Hutchinson part (the deflated part is exact given Q).
* ``exact_diagonal``: A_ii = e_iᵀ A e_i, in blocks of unit vectors: ``len(indices)`` products, for the
  small parameter tensors where that is affordable (biases, small layers).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch


@dataclass
class TraceEstimate:
    """A trace estimate with its standard error.

    Attributes:
        value: the estimate of tr(A).
        standard_error: estimated standard deviation of ``value`` (0 when exact, nan if unknown).
        num_matvecs: operator products used.
    """

    value: float
    standard_error: float
    num_matvecs: int


def rademacher(dim: int, count: int, *, seed: int = 0, dtype: torch.dtype = torch.float64,
               device: torch.device | str | None = None) -> torch.Tensor:
    """``count`` Rademacher (±1) probe vectors as the columns of a ``[dim, count]`` matrix (seeded)."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randint(0, 2, (dim, count), generator=gen, dtype=torch.int8).to(dtype) * 2 - 1
    return z.to(device)


def _check(dim: int, num_matvecs: int, minimum: int, what: str) -> None:
    if not isinstance(dim, int) or dim < 1:
        raise ValueError(f"{what}: dim must be a positive integer, got {dim!r}")
    if not isinstance(num_matvecs, int) or num_matvecs < minimum:
        raise ValueError(f"{what}: num_matvecs must be an integer >= {minimum}, got {num_matvecs!r}")


def _apply(matmat: Callable[[torch.Tensor], torch.Tensor], V: torch.Tensor, what: str) -> torch.Tensor:
    out = matmat(V)
    if out.shape != V.shape:
        raise ValueError(f"{what}: matmat returned shape {tuple(out.shape)} for input {tuple(V.shape)}")
    return out.to(V.dtype)


def _mean_and_error(samples: torch.Tensor) -> tuple[float, float]:
    n = samples.numel()
    mean = float(samples.mean())
    se = float(samples.std(unbiased=True)) / math.sqrt(n) if n > 1 else float("nan")
    return mean, se


def hutchinson_trace(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    dim: int,
    num_matvecs: int,
    seed: int = 0,
    *,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
    matmat: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> TraceEstimate:
    """Hutchinson's estimator tr(A) ≈ (1/m) Σ_j z_jᵀ A z_j with m = ``num_matvecs`` Rademacher probes.

    ``matmat`` (optional) computes all probes in one batched call; otherwise ``matvec`` is called m times.
    """
    _check(dim, num_matvecs, 1, "hutchinson_trace")
    Z = rademacher(dim, num_matvecs, seed=seed, dtype=dtype, device=device)
    if matmat is not None:
        AZ = _apply(matmat, Z, "hutchinson_trace")
    else:
        AZ = torch.stack([matvec(Z[:, j]).to(dtype) for j in range(num_matvecs)], dim=1)
    samples = (Z * AZ).sum(0)
    value, se = _mean_and_error(samples)
    return TraceEstimate(value, se, num_matvecs)


def hutchpp_trace(
    matmat: Callable[[torch.Tensor], torch.Tensor],
    dim: int,
    num_matvecs: int,
    seed: int = 0,
    *,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
    sketch_size: int | None = None,
) -> TraceEstimate:
    """Hutch++ (Meyer et al. 2021): low-rank deflation plus Hutchinson on the residual.

    Args:
        matmat: V ↦ A V for a ``[dim, k]`` block.
        dim: the operator's size.
        num_matvecs: total products m (≥ 4: a sketch of k ≥ 1 columns, k for QᵀAQ, ≥ 2 residual probes).
        seed: seed of the sketch and probe vectors.
        sketch_size: k (default m // 3, the paper's split).

    Returns:
        The estimate; ``standard_error`` is that of the residual Hutchinson mean (sample std / √probes).
    """
    _check(dim, num_matvecs, 4, "hutchpp_trace")
    k = num_matvecs // 3 if sketch_size is None else int(sketch_size)
    k = max(1, min(k, dim, (num_matvecs - 2) // 2))
    n_res = num_matvecs - 2 * k
    S = rademacher(dim, k, seed=seed, dtype=dtype, device=device)
    Q, _ = torch.linalg.qr(_apply(matmat, S, "hutchpp_trace"))
    AQ = _apply(matmat, Q, "hutchpp_trace")
    exact_part = float((Q * AQ).sum())
    G = rademacher(dim, n_res, seed=seed + 1, dtype=dtype, device=device)
    G = G - Q @ (Q.T @ G)  # (I − QQᵀ) G
    AG = _apply(matmat, G, "hutchpp_trace")
    samples = (G * AG).sum(0)  # gᵀ (I−QQᵀ) A (I−QQᵀ) g
    residual, se = _mean_and_error(samples)
    return TraceEstimate(exact_part + residual, se, num_matvecs)


def exact_diagonal(
    matmat: Callable[[torch.Tensor], torch.Tensor],
    dim: int,
    indices: Sequence[int] | torch.Tensor | None = None,
    *,
    block_size: int = 64,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Exact diagonal entries A_ii for ``indices`` (default: all), via products with unit vectors.

    Costs one product per index (batched ``block_size`` at a time); use it for small parameter tensors.
    """
    if not isinstance(dim, int) or dim < 1:
        raise ValueError(f"exact_diagonal: dim must be a positive integer, got {dim!r}")
    idx = torch.arange(dim) if indices is None else torch.as_tensor(indices, dtype=torch.long).reshape(-1)
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= dim):
        raise ValueError(f"exact_diagonal: indices must lie in [0, {dim}), got range [{int(idx.min())}, "
                         f"{int(idx.max())}]")
    out = torch.empty(idx.numel(), dtype=dtype, device=device)
    for start in range(0, idx.numel(), block_size):
        chunk = idx[start:start + block_size]
        E = torch.zeros(dim, chunk.numel(), dtype=dtype, device=device)
        E[chunk.to(E.device), torch.arange(chunk.numel(), device=E.device)] = 1.0
        AE = _apply(matmat, E, "exact_diagonal")
        out[start:start + chunk.numel()] = AE[chunk.to(E.device), torch.arange(chunk.numel(), device=E.device)]
    return out


@dataclass
class LayerTraces:
    """Per-block traces tr(A_ll) of a block-partitioned operator (one block per parameter tensor).

    Attributes:
        total: the trace of the whole operator (Σ of the blocks) with its standard error.
        values: [L] float64, per-block trace estimates.
        standard_errors: [L] float64, per-block standard errors (0 for exact blocks).
        exact: [L] bool, blocks whose diagonal was computed exactly.
    """

    total: TraceEstimate
    values: torch.Tensor
    standard_errors: torch.Tensor
    exact: torch.Tensor


def hutchpp_layer_traces(
    matmat: Callable[[torch.Tensor], torch.Tensor],
    sizes: Sequence[int],
    num_matvecs: int,
    seed: int = 0,
    *,
    exact_layers: Sequence[int] = (),
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> LayerTraces:
    """Hutch++ for the trace of every diagonal block A_ll (and of A) from the same products.

    With Q the orthonormal sketch basis and P = I − QQᵀ, A = (A − PAP) + PAP. The first part's diagonal is
    exact given Q and AQ: diag(QQᵀA + AQQᵀ − QQᵀAQQᵀ)_i = 2 Σ_c Q_ic (AQ)_ic − Σ_cd Q_ic (QᵀAQ)_cd Q_id; the
    second part's diagonal is estimated without bias by E[g̃ ⊙ A g̃] with g̃ = P g, g Rademacher (the
    diagonal estimator of Bekas et al. 2007 on the deflated residual). Summed over all coordinates this is
    exactly Hutch++'s estimate. Blocks listed in ``exact_layers`` get their exact diagonal instead (one
    product per entry, for small parameter tensors such as biases); their standard error is 0.

    Args:
        matmat: V ↦ A V for ``[dim, k]`` blocks, dim = Σ sizes.
        sizes: the block sizes (numel of each parameter tensor), in order.
        num_matvecs: products for the Hutch++ part (≥ 4); the exact blocks add Σ their sizes.
        seed: seed of the sketch and probes.
        exact_layers: indices of blocks to compute exactly.
    """
    sizes = [int(s) for s in sizes]
    dim = sum(sizes)
    _check(dim, num_matvecs, 4, "hutchpp_layer_traces")
    exact_set = sorted(set(int(i) for i in exact_layers))
    if exact_set and (exact_set[0] < 0 or exact_set[-1] >= len(sizes)):
        raise ValueError(f"hutchpp_layer_traces: exact_layers must index the {len(sizes)} blocks, got {exact_set}")
    k = max(1, min(num_matvecs // 3, dim, (num_matvecs - 2) // 2))
    n_res = num_matvecs - 2 * k
    S = rademacher(dim, k, seed=seed, dtype=dtype, device=device)
    Q, _ = torch.linalg.qr(_apply(matmat, S, "hutchpp_layer_traces"))
    AQ = _apply(matmat, Q, "hutchpp_layer_traces")
    B = Q.T @ AQ
    B = (B + B.T) / 2
    deflated_diag = 2 * (Q * AQ).sum(1) - ((Q @ B) * Q).sum(1)
    G = rademacher(dim, n_res, seed=seed + 1, dtype=dtype, device=device)
    G = G - Q @ (Q.T @ G)
    per_coord = G * _apply(matmat, G, "hutchpp_layer_traces")  # [dim, n_res]
    deflated = torch.stack([b.sum() for b in torch.split(deflated_diag, sizes)])
    samples = torch.stack([b.sum(0) for b in torch.split(per_coord, sizes, dim=0)])  # [L, n_res]
    values = deflated + samples.mean(1)
    ses = samples.std(1, unbiased=True) / math.sqrt(n_res)
    exact = torch.zeros(len(sizes), dtype=torch.bool)
    used = num_matvecs
    if exact_set:
        offsets = [0]
        for s in sizes:
            offsets.append(offsets[-1] + s)
        idx = torch.cat([torch.arange(offsets[i], offsets[i + 1]) for i in exact_set])
        diag = exact_diagonal(matmat, dim, idx, dtype=dtype, device=device)
        used += idx.numel()
        pos = 0
        for i in exact_set:
            values[i] = diag[pos:pos + sizes[i]].sum()
            ses[i] = 0.0
            exact[i] = True
            pos += sizes[i]
    stochastic = ~exact.to(samples.device)
    total_samples = samples[stochastic].sum(0)
    total_se = float(total_samples.std(unbiased=True)) / math.sqrt(n_res) if bool(stochastic.any()) else 0.0
    total = TraceEstimate(float(values.sum()), total_se, used)
    return LayerTraces(total, values.to(torch.float64).cpu(), ses.to(torch.float64).cpu(), exact)
