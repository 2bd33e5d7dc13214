"""The interface every per-sample fast path implements, and the generic explicit (materialized) form.

Notation: the layer's tracked parameter tensors are θ_1..θ_k; g_{i,p} is the gradient of sample i's own
loss ℓ_i w.r.t. θ_p (the engine undoes the 1/N of ``reduction="mean"``). A handler answers, for its
parameters, without materializing the N×D per-sample gradients where the layer's structure allows:

* ``sum_grads``            Σ_i g_{i,p}                       (list, one tensor per parameter)
* ``gram``                 g_{i,p}ᵀg_{j,p}, when that is the cheap way ([k, N, N] or None)
* ``sq_norms``             ‖g_{i,p}‖²                        ([N, k])
* ``sum_grads_squared``    Σ_i g_{i,p}² element-wise         (list)
* ``project(dirs)``        g_{i,p}ᵀ v_{p}  for each direction ([N, k, K])
* ``elements(p, i, c)``    g_{i,p}[c] for sampled (sample, coordinate) pairs (1-D)
* ``sample_elements(p, S)`` S elements at uniformly drawn (sample, coordinate) pairs (and the coordinates)
* ``outer_factors(p)``     (U, V) with g_{i,p}[r·C + c] = s·U[i, r]·V[i, c] (V None: g_{i,p} = s·U[i]), when the
                           per-sample gradients have that form: many parameters' elements are then sampled in
                           one batch (:func:`sample_outer_elements`); s is ``outer_scale(p)`` (default 1)
* ``chunks(p)``            the per-sample gradients of θ_p, a few samples at a time (exact histograms)
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

#: default memory cap (bytes) for a materialized block of per-sample gradients
DEFAULT_MEMORY_CAP = 256 * 2**20


def uniform_indices(generator: torch.Generator, high: int, count: int, device: torch.device) -> torch.Tensor:
    """``count`` independent uniform integers in [0, high) (int64, drawn on the CPU, moved to ``device``)."""
    return torch.randint(0, high, (count,), generator=generator).to(device)


_STRATA: dict[tuple[int, int, str], torch.Tensor] = {}


class Workspace:
    """Large per-step temporaries of the fast paths (per-sample weight gradients of sequence and convolution
    layers, scaled output gradients), kept from one due step to the next and overwritten in place.

    A block of tens of MB allocated afresh every step is returned to the operating system when freed (glibc
    serves such sizes with ``mmap``) and page-faulted in again on the next step: on the benchmark transformer
    that was ≈ 0.3 of its per-step overhead. A buffer is valid for one step: the step's handlers are gone before
    the next step's fast paths write into it. :class:`PerSampleLayerProvider` clears the workspace after a step
    whose next step does not need per-sample gradients, so a tracking interval does not keep the memory.
    """

    def __init__(self) -> None:
        self._buffers: dict[tuple[object, ...], torch.Tensor] = {}

    def buffer(self, key: tuple[object, ...], shape: tuple[int, ...] | torch.Size, dtype: torch.dtype,
               device: torch.device) -> torch.Tensor:
        """An uninitialized tensor of this shape, the same one as last time for the same key where it fits."""
        t = self._buffers.get(key)
        if t is None or t.shape != tuple(shape) or t.dtype != dtype or t.device != device:
            self._buffers.pop(key, None)  # free the old one first: the peak stays one buffer
            t = self._buffers[key] = torch.empty(shape, dtype=dtype, device=device)
        return t

    def scaled(self, key: tuple[object, ...], t: torch.Tensor, scale: float) -> torch.Tensor:
        """t·scale in a reused buffer (t itself where scale is 1)."""
        if scale == 1.0:
            return t
        return torch.mul(t, scale, out=self.buffer(key, t.shape, t.dtype, t.device))

    def clear(self) -> None:
        self._buffers.clear()

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._buffers.values())


def stratified_samples(batch_size: int, count: int, device: torch.device) -> torch.Tensor:
    """Sample indices 0..N−1, each repeated ⌈count/N⌉ times; cached, since they are the same every step. The
    sample size becomes N·⌈count/N⌉."""
    per_sample = -(-count // batch_size)
    key = (batch_size, per_sample, str(device))
    out = _STRATA.get(key)
    if out is None:
        if len(_STRATA) > 64:
            _STRATA.clear()
        out = _STRATA[key] = torch.arange(batch_size, device=device).repeat_interleave(per_sample)
    return out


class LayerStatistics:
    """Base class of the per-layer per-sample gradient handlers."""

    #: positions (in the inspector's tracked parameter list) of this handler's parameters
    param_indices: list[int]
    #: shapes of the parameters (same order)
    shapes: list[torch.Size]
    batch_size: int

    def sum_grads(self) -> list[torch.Tensor]:
        raise NotImplementedError

    def gram(self, with_sums: bool = False) -> torch.Tensor | None:
        """[k, N, N] Gram matrices g_{i,p}ᵀ g_{j,p} per parameter, if cheaper than ``sum_grads`` +
        ``project`` (only ``project`` if the sums are computed anyway: ``with_sums``; then ‖g_i‖², ‖Σ_i g_i‖² and
        g_iᵀḡ all come from it); None otherwise."""
        return None

    def sq_norms(self) -> torch.Tensor:
        raise NotImplementedError

    def sum_grads_squared(self) -> list[torch.Tensor]:
        raise NotImplementedError

    def project(self, directions: list[list[torch.Tensor]]) -> torch.Tensor:
        raise NotImplementedError

    def elements(self, local: int, samples: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def sample_elements(self, local: int, count: int, generator: torch.Generator,
                        device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """About ``count`` elements g_{i,p}[c], stratified by sample: ⌈count/N⌉ uniform coordinates c for each
        sample i (every pair equally likely); returns (values, coordinates c).

        A handler may draw the coordinates in its own terms (e.g. row and column of a weight matrix); this
        default samples the :meth:`outer_factors` if there are any (:func:`sample_outer_elements`), else draws
        c and calls :meth:`elements`.
        """
        factors = self.outer_factors(local)
        if factors is not None:
            values, coords = sample_outer_elements([factors], [-(-count // self.batch_size)], generator)[0]
            scale = self.outer_scale(local)
            return (values.mul_(scale) if scale != 1.0 else values), coords
        numel = self.shapes[local].numel()
        samples = stratified_samples(self.batch_size, count, device)
        coords = uniform_indices(generator, numel, samples.shape[0], device)
        return self.elements(local, samples, coords), coords

    def chunks(self, local: int) -> Iterator[torch.Tensor]:
        raise NotImplementedError

    def outer_factors(self, local: int) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """(U [N, R], V [N, C] or None) with g_i[r·C + c] = U[i, r]·V[i, c] (or g_i = U[i] when V is None), both
        contiguous; None if this parameter's per-sample gradients are not of that form (then
        :meth:`sample_elements` draws its elements)."""
        return None

    def outer_scale(self, local: int) -> float:
        """The factor s of :meth:`outer_factors` (a fast path may keep its factors unscaled: the loss reduction's
        N is then applied to the few sampled elements instead of to a whole factor)."""
        return 1.0


_OUTER_PLANS: dict[tuple, tuple[torch.Tensor, ...]] = {}


def _outer_plan(shapes: tuple[tuple[int, int, int, int], ...], device: torch.device) -> tuple[torch.Tensor, ...]:
    """Per-element constants of :func:`sample_outer_elements` for segments (N, R, C, k), all float64: R, R − 1,
    C, C − 1, and the i-th sample's offsets i·R and i·C into U and V. The same few shapes recur every step:
    cached."""
    key = (shapes, str(device))
    plan = _OUTER_PLANS.get(key)
    if plan is None:
        if len(_OUTER_PLANS) > 16:
            _OUTER_PLANS.clear()
        parts: list[list[torch.Tensor]] = [[] for _ in range(6)]
        for n, r, c, k in shapes:
            sample = torch.arange(n, dtype=torch.float64).repeat_interleave(k)
            for part, value in zip(parts, (r, r - 1, c, c - 1)):
                part.append(torch.full((n * k,), float(value), dtype=torch.float64))
            parts[4].append(sample * r)
            parts[5].append(sample * c)
        plan = _OUTER_PLANS[key] = tuple(torch.cat(part).to(device) for part in parts)
    return plan


@dataclass(frozen=True)
class OuterPositions:
    """Drawn positions for :func:`gather_outer_elements`: for each segment (parameter) p with shape (N, R, C, k),
    N·k flat indices into U_p and V_p and the flat coordinates r·C + c, concatenated over the segments."""

    shapes: tuple[tuple[int, int, int, int], ...]
    u_index: torch.Tensor
    v_index: torch.Tensor
    coords: torch.Tensor

    @functools.cached_property
    def segments(self) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(u_index, v_index, coords) of each segment, sliced once: positions are reused for many steps, and each
        slice is a tensor operation of a few microseconds on every step that gathers."""
        out, start = [], 0
        for n, _, _, k in self.shapes:
            stop = start + n * k
            out.append((self.u_index[start:stop], self.v_index[start:stop], self.coords[start:stop]))
            start = stop
        return out


def outer_shapes(factors: list[tuple[torch.Tensor, torch.Tensor | None]],
                 per_sample: list[int]) -> tuple[tuple[int, int, int, int], ...]:
    """The segments (N, R, C, k) of :func:`draw_outer_positions` for these factors (C = 1 where V is None)."""
    return tuple((u.shape[0], u.shape[1], 1 if v is None else v.shape[1], k) for (u, v), k in zip(factors, per_sample))


def draw_outer_positions(shapes: tuple[tuple[int, int, int, int], ...], generator: torch.Generator,
                         device: torch.device) -> OuterPositions:
    """Uniform positions (r, c) for segments (N, R, C, k): each of the N samples gets k of them (the stratified
    design of :meth:`LayerStatistics.sample_elements`).

    One float64 uniform u per element gives both: r = ⌊u·R⌋ is uniform on 0..R−1 and, given r, the fraction
    u·R − r is uniform on [0, 1), so c = ⌊(u·R − r)·C⌋ is uniform and independent of r (to 2⁻⁵³·R·C, far below
    any histogram's resolution). Random numbers and integer division are what cost here (≈ 5 ns per element on
    a 2-core VM, against ≈ 0.5 ns for float arithmetic), so this draws one number per element and does only
    float arithmetic on all segments together.
    """
    rows_n, rows_max, cols_n, cols_max, u_off, v_off = _outer_plan(shapes, device)
    scaled = torch.rand(rows_n.shape[0], generator=generator, dtype=torch.float64).to(device).mul_(rows_n)
    # u·R may round up to R (u < 1 but close): clamp, then the fraction may reach 1: clamp c as well
    rows = torch.minimum(scaled.floor(), rows_max)
    cols = torch.minimum(scaled.sub_(rows).mul_(cols_n).floor_(), cols_max)
    coords = torch.addcmul(cols, rows, cols_n).to(torch.int64)
    u_index = rows.add_(u_off).to(torch.int64)
    v_index = cols.add_(v_off).to(torch.int64)
    return OuterPositions(shapes, u_index, v_index, coords)


def gather_outer_elements(factors: list[tuple[torch.Tensor, torch.Tensor | None]],
                          positions: OuterPositions) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """g_{i,p}[r·C + c] = U_p[i, r]·V_p[i, c] at the drawn positions: one or two gathers per parameter.
    Returns (values, flat coordinates r·C + c) per parameter."""
    out = []
    for (u, v), (u_index, v_index, coords) in zip(factors, positions.segments):
        values = u.reshape(-1).index_select(0, u_index)
        if v is not None:
            values = values.mul_(v.reshape(-1).index_select(0, v_index))
        out.append((values, coords))
    return out


def sample_outer_elements(
    factors: list[tuple[torch.Tensor, torch.Tensor | None]], per_sample: list[int], generator: torch.Generator
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Sample elements of several parameters' per-sample gradients given as outer products, in one batch.

    For parameter p with factors (U [N, R], V [N, C]), g_i[r·C + c] = U[i, r]·V[i, c] (V None: C = 1,
    g_i[r] = U[i, r]). Each of the N samples gets ``per_sample[p]`` coordinates (r, c) drawn uniformly
    (:func:`draw_outer_positions`), then each parameter costs one or two gathers (:func:`gather_outer_elements`).

    Returns (values, flat coordinates r·C + c) per parameter.
    """
    if not factors:
        return []
    positions = draw_outer_positions(outer_shapes(factors, per_sample), generator, factors[0][0].device)
    return gather_outer_elements(factors, positions)


class ExplicitLayer(LayerStatistics):
    """Per-sample gradients held (or produced chunk by chunk) as explicit tensors [n, *shape].

    Used for small parameters (normalization affines: N×C numbers) and by the ``torch.func`` fallback.

    Args:
        param_indices: tracked-parameter positions.
        shapes: parameter shapes.
        batch_size: N.
        grads: the per-sample gradients, one [N, *shape] tensor per parameter, if they are kept; or
        chunk_fn: a function returning an iterator over lists of [n_c, *shape] tensors (recomputed on use).
    """

    def __init__(
        self,
        param_indices: list[int],
        shapes: list[torch.Size],
        batch_size: int,
        grads: list[torch.Tensor] | None = None,
        chunk_fn: Callable[[], Iterator[list[torch.Tensor]]] | None = None,
    ):
        self.param_indices = param_indices
        self.shapes = shapes
        self.batch_size = batch_size
        self.grads = grads
        self.chunk_fn = chunk_fn
        if grads is None and chunk_fn is None:
            raise ValueError("ExplicitLayer needs grads or chunk_fn")

    def _blocks(self) -> Iterator[list[torch.Tensor]]:
        if self.grads is not None:
            yield self.grads
        else:
            assert self.chunk_fn is not None
            yield from self.chunk_fn()

    def sum_grads(self) -> list[torch.Tensor]:
        out: list[torch.Tensor] | None = None
        for block in self._blocks():
            s = [g.sum(0) for g in block]
            out = s if out is None else [a + b for a, b in zip(out, s)]
        assert out is not None
        return out

    def sq_norms(self) -> torch.Tensor:
        # vector_norm reads each row once and makes no N×D temporary (unlike square().sum())
        rows = [torch.stack([torch.linalg.vector_norm(g.flatten(1), dim=1).square() for g in block], 1)
                for block in self._blocks()]
        return torch.cat(rows, 0)

    def sum_grads_squared(self) -> list[torch.Tensor]:
        out: list[torch.Tensor] | None = None
        for block in self._blocks():
            s = [g.square().sum(0) for g in block]
            out = s if out is None else [a + b for a, b in zip(out, s)]
        assert out is not None
        return out

    def project(self, directions: list[list[torch.Tensor]]) -> torch.Tensor:
        rows = []
        for block in self._blocks():
            per_param = []
            for p, g in enumerate(block):
                v = torch.stack([d[p].reshape(-1) for d in directions], 1).to(g.dtype)  # [D, K]
                per_param.append(g.flatten(1) @ v)  # [n, K]
            rows.append(torch.stack(per_param, 1))
        return torch.cat(rows, 0)

    def elements(self, local: int, samples: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        if self.grads is not None:
            g = self.grads[local]
            if g.is_contiguous():  # a flat index_select is several times faster than 2-D advanced indexing
                return g.reshape(-1).index_select(0, samples * (g.numel() // max(g.shape[0], 1)) + coords)
            return g.flatten(1)[samples, coords]
        out = torch.empty(samples.shape[0], dtype=torch.float64)
        start = 0
        for block in self._blocks():
            g = block[local].flatten(1)
            mask = (samples >= start) & (samples < start + g.shape[0])
            out[mask] = g[samples[mask] - start, coords[mask]].to(torch.float64)
            start += g.shape[0]
        return out

    def chunks(self, local: int) -> Iterator[torch.Tensor]:
        for block in self._blocks():
            yield block[local]

    def outer_factors(self, local: int) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        if self.grads is None or not self.grads[local].is_contiguous():
            return None
        g = self.grads[local]
        return g.reshape(g.shape[0], -1), None
