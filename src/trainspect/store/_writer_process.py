"""The run store's writer process: reads framed messages (from a shared-memory ring and stdin) and commits them.

Started by :class:`trainspect.store.writer.StoreWriter` as ``python -S _writer_process.py DB``. It imports only
the standard library (this file's folder is put on ``sys.path``, not the torch-importing package), so it
starts in a few milliseconds. Messages are committed in groups: whatever arrived within ``COMMIT_INTERVAL``
(250 ms) of the first uncommitted message goes into one transaction (whole messages only), so a fast training
loop costs this process one commit per interval, not one per step, and it keeps up with any step rate. Readers
see a step at most that long after it was sent. Durability does not depend on the interval: when the training
process ends, even by ``kill -9``, stdin reaches EOF and everything already sent is committed.

It runs on any core the machine allows, not only on the core the training process's main thread was pinned to
(``OMP_PROC_BIND`` pins torch's main thread, and a child inherits that thread's affinity), so it never
competes with the training loop for one core while another has time to spare.

Steps come through a shared-memory ring (``_ring.py``: no system call per step in the training process), drained
every ``COMMIT_INTERVAL``; stdin carries flush requests, frames too large for the ring, and the end of the run.

Pipe frame: ``uint32 header_length, uint32 payload_length`` (little-endian), JSON header, payload bytes.
A header ``{"op": "flush"}`` is answered with one newline on stdout once everything before it is committed
(``E`` and a newline if some message failed).
"""

from __future__ import annotations

import json
import os
import select
import signal
import struct
import sys
import time
import traceback

#: seconds a message may wait before its transaction is committed. A commit costs this process 100–500 µs of CPU
#: whatever it holds, and on a machine whose cores all run the training step that time is taken from one of torch's
#: threads (a parallel kernel waits for its slowest thread): measured on the 784-1000-500-100-10 MLP (2 cores,
#: ≈ 10 ms steps), 50 ms cost the writer 100–200 µs of CPU per step (3 steps per commit) and the inspected step
#: ≈ 3 % more than 250 ms (≈ 25 steps per commit, ≈ 40 µs per step). A live reader (the dashboard) sees a step
#: within this interval.
COMMIT_INTERVAL = 0.25


def _move_off(busy: set[int]) -> None:
    """Run on the CPUs the training process's main thread is not pinned to (``busy``), if there are any.

    A child inherits the affinity of the thread that started it, and ``OMP_PROC_BIND`` pins torch's main thread
    to one core; left there, this process would time-share that core with the training loop (each wake-up a
    preemption) while another core has time to spare. Best effort: a container may forbid some CPUs.
    """
    try:
        allowed = set(range(os.cpu_count() or 1))
        others = allowed - busy
        os.sched_setaffinity(0, others or allowed)
    except (AttributeError, OSError, ValueError):
        pass


def main(db: str, busy: set[int] | None = None, ring_path: str | None = None) -> int:
    # Ctrl-C in the terminal reaches the whole process group: the training process decides when we stop
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from _ring import Ring
    from _sql import SqlWriter, connect

    _move_off(busy or set())
    writer = SqlWriter(connect(db, create=False))
    ring = Ring.attach(ring_path) if ring_path else None
    fd = sys.stdin.fileno()
    sink = sys.stdout.buffer
    buffer = bytearray()
    pending: list[tuple[dict, bytes]] = []
    failed = False
    eof = False
    layouts: dict[int, tuple[struct.Struct, list[str], list[tuple[str, int]]]] = {}

    def commit() -> None:
        nonlocal failed
        if pending:
            try:
                errors = writer.apply(pending)
            except Exception:
                errors = [RuntimeError("transaction failed")]
                traceback.print_exc()
            for error in errors:
                failed = True
                print(f"trainspect store writer: {type(error).__name__}: {error}", file=sys.stderr)
            sys.stderr.flush()
            pending.clear()

    def answer(flushes: int) -> None:
        for _ in range(flushes):
            sink.write(b"E\n" if failed else b"\n")
            sink.flush()

    try:
        while ring is not None:
            # Steps arrive in the ring, which wakes nobody: look every COMMIT_INTERVAL, or at once when the pipe
            # says something (a flush request, a frame too large for the ring, a full ring, or EOF).
            if select.select([fd], [], [], COMMIT_INTERVAL)[0]:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    eof = True
                buffer += chunk
            # A large frame goes through the pipe only once the ring is drained, so the ring's frames taken now
            # come after the pipe's; a flush is answered once everything sent before it is committed.
            flushes = _parse(buffer, pending, stop_at_flush=False, layouts=layouts)
            for body, payload in ring.take():
                _receive(body, payload, pending, layouts)
            commit()
            answer(flushes)
            if eof:
                if ring.pending():
                    print(f"trainspect store writer: {ring.pending()} bytes at the end of the ring were incomplete",
                          file=sys.stderr)
                break
        while ring is None:
            if not _complete_frame(buffer):
                if eof:
                    break
                chunk = os.read(fd, 1 << 20)  # blocks until the training process sends something
                if not chunk:
                    eof = True
                buffer += chunk
            flushes = _parse(buffer, pending)
            if not eof and not flushes:
                # let a group of steps arrive: while this process sleeps, the training loop's writes wake nobody
                time.sleep(COMMIT_INTERVAL)
                while not eof and select.select([fd], [], [], 0)[0]:
                    chunk = os.read(fd, 1 << 20)
                    if not chunk:
                        eof = True
                    buffer += chunk
                flushes += _parse(buffer, pending)
            commit()
            answer(flushes)
        commit()
    finally:
        writer.close()
        if ring is not None:
            ring.close()
    return 1 if failed else 0


def _complete_frame(buffer: bytearray) -> bool:
    """Whether ``buffer`` starts with a whole frame."""
    if len(buffer) < 8:
        return False
    header_length, payload_length = struct.unpack_from("<II", buffer, 0)
    return len(buffer) >= 8 + header_length + payload_length


def _receive(body: bytes, payload: bytes, pending: list[tuple[dict, bytes]], layouts: dict) -> None:
    """Decode one frame into ``pending``: JSON, or a binary step (whose layout arrived in a ``layout`` frame)."""
    if body[:1] == b"B":
        pending.append(binary_step(body, payload, layouts))
        return
    header = json.loads(body)
    if header["op"] == "layout":
        names = header["scalars"]
        layouts[header["id"]] = (struct.Struct(f"<BIqddd?{len(names)}d"), names, header["layers"])
    elif header["op"] != "wake":
        pending.append((header, payload))


def binary_step(body: bytes, payload: bytes, layouts: dict) -> tuple[dict, bytes]:
    """A binary step frame as the step message it stands for.

    Frame: ``uint8 0x42, uint32 layout, int64 step, float64 wall_time, user_seconds, overhead_seconds,
    bool optimizer_stepped``, then one float64 per scalar of the layout; payload: the layout's per-layer vectors,
    float64, one after the other."""
    packer, names, layers = layouts[struct.unpack_from("<I", body, 1)[0]]
    _, _, step, wall_time, user_seconds, overhead_seconds, stepped, *values = packer.unpack(body)
    offsets, offset = {}, 0
    for name, length in layers:
        offsets[name] = [offset, 8 * length]
        offset += 8 * length
    if offset != len(payload):
        raise ValueError(f"binary step {step}: {len(payload)} payload bytes for a layout of {offset}")
    return ({"op": "step", "step": step, "wall_time": wall_time, "user_seconds": user_seconds,
             "overhead_seconds": overhead_seconds, "optimizer_stepped": stepped, "scalars": dict(zip(names, values)),
             "layers": offsets, "histograms": {}}, payload)


def _parse(buffer: bytearray, pending: list[tuple[dict, bytes]], stop_at_flush: bool = True,
           layouts: dict | None = None) -> int:
    """Move the complete frames at the start of ``buffer`` into ``pending``; returns how many were flushes.

    A flush request is answered after everything sent before it is committed (by the caller), so frames after
    a flush are left in the buffer until then (unless not ``stop_at_flush``: committing more is harmless).
    A ``wake`` frame only wakes this process (the ring is full).
    """
    offset, flushes = 0, 0
    while len(buffer) - offset >= 8:
        header_length, payload_length = struct.unpack_from("<II", buffer, offset)
        end = offset + 8 + header_length + payload_length
        if end > len(buffer):
            break
        body = bytes(buffer[offset + 8:offset + 8 + header_length])
        if layouts is not None and body[:1] != b"{":
            _receive(body, bytes(buffer[end - payload_length:end]), pending, layouts)
            offset = end
            continue
        header = json.loads(body)
        offset = end
        if header["op"] == "flush":
            flushes += 1
            if stop_at_flush:
                break
            continue
        if header["op"] in ("wake", "layout"):
            if layouts is not None:
                _receive(body, b"", pending, layouts)
            continue
        pending.append((header, bytes(buffer[end - payload_length:end])))
    del buffer[:offset]
    return flushes


if __name__ == "__main__":
    busy = {int(c) for c in sys.argv[2].split(",") if c} if len(sys.argv) > 2 else set()
    sys.exit(main(sys.argv[1], busy, sys.argv[3] if len(sys.argv) > 3 and sys.argv[3] else None))
