"""Exact diagonal of the generalized Gauss-Newton matrix, and the Takeuchi information criterion (TIC).

``ggn_diagonal``: diag(G) for G = Σ_n J_nᵀ (∇²_{f_n} ℓ) J_n, the quantity BackPACK's ``DiagGGNExact``
computes (Dangel, Kunstner & Hennig 2020) — Cockpit's ``curvature="diag_ggn_exact"`` option. With the
output Hessian of sample n factored as S_n S_nᵀ (eigendecomposition of the K×K block, K = outputs per
sample), diag(G) = Σ_n Σ_c (J_nᵀ s_{n,c})²: K per-sample vector-Jacobian products, squared and summed.
It needs a loss that is a sum or mean of per-sample terms (cross-entropy, MSE, …): the output Hessian
is then block-diagonal over samples, which is what makes the K products per *class* (not per sample and
class) enough to read every block.

``tic_diag`` / ``tic_trace``: the TIC of Thomas et al. (2020, "On the interplay between noise and
curvature and its effect on optimization and generalization"), with Cockpit's definitions (cockpit.md
§1.18): M_d = (1/N) Σ_i g_{i,d}² (uncentered second moment of the per-sample gradients),
TICDiag = Σ_d M_d / (diag(H)_d + ε), TICTrace = Σ_d M_d / (Σ_d diag(H)_d + ε), ε = 1e-7.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from trainspect.functional.model_loss import call_model


def ggn_diagonal(
    model: nn.Module,
    loss_fn: Callable[..., torch.Tensor],
    inputs: torch.Tensor,
    targets: Any,
    param_names: Sequence[str],
) -> list[torch.Tensor]:
    """diag(Jᵀ (∇²_f ℓ) J) for the named parameters (one tensor per parameter), exactly.

    The model is re-evaluated with ``torch.func`` (one sample at a time under ``vmap`` for the per-sample
    products), so it must treat samples independently (no BatchNorm in training mode) and return one
    tensor whose first dimension is the batch. Cost: K per-sample gradient passes, K = outputs per sample.
    """
    if not isinstance(inputs, torch.Tensor):
        raise TypeError("ggn_diagonal: inputs must be one tensor (batch first)")
    names = list(param_names)
    params = dict(model.named_parameters())
    buffers = {k: v.detach() for k, v in model.named_buffers()}
    values = tuple(params[n].detach() for n in names)
    fixed = {k: v.detach() for k, v in params.items() if k not in set(names)}

    def forward(vals: tuple[torch.Tensor, ...], x: torch.Tensor) -> torch.Tensor:
        state = {**buffers, **fixed, **dict(zip(names, vals))}
        return call_model(model, state, x)

    with torch.no_grad():
        out = forward(values, inputs)
    if not isinstance(out, torch.Tensor) or out.dim() < 1 or out.shape[0] != inputs.shape[0]:
        raise ValueError("ggn_diagonal: the model must return one tensor with the batch as first dimension")
    n = out.shape[0]
    k = out[0].numel()

    # Output-Hessian blocks [N, K, K]: column c of every block at once, from one HVP with e_c in every sample
    # (double backward: forward-mode AD through mse_loss's backward fails in torch 2.13).
    out_leaf = out.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = loss_fn(out_leaf, targets).reshape(())
        (grad_out,) = torch.autograd.grad(loss, out_leaf, create_graph=True)
    eye = torch.eye(k, dtype=out.dtype, device=out.device)
    cols = []
    for c in range(k):
        tangent = eye[c].expand(n, k).reshape(out.shape)
        if grad_out.requires_grad:
            (col,) = torch.autograd.grad(grad_out, out_leaf, tangent, retain_graph=True)
        else:  # loss linear in the output: zero output Hessian
            col = torch.zeros_like(out)
        cols.append(col.reshape(n, k))
    cols = torch.stack(cols, dim=2)  # [N, K(row), K(col)]
    blocks = (cols + cols.transpose(1, 2)) / 2
    evals, evecs = torch.linalg.eigh(blocks)
    factors = evecs * evals.clamp_min(0).sqrt().unsqueeze(1)  # [N, K, K]: S_n with columns s_{n,c}

    def sample_vjp(vals: tuple[torch.Tensor, ...], x: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, ...]:
        def scalar(v: tuple[torch.Tensor, ...]) -> torch.Tensor:
            return (forward(v, x.unsqueeze(0)).reshape(-1) * s).sum()

        return torch.func.grad(scalar)(vals)

    per_sample = torch.func.vmap(sample_vjp, in_dims=(None, 0, 0))
    diag = [torch.zeros_like(v) for v in values]
    for c in range(k):
        grads = per_sample(values, inputs, factors[:, :, c])
        for d, g in zip(diag, grads):
            d += g.square().sum(0)
    return diag


def tic_diag(second_moment: Sequence[torch.Tensor], hessian_diagonal: Sequence[torch.Tensor],
             epsilon: float = 1e-7) -> torch.Tensor:
    """Σ_d M_d / (diag(H)_d + ε) (Cockpit's ``TICDiag``), float64."""
    total = torch.zeros((), dtype=torch.float64)
    for m, h in zip(second_moment, hessian_diagonal):
        total = total + (m.to(torch.float64) / (h.to(torch.float64) + epsilon)).sum().cpu()
    return total


def tic_trace(second_moment: Sequence[torch.Tensor], hessian_diagonal: Sequence[torch.Tensor],
              epsilon: float = 1e-7) -> torch.Tensor:
    """Σ_d M_d / (Σ_d diag(H)_d + ε) (Cockpit's ``TICTrace``), float64."""
    m = sum(x.to(torch.float64).sum().cpu() for x in second_moment)
    tr = sum(h.to(torch.float64).sum().cpu() for h in hessian_diagonal)
    return m / (tr + epsilon)
