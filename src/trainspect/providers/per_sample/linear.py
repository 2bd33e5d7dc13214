"""Fast path for ``nn.Linear``, with any number of leading "position" dimensions (sequences).

Input [N, *, Din], output [N, *, Dout]: positions t run over the middle dimensions; a module called
several times contributes each call's positions (the per-sample gradient is the sum over calls).
See :mod:`.bilinear` for the formulas. With positions (T > 1) the per-sample weight gradients are
materialized when N·|W| fits the memory cap (cheaper than the Gram form or per-direction projections).
"""

from __future__ import annotations

import torch
from torch import nn

from trainspect.providers.per_sample.bilinear import BilinearLayer
from trainspect.providers.per_sample.bilinear import concat_positions as _cat
from trainspect.providers.per_sample.capture import ModuleCapture
from trainspect.providers.per_sample.layer import ExplicitLayer, Workspace
from trainspect.providers.per_sample.registry import fast_path


def _positions(t: torch.Tensor, n: int) -> torch.Tensor:
    """[N, *, D] → [N, T, D] (a 1-D input, i.e. an unbatched call, is not per-sample: rejected)."""
    if t.dim() < 2 or t.shape[0] != n:
        raise ValueError(f"expected a batched input [N={n}, ..., D], got shape {tuple(t.shape)}")
    return t.reshape(n, -1, t.shape[-1])


@fast_path(nn.Linear)
def build_linear(
    record: ModuleCapture, index_of: dict[int, int], scale: float, memory_cap: int,
    workspace: Workspace | None = None,
) -> BilinearLayer | ExplicitLayer:
    module = record.module
    workspace = workspace or Workspace()
    calls = record.complete_calls()
    n = calls[0].inputs.shape[0]
    a = _cat([_positions(c.inputs, n) for c in calls])
    g = _cat([_positions(c.grad_output, n) for c in calls])  # unscaled: BilinearLayer applies the scale to results
    w, b = module.weight, module.bias
    t = a.shape[1]
    if t > 1 and n * w.numel() * w.element_size() <= memory_cap:
        g = workspace.scaled((record.name, "grad_output"), g, scale)
        # sequences: the N per-sample weight gradients (one batched matmul, the cost of the weight gradient)
        # are small next to the N·T activations; every statistic is then a cheap pass over them
        indices, shapes, grads = [], [], []
        if id(w) in index_of:
            indices.append(index_of[id(w)])
            shapes.append(w.shape)
            out = workspace.buffer((record.name, "weight_grads"), (n, g.shape[2], a.shape[2]), g.dtype, g.device)
            grads.append(torch.bmm(g.transpose(1, 2), a, out=out))
        if b is not None and id(b) in index_of:
            indices.append(index_of[id(b)])
            shapes.append(b.shape)
            grads.append(g.sum(1))
        return ExplicitLayer(indices, shapes, n, grads=grads)
    return BilinearLayer(
        a, g,
        index_of.get(id(w)), index_of.get(id(b)) if b is not None else None,
        w.shape, b.shape if b is not None else None, memory_cap, scale,
    )
