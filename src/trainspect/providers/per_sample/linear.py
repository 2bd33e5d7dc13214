"""Fast path for ``nn.Linear``, with any number of leading "position" dimensions (sequences).

Input [N, *, Din], output [N, *, Dout]: positions t run over the middle dimensions; a module called
several times contributes each call's positions (the per-sample gradient is the sum over calls).
See :mod:`.bilinear` for the formulas.
"""

from __future__ import annotations

import torch
from torch import nn

from trainspect.providers.per_sample.bilinear import BilinearLayer
from trainspect.providers.per_sample.bilinear import concat_positions as _cat
from trainspect.providers.per_sample.capture import ModuleCapture
from trainspect.providers.per_sample.registry import fast_path


def _positions(t: torch.Tensor, n: int) -> torch.Tensor:
    """[N, *, D] → [N, T, D] (a 1-D input, i.e. an unbatched call, is not per-sample: rejected)."""
    if t.dim() < 2 or t.shape[0] != n:
        raise ValueError(f"expected a batched input [N={n}, ..., D], got shape {tuple(t.shape)}")
    return t.reshape(n, -1, t.shape[-1])


@fast_path(nn.Linear)
def build_linear(record: ModuleCapture, index_of: dict[int, int], scale: float, memory_cap: int) -> BilinearLayer:
    module = record.module
    calls = record.complete_calls()
    n = calls[0].inputs.shape[0]
    a = _cat([_positions(c.inputs, n) for c in calls])
    g = _cat([_positions(c.grad_output, n) for c in calls])
    if scale != 1.0:
        g = g * scale
    w, b = module.weight, module.bias
    return BilinearLayer(
        a, g,
        index_of.get(id(w)), index_of.get(id(b)) if b is not None else None,
        w.shape, b.shape if b is not None else None, memory_cap,
    )
