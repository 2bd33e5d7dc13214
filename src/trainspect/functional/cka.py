"""Centered kernel alignment (CKA) between two representations, and mixup inputs.

Linear CKA (Kornblith, Norouzi, Lee, Hinton, "Similarity of Neural Network Representations Revisited",
ICML 2019): for representations X (n×p) and Y (n×q) of the same n inputs, with Gram matrices K = X Xᵀ,
L = Y Yᵀ and the centering matrix H = I − 11ᵀ/n,

    CKA(X, Y) = ⟨HKH, HLH⟩_F / (‖HKH‖_F ‖HLH‖_F)
              = ‖Ỹᵀ X̃‖_F² / (‖X̃ᵀ X̃‖_F ‖Ỹᵀ Ỹ‖_F)      (X̃, Ỹ column-centered)

It lies in [0, 1], equals 1 for X with itself, and is invariant to orthogonal transforms and isotropic
scaling of either representation. The MD-tree paper (Zhou et al., ICML 2024) uses it between the softmax
outputs of two seeds of one configuration on mixup inputs (Zhang et al., ICLR 2018; α = 16).
"""

from __future__ import annotations

import numpy as np
import torch


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Linear CKA between representations ``x`` (n×p) and ``y`` (n×q) of the same n inputs (0-d tensor).

    Uses the feature-space form ‖Ỹᵀ X̃‖² / (‖X̃ᵀ X̃‖ ‖Ỹᵀ Ỹ‖), which costs O(n p q) instead of the O(n²)
    Gram matrices and equals the Gram-matrix definition exactly. Computed in float64.

    Raises:
        ValueError: if the inputs are not 2-D with the same number of rows, or a representation is constant.
    """
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"linear_cka needs two 2-D representations of the same n inputs, got shapes "
                         f"{tuple(x.shape)} and {tuple(y.shape)} (flatten per-sample features first)")
    x = x.detach().to(torch.float64)
    y = y.detach().to(torch.float64)
    x = x - x.mean(0, keepdim=True)
    y = y - y.mean(0, keepdim=True)
    norm_x = torch.linalg.matrix_norm(x.T @ x)
    norm_y = torch.linalg.matrix_norm(y.T @ y)
    if norm_x == 0 or norm_y == 0:
        raise ValueError("linear_cka: a representation is constant over the inputs (zero after centering); "
                         "CKA is undefined")
    return torch.linalg.matrix_norm(y.T @ x) ** 2 / (norm_x * norm_y)


def linear_cka_gram(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Linear CKA from the n×n Gram matrices, ⟨HKH, HLH⟩ / (‖HKH‖ ‖HLH‖): the literal definition, O(n²) memory.
    Kept as the independent reference for :func:`linear_cka`."""
    x = x.detach().to(torch.float64)
    y = y.detach().to(torch.float64)
    n = x.shape[0]
    h = torch.eye(n, dtype=torch.float64) - 1.0 / n
    k = h @ (x @ x.T) @ h
    l_ = h @ (y @ y.T) @ h
    return (k * l_).sum() / (torch.linalg.matrix_norm(k) * torch.linalg.matrix_norm(l_))


def mixup_inputs(inputs: torch.Tensor, alpha: float, generator: torch.Generator) -> torch.Tensor:
    """Mixup (Zhang et al., 2018) of a batch: λ x + (1 − λ) x[π], one λ ~ Beta(α, α) per batch and a
    random permutation π of the batch. Only the inputs are mixed (CKA needs no labels)."""
    if alpha <= 0:
        raise ValueError(f"mixup alpha must be > 0, got {alpha}")
    # λ ~ Beta(α, α) from a NumPy generator seeded off the torch generator (torch.distributions takes none)
    lam = float(np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=generator))).beta(alpha, alpha))
    perm = torch.randperm(inputs.shape[0], generator=generator)
    return lam * inputs + (1.0 - lam) * inputs[perm]
