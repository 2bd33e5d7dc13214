"""Fast path for the affine parameters of LayerNorm, GroupNorm and BatchNorm (eval mode; see below).

y = x̂ ⊙ γ + β with x̂ the normalized input, so the per-sample gradients are small (one value per
channel/normalized element) and are formed explicitly: g_i(γ) = Σ_positions δ_i ⊙ x̂_i, g_i(β) = Σ δ_i.

BatchNorm in **training mode** normalizes with statistics of the whole batch, so sample i's output depends
on the other samples and per-sample gradients of the *network* are not defined (BackPACK issue #160). The
provider warns once, naming the module; the values it then reports use the per-sample terms of the
batch gradient (δ_i from the real backward pass, x̂ with batch statistics) — they sum to the mini-batch
gradient but are not gradients of individual losses.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainspect.providers.per_sample.capture import ModuleCapture
from trainspect.providers.per_sample.layer import ExplicitLayer, Workspace
from trainspect.providers.per_sample.registry import fast_path

BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _normalized(module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    """x̂ and the dimensions to sum over for a per-sample affine gradient."""
    if isinstance(module, nn.LayerNorm):
        xhat = F.layer_norm(x, module.normalized_shape, eps=module.eps)
        return xhat, tuple(range(1, x.dim() - len(module.normalized_shape)))
    if isinstance(module, nn.GroupNorm):
        return F.group_norm(x, module.num_groups, eps=module.eps), tuple(range(2, x.dim()))
    training = module.training or module.running_mean is None
    xhat = F.batch_norm(
        x, None if training else module.running_mean, None if training else module.running_var,
        training=training, eps=module.eps,
    )
    return xhat, (0, *range(2, x.dim()))[1:]


@fast_path(nn.LayerNorm, nn.GroupNorm, *BATCH_NORMS)
def build_norm(record: ModuleCapture, index_of: dict[int, int], scale: float, memory_cap: int,
               workspace: Workspace | None = None) -> ExplicitLayer | None:
    module = record.module
    w, b = getattr(module, "weight", None), getattr(module, "bias", None)
    indices, shapes, grads = [], [], []
    weight_grad = bias_grad = None
    for call in record.complete_calls():
        delta = call.grad_output * scale
        xhat, dims = _normalized(module, call.inputs)
        wg = (delta * xhat).sum(dims) if dims else delta * xhat
        bg = delta.sum(dims) if dims else delta
        weight_grad = wg if weight_grad is None else weight_grad + wg
        bias_grad = bg if bias_grad is None else bias_grad + bg
    n = record.complete_calls()[0].inputs.shape[0]
    if w is not None and id(w) in index_of:
        indices.append(index_of[id(w)])
        shapes.append(w.shape)
        grads.append(weight_grad.reshape(n, *w.shape))
    if b is not None and id(b) in index_of:
        indices.append(index_of[id(b)])
        shapes.append(b.shape)
        grads.append(bias_grad.reshape(n, *b.shape))
    if not indices:
        return None
    return ExplicitLayer(indices, shapes, n, grads=grads)
