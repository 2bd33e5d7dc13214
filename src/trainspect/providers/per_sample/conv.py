"""Fast path for ``nn.Conv1d`` / ``nn.Conv2d`` (groups = 1).

A convolution is a Linear layer applied at every output position t to the patch a_{i,t}, so
g_i = Σ_t δ_{i,t} a_{i,t}ᵀ as in :mod:`.bilinear`. With hundreds of positions the Gram form
(N·T²·(Din+Dout) flops) and projections through unfolded patches (im2col: N·T·Din memory traffic, the
slowest part on CPU) both lose to materializing the N per-sample weight gradients — N·|W| numbers, as many
as N copies of the weight (6.5 M floats for the 2c2d network's second layer at batch 128), from which every
statistic is a cheap pass.

They are computed one kernel offset at a time (:func:`per_sample_weight_grads_by_offset`): for offset u the
gradient slice g_i[:, :, u] = Δ_i X_{i,u}ᵀ is one batched matrix product of the output-gradients [N, Cout, T]
with the input window shifted by u, [N, Cin, T] — prod(kernel) products whose operands fit in cache, no
unfolded patches. Measured on 2 cores for the 2c2d network's second layer (32→64 channels, 5×5, 14×14, batch
128): 24 ms, against 48 ms for ``vmap`` of the weight-gradient convolution and 70 ms for unfold + bmm (the
batch's own weight gradient takes 9 ms). The result is kept *offset-major*, [prod(kernel), N, Cout, Cin]
(:class:`OffsetMajorConvLayer`): rearranging it into the weight's layout would cost as much again. Inputs with
one channel (a first layer on images) use ``vmap`` of ``torch.nn.grad.conv{1,2}d_weight`` instead, where the
per-offset products degenerate to matrix-vector products. :func:`unfold_patches` is kept for reference and tests.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from trainspect.providers.per_sample.capture import ModuleCapture
from trainspect.providers.per_sample.layer import ExplicitLayer, LayerStatistics, Workspace
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


def _padded(module: nn.Conv1d | nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    pads = _padding(module, x.dim() - 2)
    if any(pads):
        mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
        x = F.pad(x, pads, mode=mode)
    return x


def per_sample_weight_grads_by_offset(module: nn.Conv1d | nn.Conv2d, x: torch.Tensor,
                                      grad_output: torch.Tensor, workspace: Workspace | None = None,
                                      key: tuple[object, ...] = ()) -> torch.Tensor:
    """[prod(kernel), n, Cout, Cin]: entry [u, i] = g_i[:, :, u], each sample's weight gradient at kernel offset u
    (offsets in row-major order of the kernel), from the input window at offset u (see the module docstring).
    Written into ``workspace``'s buffer ``key`` where one is given."""
    xp = _padded(module, x)
    n, cin = xp.shape[:2]
    out_size = grad_output.shape[2:]
    delta = grad_output.reshape(n, grad_output.shape[1], -1)  # [n, Cout, T]
    kernel = module.kernel_size
    shape = (math.prod(kernel), n, delta.shape[1], cin)
    result = (workspace.buffer(key, shape, delta.dtype, delta.device) if workspace is not None
              else torch.empty(shape, dtype=delta.dtype, device=delta.device))
    for k, offset in enumerate(itertools.product(*map(range, kernel))):
        spatial = [slice(u * d, u * d + s * (o - 1) + 1, s)
                   for u, d, s, o in zip(offset, module.dilation, module.stride, out_size)]
        window = xp[(slice(None), slice(None), *spatial)]
        torch.bmm(delta, window.reshape(n, cin, -1).transpose(1, 2), out=result[k])
    return result


class OffsetMajorConvLayer(LayerStatistics):
    """A convolution's per-sample weight gradients held offset-major, [K, N, Cout, Cin] (K = prod(kernel)),
    plus its per-sample bias gradients [N, Cout]; every statistic in the parameters' own layout.

    Args:
        param_indices, shapes: tracked positions and shapes of the weight (first, if tracked) and the bias.
        weight: [K, N, Cout, Cin] or None (weight not tracked); bias: [N, Cout] or None.
    """

    def __init__(self, param_indices: list[int], shapes: list[torch.Size], weight: torch.Tensor | None,
                 bias: torch.Tensor | None):
        self.param_indices, self.shapes = param_indices, shapes
        self.weight, self.bias = weight, bias
        self.roles = (["weight"] if weight is not None else []) + (["bias"] if bias is not None else [])
        any_grad = weight if weight is not None else bias
        assert any_grad is not None
        self.batch_size = any_grad.shape[1] if weight is not None else any_grad.shape[0]

    def _to_weight_layout(self, t: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        """[K, Cout, Cin] → [Cout, Cin, *kernel]."""
        k = shape[2:]
        return t.reshape(*k, shape[0], shape[1]).permute(len(k), len(k) + 1, *range(len(k))).reshape(shape)

    def _from_weight_layout(self, t: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        """[Cout, Cin, *kernel] → [K, Cout, Cin]."""
        k = len(shape) - 2
        return t.reshape(shape).permute(*range(2, 2 + k), 0, 1).reshape(-1, shape[0], shape[1])

    def sum_grads(self) -> list[torch.Tensor]:
        out = []
        for role, shape in zip(self.roles, self.shapes):
            if role == "weight":
                out.append(self._to_weight_layout(self.weight.sum(1), shape))
            else:
                out.append(self.bias.sum(0).reshape(shape))
        return out

    def sq_norms(self) -> torch.Tensor:
        cols = []
        for role in self.roles:
            if role == "weight":
                k, n = self.weight.shape[:2]
                # one contiguous row per (offset, sample): no N×D temporary
                cols.append(torch.linalg.vector_norm(self.weight.reshape(k, n, -1), dim=2).square().sum(0))
            else:
                cols.append(self.bias.square().sum(1))
        return torch.stack(cols, 1)

    def sum_grads_squared(self) -> list[torch.Tensor]:
        out = []
        for role, shape in zip(self.roles, self.shapes):
            if role == "weight":
                out.append(self._to_weight_layout(torch.linalg.vector_norm(self.weight, dim=1).square(), shape))
            else:
                out.append(self.bias.square().sum(0).reshape(shape))
        return out

    def project(self, directions: list[list[torch.Tensor]]) -> torch.Tensor:
        cols = []
        for local, (role, shape) in enumerate(zip(self.roles, self.shapes)):
            if role == "weight":
                k, n = self.weight.shape[:2]
                v = torch.stack([self._from_weight_layout(d[local].to(self.weight.dtype), shape).reshape(k, -1)
                                 for d in directions], 2)  # [K, Cout·Cin, #dirs]
                cols.append(torch.bmm(self.weight.reshape(k, n, -1), v).sum(0))  # [N, #dirs]
            else:
                v = torch.stack([d[local].reshape(-1).to(self.bias.dtype) for d in directions], 1)
                cols.append(self.bias @ v)
        return torch.stack(cols, 1)

    def _weight_index(self, samples: torch.Tensor, coords: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        """Flat index into the offset-major weight of (sample, coordinate in the weight's own layout)."""
        k_total, n, cout, cin = self.weight.shape
        kernel_offset = coords % k_total
        rest = coords // k_total
        return ((kernel_offset * n + samples) * cout + rest // cin) * cin + rest % cin

    def elements(self, local: int, samples: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        if self.roles[local] == "bias":
            return self.bias.reshape(-1).index_select(0, samples * self.bias.shape[1] + coords)
        return self.weight.reshape(-1).index_select(0, self._weight_index(samples, coords, self.shapes[local]))

    def chunks(self, local: int) -> Iterator[torch.Tensor]:
        if self.roles[local] == "bias":
            yield self.bias
            return
        shape = self.shapes[local]
        k = len(shape) - 2
        # [K, N, Cout, Cin] → [N, Cout, Cin, *kernel] (a view: the exact histograms copy it anyway)
        yield self.weight.reshape(*shape[2:], -1, shape[0], shape[1]).permute(k, k + 1, k + 2, *range(k))


@fast_path(nn.Conv1d, nn.Conv2d, supports=_supports)
def build_conv(record: ModuleCapture, index_of: dict[int, int], scale: float,
               memory_cap: int, workspace: Workspace | None = None) -> ExplicitLayer | OffsetMajorConvLayer:
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
    per_sample = sum(s.numel() for s in shapes) * w.element_size()

    if module.in_channels > 1 and n * per_sample <= memory_cap:
        weight = bias = None
        workspace = workspace or Workspace()
        for j, c in enumerate(calls):
            g = workspace.scaled((record.name, "grad_output", j), c.grad_output, scale)
            if id(w) in index_of:
                # the first call's into the reused buffer, the others' (rare: a module called twice) fresh
                pw = per_sample_weight_grads_by_offset(module, c.inputs, g, workspace if weight is None else None,
                                                       (record.name, "weight_grads"))
                weight = pw if weight is None else weight.add_(pw)
            if b is not None and id(b) in index_of:
                pb = g.flatten(2).sum(2)
                bias = pb if bias is None else bias + pb
        return OffsetMajorConvLayer(indices, shapes, weight, bias)

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

    if n * per_sample <= memory_cap:
        return ExplicitLayer(indices, shapes, n, grads=block(0, n))
    step = max(1, memory_cap // max(per_sample, 1))

    def chunks():
        for start in range(0, n, step):
            yield block(start, min(n, start + step))

    return ExplicitLayer(indices, shapes, n, chunk_fn=chunks)
