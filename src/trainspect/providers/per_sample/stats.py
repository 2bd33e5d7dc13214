"""The result types of the per-sample gradient providers (consumed by instruments of several families)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class GradientElementSample:
    """Per-sample gradient elements g_{i,p}[c] (for histograms), sampled or all of them.

    Attributes:
        values: [S] float64, the gradient elements (of the per-sample losses' gradients).
        param_values: [S] float64, the parameter value θ_p[c] at the same coordinate (2-D histograms);
            None unless requested (``"element_params"``).
        layer: [S] int64, index p of the tracked parameter each element belongs to.
        weights: [S] float64, how many of the N·D elements each sampled element stands for
            (N·D_p/S_p for the uniform sample of parameter p), so that Σ weights = N·D.
    """

    values: torch.Tensor
    param_values: torch.Tensor | None
    layer: torch.Tensor
    weights: torch.Tensor


@dataclass
class PerSampleGradStats:
    """Sufficient statistics of the per-sample gradients g_i = ∇ℓ_i of one step.

    All sums run over every sample of every process (all-reduced with
    :func:`trainspect.engine.distributed.all_reduce_sum`); per-parameter fields follow the order of
    ``param_names`` (the inspector's tracked parameters). Fields that no due instrument asked for are None.

    Attributes:
        batch_size: N, the number of samples (all processes).
        param_names: names of the tracked parameters.
        sum_grads: Σ_i g_{i,p}, one tensor per parameter (parameter's shape); for ``reduction="mean"``
            this is N·∇L. None unless requested (``"sum_grads"`` or ``"sum_grads_squared"``): the gradient
            tests get ‖ḡ‖² and g_iᵀḡ from small Gram matrices instead where that is cheaper.
        mean_grad_sq_norms: [P] float64, ‖ḡ_p‖² = ‖Σ_i g_{i,p}‖²/N².
        sum_sq_norms: [P] float64, Σ_i ‖g_{i,p}‖².
        sq_norms: [N_local, P] float64, ‖g_{i,p}‖² of this process's samples.
        sum_grads_squared: Σ_i g_{i,p}² element-wise, one tensor per parameter (e.g. TIC, GSNR, CABS);
            None unless requested (``"sum_grads_squared"``).
        proj_mean: [N_local, P] float64, π_{i,p} = g_{i,p}ᵀ ḡ_p (ḡ = sum_grads/N); None unless requested.
        sum_proj_mean_sq: [P] float64, Σ_i π_{i,p}²; None unless requested.
        sum_proj_mean_total_sq: float64 scalar, Σ_i (g_iᵀḡ)² over all parameters; None unless requested.
        elements: sampled gradient elements for histograms; None unless requested.
        loss_reduction: ``"mean"`` or ``"sum"`` of the user's loss (g_i is independent of it).
        fallback_params: names of parameters whose per-sample gradients came from the ``torch.func``
            fallback (re-evaluation of the model on each sample).
        ill_defined: names of modules that mix samples (BatchNorm in training mode); when non-empty the
            values are per-sample *contributions* to the batch gradient, not gradients of single losses.
    """

    batch_size: int
    param_names: list[str]
    sum_grads: list[torch.Tensor] | None
    mean_grad_sq_norms: torch.Tensor
    sum_sq_norms: torch.Tensor
    sq_norms: torch.Tensor
    sum_grads_squared: list[torch.Tensor] | None = None
    proj_mean: torch.Tensor | None = None
    sum_proj_mean_sq: torch.Tensor | None = None
    sum_proj_mean_total_sq: torch.Tensor | None = None
    elements: GradientElementSample | None = None
    loss_reduction: str = "mean"
    fallback_params: list[str] = field(default_factory=list)
    ill_defined: list[str] = field(default_factory=list)

    @property
    def mean_grads(self) -> list[torch.Tensor]:
        """ḡ_p = (1/N) Σ_i g_{i,p} (needs ``"sum_grads"`` in the instrument's ``per_sample_quantities``)."""
        if self.sum_grads is None:
            raise RuntimeError("Σ_i g_i was not computed this step: add 'sum_grads' to per_sample_quantities")
        return [s / self.batch_size for s in self.sum_grads]
