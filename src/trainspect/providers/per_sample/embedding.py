"""Fast path for ``nn.Embedding``: per-sample gradients are sparse (only the rows a sample looks up).

g_i = Σ_t e_{k_{i,t}} δ_{i,t}ᵀ (k: the looked-up indices). Positions of the same sample that look up the
same row are summed first (``torch.unique`` on the pair (sample, row)); every statistic is then a sum over
these U ≤ N·T (sample, row) pairs, with cost O(U·E) instead of O(N·V·E):
‖g_i‖² = Σ_{rows r of i} ‖G_{i,r}‖², Σ_i g_i² = Σ_{(i,r)} G_{i,r}² scattered to row r, g_iᵀV = Σ_r G_{i,r}·V_r.
Rows at ``padding_idx`` get no gradient, as in PyTorch.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from trainspect.providers.per_sample.capture import ModuleCapture
from trainspect.providers.per_sample.layer import DEFAULT_MEMORY_CAP, ExplicitLayer, LayerStatistics, Workspace
from trainspect.providers.per_sample.registry import fast_path


def _supports(module: nn.Module) -> str | None:
    if module.max_norm is not None:
        return "max_norm renormalizes the looked-up rows in place"
    if module.scale_grad_by_freq:
        return "scale_grad_by_freq scales gradients by batch-wide counts (samples are not independent)"
    return None


class EmbeddingLayer(LayerStatistics):
    def __init__(self, indices: torch.Tensor, grad_outputs: torch.Tensor, num_embeddings: int,
                 param_index: int, shape: torch.Size, padding_idx: int | None, memory_cap: int = DEFAULT_MEMORY_CAP):
        n = indices.shape[0]
        self.batch_size = n
        self.param_indices = [param_index]
        self.shapes = [shape]
        self.V, self.E = shape
        self.memory_cap = memory_cap
        idx = indices.reshape(n, -1)
        grads = grad_outputs.reshape(n, idx.shape[1], self.E)
        sample = torch.arange(n, device=idx.device).unsqueeze(1).expand_as(idx)
        keep = torch.ones_like(idx, dtype=torch.bool) if padding_idx is None else idx != padding_idx
        keys = (sample * self.V + idx)[keep]
        uniq, inverse = torch.unique(keys, return_inverse=True)
        self.keys = uniq  # sorted
        self.rows = torch.zeros(uniq.shape[0], self.E, dtype=grads.dtype, device=grads.device)
        self.rows.index_add_(0, inverse, grads[keep])
        self.sample_of = uniq // self.V
        self.row_of = uniq % self.V

    def _scatter_rows(self, values: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(self.V, self.E, dtype=values.dtype, device=values.device)
        return out.index_add_(0, self.row_of, values)

    def _per_sample(self, values: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(self.batch_size, *values.shape[1:], dtype=values.dtype, device=values.device)
        return out.index_add_(0, self.sample_of, values)

    def sum_grads(self) -> list[torch.Tensor]:
        return [self._scatter_rows(self.rows)]

    def sq_norms(self) -> torch.Tensor:
        return self._per_sample(self.rows.square().sum(1)).unsqueeze(1)

    def sum_grads_squared(self) -> list[torch.Tensor]:
        return [self._scatter_rows(self.rows.square())]

    def project(self, directions: list[list[torch.Tensor]]) -> torch.Tensor:
        v = torch.stack([d[0].to(self.rows.dtype)[self.row_of] for d in directions], 2)  # [U, E, K]
        return self._per_sample(torch.einsum("ue,uek->uk", self.rows, v)).unsqueeze(1)

    def elements(self, local: int, samples: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        keys = samples * self.V + coords // self.E
        pos = torch.searchsorted(self.keys, keys).clamp(max=max(self.keys.shape[0] - 1, 0))
        if self.keys.shape[0] == 0:
            return torch.zeros(samples.shape[0], dtype=self.rows.dtype)
        found = self.keys[pos] == keys
        vals = self.rows[pos, coords % self.E]
        return torch.where(found, vals, torch.zeros_like(vals))

    def chunks(self, local: int) -> Iterator[torch.Tensor]:
        per_sample = self.V * self.E * self.rows.element_size()
        step = max(1, min(self.batch_size, self.memory_cap // max(per_sample, 1)))
        for start in range(0, self.batch_size, step):
            stop = min(start + step, self.batch_size)
            block = torch.zeros(stop - start, self.V, self.E, dtype=self.rows.dtype, device=self.rows.device)
            sel = (self.sample_of >= start) & (self.sample_of < stop)
            block[self.sample_of[sel] - start, self.row_of[sel]] = self.rows[sel]
            yield block


@fast_path(nn.Embedding, supports=_supports)
def build_embedding(
    record: ModuleCapture, index_of: dict[int, int], scale: float, memory_cap: int,
    workspace: Workspace | None = None,
) -> EmbeddingLayer | ExplicitLayer:
    module = record.module
    calls = record.complete_calls()
    n = calls[0].inputs.shape[0]
    idx = torch.cat([c.inputs.reshape(n, -1) for c in calls], 1)
    grads = torch.cat([c.grad_output.reshape(n, -1, module.embedding_dim) for c in calls], 1) * scale
    w = module.weight
    if n * w.numel() * w.element_size() <= memory_cap // 4:
        # a small table: dense per-sample gradients (one index_add) beat the sparse bookkeeping
        keep = torch.ones_like(idx, dtype=torch.bool) if module.padding_idx is None else idx != module.padding_idx
        rows = (torch.arange(n, device=idx.device).unsqueeze(1) * module.num_embeddings + idx)[keep]
        dense = torch.zeros(n * module.num_embeddings, module.embedding_dim, dtype=grads.dtype, device=grads.device)
        dense.index_add_(0, rows, grads[keep])
        return ExplicitLayer([index_of[id(w)]], [w.shape], n, grads=[dense.reshape(n, *w.shape)])
    return EmbeddingLayer(idx, grads, module.num_embeddings, index_of[id(w)], w.shape, module.padding_idx,
                          memory_cap)
