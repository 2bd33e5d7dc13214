"""Cross-process reduction for instruments under ``torch.distributed`` (DDP); a no-op in one process.

Per-sample statistics are combined as *sums* (Σ‖g_i‖², Σ_i g_i², counts, ...), never as ratios: each rank
computes its partial sums, one all-reduce adds them, and the instrument finalizes the ratio from the
global sums. A single process is the one-rank case of the same code path. Every rank must call these
functions at the same steps in the same order (schedules depend on the step only), or the run hangs.
"""

from __future__ import annotations

import torch


def is_distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def rank() -> int:
    return torch.distributed.get_rank() if is_distributed() else 0


def world_size() -> int:
    return torch.distributed.get_world_size() if is_distributed() else 1


def all_reduce_sum(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Sum each tensor over all processes with a single collective (flattened into one float64 buffer).

    Returns new tensors (same shapes and dtypes); the inputs are not modified. In one process the inputs
    are returned as they are.
    """
    if not is_distributed() or not tensors:
        return tensors
    flat = torch.cat([t.detach().reshape(-1).to(torch.float64) for t in tensors])
    torch.distributed.all_reduce(flat, op=torch.distributed.ReduceOp.SUM)
    out, offset = [], 0
    for t in tensors:
        n = t.numel()
        out.append(flat[offset:offset + n].reshape(t.shape).to(t.dtype))
        offset += n
    return out
