"""The run store's writer process: reads framed messages on stdin and commits them to SQLite.

Started by :class:`trainspect.store.writer.StoreWriter` as ``python -S _writer_process.py DB``. It imports only
the standard library (this file's folder is put on ``sys.path``, not the torch-importing package), so it
starts in a few milliseconds. Messages are committed in groups: whatever arrived within ``COMMIT_INTERVAL``
(50 ms) of the first uncommitted message goes into one transaction (whole messages only), so a fast training
loop costs this process one commit per interval, not one per step, and it keeps up with any step rate. Readers
see a step at most that long after it was sent. Durability does not depend on the interval: when the training
process ends, even by ``kill -9``, stdin reaches EOF and everything already sent is committed.

It runs on any core the machine allows, not only on the core the training process's main thread was pinned to
(``OMP_PROC_BIND`` pins torch's main thread, and a child inherits that thread's affinity), so it never
competes with the training loop for one core while another has time to spare.

Frame: ``uint32 header_length, uint32 payload_length`` (little-endian), JSON header, payload bytes.
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

#: seconds a message may wait before its transaction is committed
COMMIT_INTERVAL = 0.05


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


def main(db: str, busy: set[int] | None = None) -> int:
    # Ctrl-C in the terminal reaches the whole process group: the training process decides when we stop
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from _sql import SqlWriter, connect

    _move_off(busy or set())
    writer = SqlWriter(connect(db, create=False))
    fd = sys.stdin.fileno()
    sink = sys.stdout.buffer
    buffer = bytearray()
    pending: list[tuple[dict, bytes]] = []
    failed = False
    eof = False

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

    try:
        while True:
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
            for _ in range(flushes):
                sink.write(b"E\n" if failed else b"\n")
                sink.flush()
        commit()
    finally:
        writer.close()
    return 1 if failed else 0


def _complete_frame(buffer: bytearray) -> bool:
    """Whether ``buffer`` starts with a whole frame."""
    if len(buffer) < 8:
        return False
    header_length, payload_length = struct.unpack_from("<II", buffer, 0)
    return len(buffer) >= 8 + header_length + payload_length


def _parse(buffer: bytearray, pending: list[tuple[dict, bytes]]) -> int:
    """Move the complete frames at the start of ``buffer`` into ``pending``; returns how many were flushes.

    A flush request is answered after everything sent before it is committed (by the caller), so frames after
    a flush are left in the buffer until then.
    """
    offset, flushes = 0, 0
    while len(buffer) - offset >= 8:
        header_length, payload_length = struct.unpack_from("<II", buffer, offset)
        end = offset + 8 + header_length + payload_length
        if end > len(buffer):
            break
        header = json.loads(bytes(buffer[offset + 8:offset + 8 + header_length]))
        offset = end
        if header["op"] == "flush":
            flushes += 1
            break
        pending.append((header, bytes(buffer[end - payload_length:end])))
    del buffer[:offset]
    return flushes


if __name__ == "__main__":
    busy = {int(c) for c in sys.argv[2].split(",") if c} if len(sys.argv) > 2 else set()
    sys.exit(main(sys.argv[1], busy))
