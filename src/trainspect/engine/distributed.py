"""Cross-process reduction for instruments under ``torch.distributed`` (DDP); a no-op in one process.

Per-sample statistics are combined as *sums* (Σ‖g_i‖², Σ_i g_i², counts, ...), never as ratios: each rank
computes its partial sums, one all-reduce adds them, and the instrument finalizes the ratio from the
global sums. A single process is the one-rank case of the same code path. Every rank must call these
functions at the same steps in the same order (schedules depend on the step only), or the run hangs.
"""

from __future__ import annotations

from datetime import timedelta

import torch


def is_distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def rank() -> int:
    return torch.distributed.get_rank() if is_distributed() else 0


def world_size() -> int:
    return torch.distributed.get_world_size() if is_distributed() else 1


#: how long rank 0 waits, at attach, for every rank to attach its inspector (then it gives up communicating)
ATTACH_TIMEOUT_S = 120.0
_attach_count = 0


def attach_handshake(timeout_s: float | None = None) -> list[int]:
    """Check that every rank attached an inspector; returns the ranks that did not (empty: all did).

    A common slip is ``if rank == 0: trainspect.attach(...)``: rank 0 would then wait forever in its first
    collective. Through the process group's key-value store (no collective), each rank announces its k-th
    attach; rank 0 waits up to ``timeout_s`` for all of them and publishes the outcome, which every rank
    follows. If some rank is missing, the inspectors that did attach communicate nothing (they record their
    own rank's values) instead of hanging. One store round trip per attach.
    """
    global _attach_count
    if not is_distributed():
        return []
    timeout_s = ATTACH_TIMEOUT_S if timeout_s is None else timeout_s
    k, r, w = _attach_count, rank(), world_size()
    _attach_count += 1
    store = torch.distributed.distributed_c10d._get_default_store()
    prefix = f"trainspect/attach/{k}"
    store.set(f"{prefix}/rank{r}", "1")
    if r == 0:
        try:
            store.wait([f"{prefix}/rank{q}" for q in range(w)], timedelta(seconds=timeout_s))
            missing: list[int] = []
        except Exception:  # DistStoreError (a RuntimeError) on timeout
            missing = [q for q in range(w) if not store.check([f"{prefix}/rank{q}"])]
        store.set(f"{prefix}/missing", ",".join(map(str, missing)))
        return missing
    try:
        store.wait([f"{prefix}/missing"], timedelta(seconds=timeout_s + 60))
        text = store.get(f"{prefix}/missing").decode()
    except Exception:  # rank 0 never attached
        return [0]
    return [int(q) for q in text.split(",")] if text else []


def collective_device() -> torch.device:
    """Where small bookkeeping tensors must live for a collective (NCCL only reduces CUDA tensors)."""
    if is_distributed() and torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Sum each tensor over all processes with a single collective (flattened into one float64 buffer).

    Returns new tensors (same shapes and dtypes); the inputs are not modified. In one process the inputs
    are returned as they are.

    Raises:
        PeerFailure: (inside an engine phase) another rank failed or skipped the calling instrument; the
            engine treats the instrument as skipped on every rank this step (or disabled, if it failed).
    """
    if not is_distributed() or not tensors:
        return tensors
    # one float64 buffer on the collective's device (NCCL: this rank's GPU; gloo: CPU), whatever the inputs' devices
    device = collective_device()
    flat = torch.cat([t.detach().reshape(-1).to(device=device, dtype=torch.float64) for t in tensors])
    if _scope is not None:  # inside an engine phase: agree with the other ranks first (no hang on failures)
        flat = _scope.all_reduce_sum(flat)
    else:
        torch.distributed.all_reduce(flat, op=torch.distributed.ReduceOp.SUM)
    out, offset = [], 0
    for t in tensors:
        n = t.numel()
        out.append(flat[offset:offset + n].reshape(t.shape).to(device=t.device, dtype=t.dtype))
        offset += n
    return out


# ------------------------------------------------------------------------------------------------------
# Keeping collectives aligned when an instrument fails or is skipped on some ranks
# ------------------------------------------------------------------------------------------------------
# An instrument that calls ``all_reduce_sum`` on rank 0 while it raised (or was skipped) on rank 1 would
# leave rank 0 waiting in the collective forever. The engine therefore runs each phase's instruments inside
# a ``CollectiveScope``: every collective is preceded by a small "header" all-reduce (MAX) of this rank's
# position (instrument slot, call number) and payload size, so that the ranks agree before moving data:
#
# - all ranks at the same position with the same size: the payload is all-reduced (the normal case);
# - this rank is at the lowest position but some rank is further on: that rank left this instrument (it
#   failed or skipped it there), so this rank gives the instrument up too (``PeerFailure``);
# - this rank is further on than some other rank: it waits (repeats the header) until that rank catches up.
#
# At the end of the phase every rank repeats an "end" header until all ranks have reached it; that last
# header also carries each rank's per-instrument status (ok / skipped / left / failed), combined by MAX, so
# every rank learns where an instrument failed and all ranks disable it together (schedules stay aligned).
# A single process never enters any of this.

#: per-instrument status codes exchanged at the end of a phase (MAX-combined, so "failed" wins)
STATUS_OK, STATUS_SKIPPED, STATUS_LEFT, STATUS_FAILED = 0.0, 1.0, 2.0, 3.0
_END = float(2**52)  # a position after every instrument slot (exact in float64)
_CALLS_PER_SLOT = 1 << 16


class PeerFailure(RuntimeError):
    """Another rank left this instrument's collective (it failed or skipped the instrument there)."""


class CollectiveScope:
    """Aligns the collectives of one engine phase across ranks (see the comment above).

    Args:
        n_slots: number of instrument slots in the phase (identical on every rank: schedules depend on the
            step only).
    """

    def __init__(self, n_slots: int):
        self.n_slots = n_slots
        self.world = world_size()
        self.rank = rank()
        self.slot = 0
        self.calls = 0
        # the status part of every header: one entry per (slot, rank), so a MAX keeps each rank's status
        self._width = 4 + n_slots * self.world
        self.device = collective_device()

    def enter(self, slot: int) -> None:
        """The engine is about to run instrument ``slot``."""
        self.slot = slot
        self.calls = 0

    def _header(self, position: float, numel: int, status: torch.Tensor | None = None) -> torch.Tensor:
        h = torch.zeros(self._width, dtype=torch.float64, device=self.device)
        h[0], h[1], h[2], h[3] = position, -position, float(numel), -float(numel)
        if status is not None:
            h[4:] = status
        torch.distributed.all_reduce(h, op=torch.distributed.ReduceOp.MAX)
        return h

    def all_reduce_sum(self, flat: torch.Tensor) -> torch.Tensor:
        """Sum the float64 vector ``flat`` over ranks, or raise ``PeerFailure`` if a rank left this instrument."""
        position = float(self.slot * _CALLS_PER_SLOT + self.calls)
        self.calls += 1
        while True:
            h = self._header(position, flat.numel())
            lowest, highest = -float(h[1]), float(h[0])
            if lowest == highest == position:
                if -float(h[3]) != float(h[2]):
                    raise PeerFailure(
                        f"ranks disagree on the size of a collective ({int(-h[3])} vs {int(h[2])} values); "
                        "the instrument computed differently shaped partial sums on different ranks"
                    )
                torch.distributed.all_reduce(flat, op=torch.distributed.ReduceOp.SUM)
                return flat
            if position == lowest:
                raise PeerFailure(
                    "another rank left this instrument's collective (the instrument failed or was skipped there; "
                    "see that rank's warning)"
                )
            # position > lowest: a rank is still in an earlier instrument; it will give that up and catch up

    def finish(self, status: torch.Tensor) -> torch.Tensor:
        """End of the phase: wait for every rank; return the (n_slots, world) status matrix of all ranks."""
        local = torch.zeros(self.n_slots, self.world, dtype=torch.float64, device=self.device)
        local[:, self.rank] = status.to(device=self.device, dtype=torch.float64)
        while True:
            h = self._header(_END, 0, local.reshape(-1))
            if -float(h[1]) == _END:
                return h[4:].reshape(self.n_slots, self.world).cpu()


_scope: CollectiveScope | None = None


def active_scope() -> CollectiveScope | None:
    """The scope of the engine phase now running (None outside the engine or in one process)."""
    return _scope


def set_active_scope(scope: CollectiveScope | None) -> None:
    global _scope
    _scope = scope
