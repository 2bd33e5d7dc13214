"""Fast path for ``nn.Conv1d`` / ``nn.Conv2d`` (groups = 1).

A convolution is a Linear layer applied at every output position t to the patch a_{i,t}, so
g_i = Σ_t δ_{i,t} a_{i,t}ᵀ as in :mod:`.bilinear`. With hundreds of positions the Gram form
(N·T²·(Din+Dout) flops) and projections through unfolded patches (im2col: N·T·Din memory traffic, the
slowest part on CPU) both lose to materializing the N per-sample weight gradients with the layer's own
weight-gradient convolution run per sample — N·|W| numbers, as many as N copies of the weight
(6.5 M floats for the 2c2d network's second layer at batch 128), from which every statistic is a cheap
pass. :func:`unfold_patches` is kept for reference and tests.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainspect.providers.per_sample.capture import ModuleCapture
from trainspect.providers.per_sample.layer import ExplicitLayer
from trainspect.providers.per_sample.registry import fast_path


def _supports(module: nn.Module) -> str | None:
    if module.groups != 1:
        return f"grouped convolution (groups={module.groups})"
    if module.padding_mode not in ("zeros", "reflect", "replicate", "circular"):
        return f"padding_mode {module.padding_mode!r}"
    return None


def _padding(module: nn.Conv1d | nn.Conv2d, spatial: int) -> list[int]:
    """F.pad amounts (last dimension first) reproducing the module's padding."""
    if isinstance(module.padding, str):
        if module.padding == "valid":
            return [0] * (2 * spatial)
        pads: list[int] = []
        for k, d in zip(reversed(module.kernel_size), reversed(module.dilation)):  # 'same'
            total = d * (k - 1)
            pads += [total // 2, total - total // 2]
        return pads
    pads = []
    for p in reversed(module.padding):
        pads += [p, p]
    return pads


def unfold_patches(module: nn.Conv1d | nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """The input patches, [N, T, Cin·prod(kernel)] (T = number of output positions)."""
    spatial = x.dim() - 2
    pads = _padding(module, spatial)
    if any(pads):
        mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
        x = F.pad(x, pads, mode=mode)
    if spatial == 1:  # treat as 2-D with height 1
        x = x.unsqueeze(2)
        kernel, dilation, stride = (1, *module.kernel_size), (1, *module.dilation), (1, *module.stride)
    else:
        kernel, dilation, stride = module.kernel_size, module.dilation, module.stride
    patches = F.unfold(x, kernel, dilation=dilation, stride=stride)  # [N, Cin*k, T]
    return patches.transpose(1, 2)


def per_sample_weight_grads(module: nn.Conv1d | nn.Conv2d, x: torch.Tensor, grad_output: torch.Tensor) -> torch.Tensor:
    """[n, *weight.shape]: each sample's weight gradient, the layer's weight-gradient convolution run per sample
    (``vmap`` of ``torch.nn.grad.conv{1,2}d_weight``; no unfolded patches, which cost far more on CPU)."""
    spatial = x.dim() - 2
    pads = _padding(module, spatial)
    if any(pads):
        mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
        x = F.pad(x, pads, mode=mode)
    weight_grad = torch.nn.grad.conv1d_weight if spatial == 1 else torch.nn.grad.conv2d_weight
    shape = module.weight.shape

    def one(xi: torch.Tensor, gi: torch.Tensor) -> torch.Tensor:
        return weight_grad(xi.unsqueeze(0), shape, gi.unsqueeze(0), stride=module.stride, padding=0,
                           dilation=module.dilation)

    return torch.vmap(one)(x, grad_output)


@fast_path(nn.Conv1d, nn.Conv2d, supports=_supports)
def build_conv(record: ModuleCapture, index_of: dict[int, int], scale: float, memory_cap: int) -> ExplicitLayer:
    """Per-sample gradients materialized: N·|W| numbers, about what the unfolded patches of a single
    convolution would take, and from them every statistic is one cheap pass (projections are a [N, D]×[D, K]
    product). Above ``memory_cap`` they are recomputed a block of samples at a time instead of kept."""
    module = record.module
    calls = record.complete_calls()
    for c in calls:
        if c.inputs.dim() != module.weight.dim():
            raise ValueError(
                f"{type(module).__name__} {record.name!r}: unbatched input of shape {tuple(c.inputs.shape)}; "
                "per-sample gradients need a batch dimension"
            )
    n = calls[0].inputs.shape[0]
    w, b = module.weight, module.bias
    indices, shapes = [], []
    if id(w) in index_of:
        indices.append(index_of[id(w)])
        shapes.append(w.shape)
    if b is not None and id(b) in index_of:
        indices.append(index_of[id(b)])
        shapes.append(b.shape)

    def block(start: int, stop: int) -> list[torch.Tensor]:
        out = []
        weight = bias = None
        for c in calls:
            g = c.grad_output[start:stop] * scale if scale != 1.0 else c.grad_output[start:stop]
            if id(w) in index_of:
                pw = per_sample_weight_grads(module, c.inputs[start:stop], g)
                weight = pw if weight is None else weight + pw
            if b is not None and id(b) in index_of:
                pb = g.flatten(2).sum(2)
                bias = pb if bias is None else bias + pb
        if weight is not None:
            out.append(weight)
        if bias is not None:
            out.append(bias)
        return out

    per_sample = sum(s.numel() for s in shapes) * w.element_size()
    if n * per_sample <= memory_cap:
        return ExplicitLayer(indices, shapes, n, grads=block(0, n))
    step = max(1, memory_cap // max(per_sample, 1))

    def chunks():
        for start in range(0, n, step):
            yield block(start, min(n, start + step))

    return ExplicitLayer(indices, shapes, n, chunk_fn=chunks)
