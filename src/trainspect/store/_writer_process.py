"""The run store's writer process: reads framed messages on stdin and commits them to SQLite.

Started by :class:`trainspect.store.writer.StoreWriter` as ``python -S _writer_process.py DB``. It imports only
the standard library (this file's folder is put on ``sys.path``, not the torch-importing package), so it
starts in a few milliseconds. Whatever arrived while it was committing is committed together in the next
transaction (whole messages only), so it keeps up with any step rate. When the training process ends, even
by ``kill -9``, stdin reaches EOF and everything already sent is committed.

Frame: ``uint32 header_length, uint32 payload_length`` (little-endian), JSON header, payload bytes.
A header ``{"op": "flush"}`` is answered with one newline on stdout once everything before it is committed
(``E`` and a newline if some message failed).
"""

from __future__ import annotations

import json
import os
import signal
import struct
import sys
import traceback


def main(db: str) -> int:
    # Ctrl-C in the terminal reaches the whole process group: the training process decides when we stop
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from _sql import SqlWriter, connect

    writer = SqlWriter(connect(db, create=False))
    fd = sys.stdin.fileno()
    sink = sys.stdout.buffer
    buffer = bytearray()
    failed = False
    try:
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            buffer += chunk
            messages, flushes, offset = [], 0, 0
            while len(buffer) - offset >= 8:
                header_length, payload_length = struct.unpack_from("<II", buffer, offset)
                end = offset + 8 + header_length + payload_length
                if end > len(buffer):
                    break
                header = json.loads(bytes(buffer[offset + 8:offset + 8 + header_length]))
                if header["op"] == "flush":
                    flushes += 1
                else:
                    messages.append((header, bytes(buffer[offset + 8 + header_length:end])))
                offset = end
            del buffer[:offset]
            if messages:
                try:
                    errors = writer.apply(messages)
                except Exception:
                    errors = [RuntimeError("transaction failed")]
                    traceback.print_exc()
                for error in errors:
                    failed = True
                    print(f"trainspect store writer: {type(error).__name__}: {error}", file=sys.stderr)
                sys.stderr.flush()
            for _ in range(flushes):
                sink.write(b"E\n" if failed else b"\n")
                sink.flush()
    finally:
        writer.close()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
