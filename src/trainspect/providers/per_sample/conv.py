"""Fast path for ``nn.Conv1d`` / ``nn.Conv2d`` (groups = 1) by unfolding the input into patches.

A convolution is a Linear layer applied at every output position t to the patch a_{i,t}
(Cin·k_h·k_w values): unfold the (padded) input with the layer's kernel size, dilation and stride, then
use the bilinear formulas of :mod:`.bilinear` with weight viewed as [Cout, Cin·k_h·k_w].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainspect.providers.per_sample.bilinear import BilinearLayer
from trainspect.providers.per_sample.bilinear import concat_positions as _cat
from trainspect.providers.per_sample.capture import ModuleCapture
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


@fast_path(nn.Conv1d, nn.Conv2d, supports=_supports)
def build_conv(record: ModuleCapture, index_of: dict[int, int], scale: float, memory_cap: int) -> BilinearLayer:
    module = record.module
    calls = record.complete_calls()
    for c in calls:
        if c.inputs.dim() != module.weight.dim():
            raise ValueError(
                f"{type(module).__name__} {record.name!r}: unbatched input of shape {tuple(c.inputs.shape)}; "
                "per-sample gradients need a batch dimension"
            )
    n = calls[0].inputs.shape[0]
    a = _cat([unfold_patches(module, c.inputs) for c in calls])
    g = _cat([c.grad_output.reshape(n, module.out_channels, -1).transpose(1, 2) for c in calls])
    if scale != 1.0:
        g = g * scale
    w, b = module.weight, module.bias
    return BilinearLayer(
        a, g,
        index_of.get(id(w)), index_of.get(id(b)) if b is not None else None,
        w.shape, b.shape if b is not None else None, memory_cap,
    )
