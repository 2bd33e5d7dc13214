"""Layers whose per-sample gradient is a sum of outer products, g_i = Σ_t δ_{i,t} a_{i,t}ᵀ (Linear, Conv).

a_{i,t} ∈ R^{Din} is the layer input at position t of sample i (for a convolution, the unfolded patch),
δ_{i,t} ∈ R^{Dout} the gradient of sample i's loss w.r.t. the output at that position. Then
(Dangel et al. 2020, BackPACK; Goodfellow 2015 for T = 1):

* Σ_i g_i = Σ_{i,t} δ_{i,t} a_{i,t}ᵀ                       (one matmul, like the weight gradient)
* T = 1: ‖g_i‖² = ‖δ_i‖² ‖a_i‖²,  Σ_i g_i² = (δ²)ᵀ(a²)      (no N×D tensor)
* T > 1: ‖g_i‖² = Σ_{t,s} (a_{i,t}·a_{i,s})(δ_{i,t}·δ_{i,s}) (Gram form, N·T²·(Din+Dout) flops) or from
  g_i materialized a few samples at a time (N·T·Din·Dout flops), whichever is cheaper
* g_iᵀV = Σ_t δ_{i,t}ᵀ V a_{i,t}                              (N·T·Din·Dout flops, no N×D tensor)
* bias: g_i = Σ_t δ_{i,t}.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from trainspect.providers.per_sample.layer import (
    DEFAULT_MEMORY_CAP,
    LayerStatistics,
    stratified_samples,
    uniform_indices,
)


def concat_positions(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Positions of several calls side by side, [N, ΣT, D] (no copy for the usual single call)."""
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors, 1)


def _scaled(t: torch.Tensor, scale: float) -> torch.Tensor:
    """t·scale, in place: t must be a fresh result of this handler, never a captured tensor or a view of one."""
    return t if scale == 1.0 else t.mul_(scale)


def _as(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t.to(dtype)``, without the call when it is already of that dtype (the usual case)."""
    return t if t.dtype == dtype else t.to(dtype)


class BilinearLayer(LayerStatistics):
    """Per-sample statistics of a weight (Dout×Din after reshaping) and an optional bias.

    Args:
        inputs: A, [N, T, Din].
        grad_outputs: Δ, [N, T, Dout], the output-gradients as autograd delivered them.
        weight_index / bias_index: tracked-parameter positions (None if that parameter is not tracked).
        weight_shape / bias_shape: the parameters' shapes (the weight is viewed as [Dout, Din]).
        memory_cap: bytes allowed for a materialized block of per-sample weight gradients.
        scale: s with g_i = s·Σ_t δ_{i,t} a_{i,t}ᵀ (N for ``reduction="mean"``, see the provider). Applied to each
            result — s² to the Gram matrices and squared norms — instead of to Δ: the results are [N]- or [N, N]-
            sized, Δ is [N, T, Dout], and scaling it cost ≈ 60 µs per layer inside a training step (the 784-1000-
            500-100-10 MLP, 2 cores).
    """

    def __init__(
        self,
        inputs: torch.Tensor,
        grad_outputs: torch.Tensor,
        weight_index: int | None,
        bias_index: int | None,
        weight_shape: torch.Size | None,
        bias_shape: torch.Size | None,
        memory_cap: int = DEFAULT_MEMORY_CAP,
        scale: float = 1.0,
    ):
        self.A = inputs
        self.G = grad_outputs
        self.scale = scale
        self.batch_size, self.T, self.din = inputs.shape
        self.dout = grad_outputs.shape[2]
        self.memory_cap = memory_cap
        self.param_indices, self.shapes, self.roles = [], [], []
        if weight_index is not None:
            self.param_indices.append(weight_index)
            self.shapes.append(weight_shape)
            self.roles.append("weight")
        if bias_index is not None:
            self.param_indices.append(bias_index)
            self.shapes.append(bias_shape)
            self.roles.append("bias")
        self._bias_grads: torch.Tensor | None = None
        # the positions flattened, [N·T, D], once: gram, project, sum_grads and the element gathers all use them (every
        # reshape is a tensor operation of a few microseconds inside a training step)
        self.A2 = inputs.reshape(-1, self.din)
        self.G2 = grad_outputs.reshape(-1, self.dout)

    # -- helpers ---------------------------------------------------------------------------------
    @property
    def bias_grads(self) -> torch.Tensor:
        """Σ_t δ_{i,t}, [N, Dout] (small, so kept): the per-sample bias gradients divided by :attr:`scale`."""
        if self._bias_grads is None:
            # one position: δ_i itself (a view, no summing copy)
            self._bias_grads = self.G2 if self.T == 1 else self.G.sum(1)
        return self._bias_grads

    def _chunk_size(self) -> int:
        per_sample = self.dout * self.din * self.A.element_size()
        return max(1, min(self.batch_size, self.memory_cap // max(per_sample, 1)))

    def _weight_blocks(self) -> Iterator[torch.Tensor]:
        """Per-sample weight gradients divided by :attr:`scale`, [n, Dout, Din], a block of samples at a time."""
        n = self._chunk_size()
        for start in range(0, self.batch_size, n):
            yield torch.bmm(self.G[start:start + n].transpose(1, 2), self.A[start:start + n])

    def _materialize_is_cheaper(self) -> bool:
        return self.T * self.T * (self.din + self.dout) > self.T * self.din * self.dout

    #: multiply-adds charged, beside its flops, to the path that the Gram form replaces: that path is several more
    #: small tensor operations (the sums, their norms, the projections and their assembly), each costing 10–20 µs
    #: inside a training step, which for a small layer outweigh its flops (the 784-1000-500-100-10 MLP's last layer:
    #: 1.8 M multiply-adds for its Gram matrices against 0.26 M for the sums and projections, yet ≈ 0.5 ms of the
    #: step on that path; 2 cores)
    gram_overhead_macs: int = 1 << 22

    # -- statistics --------------------------------------------------------------------------------
    def gram(self, with_sums: bool = False) -> torch.Tensor | None:
        """K_{ij} = g_iᵀg_j = Σ_{t,s} (a_{i,t}·a_{j,s})(δ_{i,t}·δ_{j,s}) for the weight, Σ_{t,s} δ_{i,t}·δ_{j,s}
        for the bias: N²T²(Din+Dout) multiply-adds, used when below what it replaces — Σ_i g_i and the projections
        g_iᵀḡ, 2·N·T·Din·Dout, or only the projections, N·T·Din·Dout, if the sums are computed anyway
        (``with_sums``), plus :attr:`gram_overhead_macs` for that path's extra operations — (e.g. T = 1 layers
        wider than the batch, or small layers) and the (NT)² matrix is small."""
        n, t = self.batch_size, self.T
        replaced = (1 if with_sums else 2) * n * t * self.din * self.dout + self.gram_overhead_macs
        if (n * t) ** 2 * (self.din + self.dout) >= replaced or (n * t) ** 2 > 2**24:
            return None
        a, g = self.A2, self.G2
        kg = g @ g.T
        if self.scale != 1.0:
            kg.mul_(self.scale * self.scale)  # (s·δ_i)·(s·δ_j); the weight's Gram matrix takes it from here
        out = []
        for role in self.roles:
            if role == "weight":
                k = (a @ a.T) * kg
            else:
                k = kg
            out.append(k.reshape(n, t, n, t).sum((1, 3)) if t > 1 else k)
        return torch.stack(out)

    def sum_grads(self) -> list[torch.Tensor]:
        out = []
        for role, shape in zip(self.roles, self.shapes):
            if role == "weight":
                out.append(_scaled((self.G2.T @ self.A2).reshape(shape), self.scale))
            else:
                out.append(_scaled(self.bias_grads.sum(0).reshape(shape), self.scale))
        return out

    def sq_norms(self) -> torch.Tensor:
        cols = []
        for role in self.roles:
            if role == "bias":
                cols.append(self.bias_grads.square().sum(1))
            elif self.T == 1:
                cols.append(self.A2.square().sum(1) * self.G2.square().sum(1))
            elif self._materialize_is_cheaper():
                cols.append(torch.cat([w.square().sum((1, 2)) for w in self._weight_blocks()]))
            else:
                gram_a = torch.bmm(self.A, self.A.transpose(1, 2))
                gram_g = torch.bmm(self.G, self.G.transpose(1, 2))
                cols.append((gram_a * gram_g).sum((1, 2)))
        return _scaled(torch.stack(cols, 1), self.scale * self.scale)

    def sum_grads_squared(self) -> list[torch.Tensor]:
        out = []
        for role, shape in zip(self.roles, self.shapes):
            if role == "bias":
                out.append(self.bias_grads.square().sum(0).reshape(shape))
            elif self.T == 1:
                out.append((self.G2.square().T @ self.A2.square()).reshape(shape))
            else:
                total = None
                for w in self._weight_blocks():
                    s = w.square().sum(0)
                    total = s if total is None else total + s
                out.append(total.reshape(shape))
        return [_scaled(t, self.scale * self.scale) for t in out]

    def project(self, directions: list[list[torch.Tensor]]) -> torch.Tensor:
        # one direction (alpha, every step) is the usual case: no stacking of single columns (each small tensor
        # operation costs microseconds inside a training step)
        single = len(directions) == 1
        cols = []
        dtype = self.G.dtype
        for local, role in enumerate(self.roles):
            if role == "bias":
                if single:
                    cols.append(self.bias_grads @ _as(directions[0][local].reshape(-1), dtype))
                else:
                    v = _as(torch.stack([d[local].reshape(-1) for d in directions], 1), dtype)  # [Dout, K]
                    cols.append(self.bias_grads @ v)
            else:
                # p_i = Σ_t δ_{i,t}ᵀ V a_{i,t}: one [N·T, Din]×[Din, Dout] product per direction (no copy of V)
                a, g = self.A2, self.G2
                per_dir = []
                for d in directions:
                    av = a @ _as(d[local].reshape(self.dout, self.din), a.dtype).T
                    if self.T == 1:  # one row per sample: a row-wise dot, no [N, Dout] product
                        per_dir.append(torch.linalg.vecdot(av, g))
                    else:
                        per_dir.append((av * g).sum(1).reshape(self.batch_size, self.T).sum(1))
                cols.append(per_dir[0] if single else torch.stack(per_dir, 1))
        # [N, k, K]: columns of one direction are [N] (stacked, then a trailing axis), of several [N, K]
        return _scaled(torch.stack(cols, 1).unsqueeze(2) if single else torch.stack(cols, 1), self.scale)

    def elements(self, local: int, samples: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        if self.roles[local] == "bias":
            return _scaled(self.bias_grads.reshape(-1).index_select(0, samples * self.dout + coords), self.scale)
        rows, cols = coords // self.din, coords % self.din
        return _scaled(self._weight_elements(samples, rows, cols), self.scale)

    def _weight_elements(self, samples: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """g_i[o, k] = Σ_t δ_{i,t}[o] a_{i,t}[k] at the pairs (samples, rows o, cols k)."""
        if self.T == 1:  # flat index_select gathers are several times faster than 2-D advanced indexing on CPU
            return (self.G2.reshape(-1).index_select(0, torch.add(rows, samples, alpha=self.dout))
                    * self.A2.reshape(-1).index_select(0, torch.add(cols, samples, alpha=self.din)))
        out = torch.empty(samples.shape[0], dtype=self.A.dtype, device=self.A.device)
        step = max(1, (2**24) // max(self.T, 1))  # bound the [S, T] gather
        for s in range(0, samples.shape[0], step):
            i, o, k = samples[s:s + step], rows[s:s + step], cols[s:s + step]
            out[s:s + step] = (self.G[i, :, o] * self.A[i, :, k]).sum(1)
        return out

    def sample_elements(self, local: int, count: int, generator: torch.Generator,
                        device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if self.roles[local] == "bias" or self.outer_factors(local) is not None:
            return super().sample_elements(local, count, generator, device)  # from the outer factors
        # positions: a uniform coordinate of the Dout×Din weight is a uniform (row, column) pair
        samples = stratified_samples(self.batch_size, count, device)
        rows = uniform_indices(generator, self.dout, samples.shape[0], device)
        cols = uniform_indices(generator, self.din, samples.shape[0], device)
        return _scaled(self._weight_elements(samples, rows, cols), self.scale), torch.add(cols, rows, alpha=self.din)

    def outer_factors(self, local: int) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        if self.roles[local] == "bias":
            if self.T == 1 and self.G.is_contiguous():  # Σ_t δ_{i,t} is δ_i itself: no sum needed
                return self.G2, None
            b = self.bias_grads
            return (b, None) if b.is_contiguous() else None
        if self.T != 1 or not (self.G.is_contiguous() and self.A.is_contiguous()):
            return None
        return self.G2, self.A2  # T = 1: [N, Dout] and [N, Din]

    def outer_scale(self, local: int) -> float:
        return self.scale

    def chunks(self, local: int) -> Iterator[torch.Tensor]:
        if self.roles[local] == "bias":
            yield self.bias_grads * self.scale if self.scale != 1.0 else self.bias_grads  # (may be Δ itself)
            return
        shape = self.shapes[local]
        for w in self._weight_blocks():
            yield _scaled(w.reshape(w.shape[0], *shape), self.scale)
