"""A shared-memory ring of framed messages from the training process to the store's writer process.

Why: a pipe write is a system call, and a system call costs ≈ 20 µs on a virtual machine (measured here: 23 µs
for ``os.write`` of 400 bytes) — as much as 7 % of a whole training step of the digits MLP. Copying the same
frame into memory shared with the writer process costs ≈ 0.3 µs and wakes nobody; the writer process drains
the ring when it wakes anyway (every ``COMMIT_INTERVAL``). Durability is unchanged: the mapping belongs to
both processes, so if the training process is killed (even ``kill -9``) what it wrote stays readable by the
writer, which drains the ring to its end when the pipe (kept for flush requests and end-of-run) reaches EOF.

Standard library only: the writer process imports this file without the torch-importing package.

Layout: 64 header bytes (``uint64`` bytes written, ``uint64`` bytes consumed, ``uint8`` 1 if frames carry a
CRC), then ``capacity`` data bytes used circularly. A frame is ``uint32 body_length, uint32 payload_length,
uint32 crc`` then the body and the payload, possibly wrapping around the end. On a machine that may reorder
memory writes (ARM, POWER), the CRC-32 covers body and payload, seeded with the frame's position: a frame whose
bytes are not yet all visible (or stale bytes from an earlier lap) fails the check, and the reader tries again
at its next wake-up instead of reading garbage. x86 keeps stores in program order (and the frame's copy and the
position's store are separate C calls, which no compiler reorders), so there the CRC is 0 and not checked: it
cost 8 µs per step inside the MLP's training step. The writer (one thread of one process) and the reader (one
process) are the only parties.
"""

from __future__ import annotations

import mmap
import os
import platform
import struct
import tempfile
import zlib

_HEADER = 64
_POSITION = struct.Struct("<Q")
_FRAME = struct.Struct("<III")
#: default data capacity: ≈ 10 000 steps of default instruments, drained every 250 ms
CAPACITY = 4 << 20
#: whether this machine keeps stores in program order (total store order), so frames need no CRC
STORES_IN_ORDER = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686", "x86")


def _shared_memory_folder() -> str | None:
    """``/dev/shm`` where it exists (memory, never written to disk), else the system's temporary folder."""
    folder = "/dev/shm"
    return folder if os.path.isdir(folder) and os.access(folder, os.W_OK) else None


class Ring:
    """One end of the ring: :meth:`create` for the training process (writes), :meth:`attach` for the writer
    process (reads). Not thread-safe: one writing thread, one reading process."""

    def __init__(self, memory: mmap.mmap, path: str):
        self._memory = memory
        self.path = path
        self.capacity = len(memory) - _HEADER
        self._position = 0  # bytes written (writer end) or consumed (reader end) so far
        self.checked = bool(memory[16])  # frames carry a CRC (set by the writing end)

    @classmethod
    def create(cls, capacity: int = CAPACITY, checked: bool = not STORES_IN_ORDER) -> Ring:
        """A new ring in a fresh file (``/dev/shm`` if available); the reader unlinks it once attached.
        ``checked``: frames carry a CRC (needed where memory writes may become visible out of order)."""
        fd, path = tempfile.mkstemp(prefix="trainspect-ring-", dir=_shared_memory_folder())
        try:
            os.ftruncate(fd, _HEADER + capacity)
            if hasattr(os, "posix_fallocate"):
                # reserve the pages now: a full /dev/shm would otherwise surface as SIGBUS at a later write into
                # the mapping (killing the training); here it is an OSError, and the store uses the pipe instead
                os.posix_fallocate(fd, 0, _HEADER + capacity)
            memory = mmap.mmap(fd, _HEADER + capacity)
        except BaseException:
            os.close(fd)
            os.unlink(path)
            raise
        os.close(fd)
        memory[16] = int(checked)
        return cls(memory, path)

    @classmethod
    def attach(cls, path: str) -> Ring:
        """The reading end of the ring at ``path``; the file is unlinked (the mappings keep the memory)."""
        fd = os.open(path, os.O_RDWR)
        try:
            memory = mmap.mmap(fd, os.fstat(fd).st_size)
        finally:
            os.close(fd)
        try:
            os.unlink(path)
        except OSError:
            pass
        return cls(memory, path)

    # -- writing end --------------------------------------------------------------------------------------
    def fits(self, body: bytes, payload: bytes) -> bool:
        """Whether a frame of this size can ever go through the ring (else: send it another way)."""
        return _FRAME.size + len(body) + len(payload) <= self.capacity

    def has_room(self, body: bytes, payload: bytes = b"") -> bool:
        """Whether the frame fits into the space the reader has freed so far."""
        size = _FRAME.size + len(body) + len(payload)
        return self._position + size - _POSITION.unpack_from(self._memory, 8)[0] <= self.capacity

    def put(self, body: bytes, payload: bytes = b"") -> bool:
        """Append one frame; False (nothing written) if the ring has no room for it now."""
        data = body + payload if payload else body
        size = _FRAME.size + len(data)
        start = self._position
        memory = self._memory
        if start + size - _POSITION.unpack_from(memory, 8)[0] > self.capacity:
            return False
        crc = zlib.crc32(data, start & 0xFFFFFFFF) if self.checked else 0
        frame = _FRAME.pack(len(body), len(payload), crc) + data
        offset = start % self.capacity
        if offset + size <= self.capacity:
            memory[_HEADER + offset:_HEADER + offset + size] = frame
        else:
            self._write(start, frame)
        self._position = start + size
        # published after the frame: a reader never sees a position before the bytes it covers were written
        # (x86 keeps stores in order; elsewhere the CRC catches a frame not yet fully visible)
        _POSITION.pack_into(memory, 0, self._position)
        return True

    def put_packed(self, packer: struct.Struct, values: tuple, vectors: list) -> bool | None:
        """``put(packer.pack(*values), b"".join(bytes of vectors))`` written straight into the ring, with no
        intermediate bytes (each costs microseconds inside a training step). ``vectors``: C-contiguous buffers
        (float64 NumPy vectors). False if the ring has no room now; None where this shortcut does not apply (the
        frame carries a CRC or would wrap around the end): the caller then uses :meth:`put`."""
        if self.checked:
            return None
        payload_length = sum(v.nbytes for v in vectors)
        size = _FRAME.size + packer.size + payload_length
        start = self._position
        memory = self._memory
        if start + size - _POSITION.unpack_from(memory, 8)[0] > self.capacity:
            return False
        offset = start % self.capacity
        if offset + size > self.capacity:
            return None
        at = _HEADER + offset
        _FRAME.pack_into(memory, at, packer.size, payload_length, 0)
        packer.pack_into(memory, at + _FRAME.size, *values)
        at += _FRAME.size + packer.size
        for v in vectors:
            memory[at:at + v.nbytes] = v
            at += v.nbytes
        self._position = start + size
        _POSITION.pack_into(memory, 0, self._position)  # published after the frame, as in put
        return True

    def drained(self) -> bool:
        """Whether the reader has consumed every frame written so far."""
        return _POSITION.unpack_from(self._memory, 8)[0] == self._position

    # -- reading end ---------------------------------------------------------------------------------------
    def take(self) -> list[tuple[bytes, bytes]]:
        """Every complete, verified frame written since the last call, as ``(body, payload)``, oldest first."""
        written = _POSITION.unpack_from(self._memory, 0)[0]
        position = self._position
        frames = []
        while written - position >= _FRAME.size:
            body_length, payload_length, crc = _FRAME.unpack(self._read(position, _FRAME.size))
            size = _FRAME.size + body_length + payload_length
            if size > written - position:
                break  # a length not yet visible (reordered writes): retry at the next wake-up
            data = self._read(position + _FRAME.size, body_length + payload_length)
            if self.checked and zlib.crc32(data, position & 0xFFFFFFFF) != crc:
                break
            frames.append((data[:body_length], data[body_length:]))
            position += size
        if position != self._position:
            self._position = position
            _POSITION.pack_into(self._memory, 8, position)
        return frames

    def pending(self) -> int:
        """Bytes written but not taken (a frame the CRC still refuses counts here)."""
        return _POSITION.unpack_from(self._memory, 0)[0] - self._position

    # -- circular copies --------------------------------------------------------------------------------------
    def _write(self, position: int, data: bytes) -> None:
        offset = position % self.capacity
        first = min(len(data), self.capacity - offset)
        self._memory[_HEADER + offset:_HEADER + offset + first] = data[:first]
        if first < len(data):
            self._memory[_HEADER:_HEADER + len(data) - first] = data[first:]

    def _read(self, position: int, size: int) -> bytes:
        offset = position % self.capacity
        first = min(size, self.capacity - offset)
        data = self._memory[_HEADER + offset:_HEADER + offset + first]
        if first < size:
            data += self._memory[_HEADER:_HEADER + size - first]
        return data

    def close(self) -> None:
        self._memory.close()
