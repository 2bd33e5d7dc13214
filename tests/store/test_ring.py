"""The shared-memory ring between the training process and the store's writer process: frames in order across
wrap-arounds, a full ring, frames too large for it, and frames whose bytes are not (yet) what was written."""

from __future__ import annotations

import numpy as np
import pytest

from trainspect.engine.record import HistogramValue, StepRecord
from trainspect.engine.values import SeriesInfo
from trainspect.store import StoreWriter, open_run
from trainspect.store._ring import Ring


@pytest.fixture(params=[True, False], ids=["crc", "no-crc"])
def ring_pair(request):
    writer = Ring.create(capacity=256, checked=request.param)
    reader = Ring.attach(writer.path)
    assert reader.checked is request.param
    yield writer, reader
    writer.close()
    reader.close()


def test_frames_arrive_in_order_across_wrap_arounds(ring_pair):
    writer, reader = ring_pair
    rng = np.random.default_rng(0)
    sent, received = [], []
    for i in range(300):
        frame = (f"body {i}".encode() * int(rng.integers(1, 6)), bytes(rng.integers(0, 256, int(rng.integers(0, 40)),
                                                                                    dtype=np.uint8)))
        if not writer.put(*frame):  # full: the reader drains, then there is room
            assert not writer.has_room(*frame)
            received += reader.take()
            assert writer.put(*frame)
        sent.append(frame)
    received += reader.take()
    assert received == sent and writer.drained() and reader.pending() == 0


def test_packed_frames_equal_put_frames_across_wrap_arounds(ring_pair):
    """``put_packed`` writes the bytes ``put`` would (header struct + vectors); where it cannot (CRC, a frame that
    would wrap around the end) it says so with None and writes nothing, and a full ring refuses with False."""
    import struct

    writer, reader = ring_pair
    rng = np.random.default_rng(1)
    packer = struct.Struct("<BId")
    sent, received, shortcut = [], [], 0
    for i in range(300):
        values = (66, i, float(rng.normal()))
        vectors = [rng.normal(size=int(rng.integers(0, 4))) for _ in range(int(rng.integers(0, 3)))]
        frame = (packer.pack(*values), b"".join(v.tobytes() for v in vectors))
        before = writer._position
        written = writer.put_packed(packer, values, vectors)
        if written is False:
            assert not writer.has_room(*frame) and writer._position == before
            received += reader.take()
            written = writer.put_packed(packer, values, vectors)
        if written is None:
            assert writer._position == before
            if not writer.put(*frame):
                received += reader.take()
                assert writer.put(*frame)
        else:
            shortcut += 1
        sent.append(frame)
    received += reader.take()
    assert received == sent
    assert (shortcut == 0) if writer.checked else (shortcut > 200)  # most frames do not wrap


def test_a_full_ring_refuses_without_writing(ring_pair):
    writer, reader = ring_pair
    frame = (b"x" * 100, b"")
    assert writer.put(*frame) and writer.put(*frame)
    assert not writer.has_room(*frame) and not writer.put(*frame)
    assert reader.take() == [frame, frame]
    assert writer.drained() and writer.put(*frame)
    assert not writer.fits(b"x" * 300, b"")


def test_a_frame_that_fails_its_check_is_left_for_later():
    """Bytes not yet visible to the reader (or stale from an earlier lap) must not be read as a frame (where
    memory writes may become visible out of order, the frames carry a CRC)."""
    writer = Ring.create(capacity=256, checked=True)
    reader = Ring.attach(writer.path)
    assert writer.put(b"first", b"") and writer.put(b"second", b"")
    memory = writer._memory
    offset = 64 + 12 + len(b"first") + 12  # the second frame's body
    original = memory[offset]
    memory[offset] = original ^ 0xFF
    assert reader.take() == [(b"first", b"")]
    assert reader.pending() > 0
    memory[offset] = original  # now visible as written
    assert reader.take() == [(b"second", b"")]
    writer.close()
    reader.close()


def test_store_through_a_small_ring_keeps_every_step(tmp_path, monkeypatch):
    """A ring of 4 KiB fills up every few steps (the writer process is woken and drained), and a histogram too
    large for it goes through the pipe: every step arrives, in order, with its values (binary frames for the
    steps of scalars and vectors, in several layouts)."""
    create = Ring.create
    monkeypatch.setattr(Ring, "create", classmethod(lambda cls, capacity=0, checked=True: create(capacity=4096)))
    writer = StoreWriter(tmp_path / "run")
    assert writer._ring is not None and writer._ring.capacity == 4096
    sent = []
    send_binary = writer._send_binary_step
    monkeypatch.setattr(writer, "_send_binary_step", lambda record: sent.append(record.step) or send_binary(record))
    writer.open({"name": "t"}, [{"name": "w", "module": "fc", "module_class": "Linear", "shape": [2], "numel": 2}])
    big = np.arange(2000.0)  # 16 kB of counts
    for step in range(200):
        writer.write_step(StepRecord(
            step, 1000.0 + step, 0.01, 0.001, step % 3 > 0,
            scalars={"loss": float(step),
                     **({"odd": [float("nan"), float("inf"), -1.5][step % 3]} if step % 2 else {})},
            layers={"layer_x": np.array([step, -step], dtype=float)},
            histograms={"h": HistogramValue(big * step, np.arange(2001.0))} if step % 50 == 7 else {},
            new_series=[("i", SeriesInfo("loss")), ("i", SeriesInfo("layer_x", "layers")),
                        ("i", SeriesInfo("h", "histogram")), ("i", SeriesInfo("odd"))] if step == 0 else [],
        ))
    writer.flush()
    assert len(sent) == 200 - 1 - 4 and len(writer._layouts) == 2
    with open_run(tmp_path / "run") as run:  # flushed: everything sent is committed, the run still open
        assert run.last_step == 199
    writer.close()
    with open_run(tmp_path / "run") as run:
        steps, loss = run.scalar("loss")
        np.testing.assert_array_equal(steps, np.arange(200))
        np.testing.assert_array_equal(loss, np.arange(200.0))
        odd_steps, odd = run.scalar("odd")  # NaN/inf as raw float64 in binary frames (NaN is stored as NULL)
        np.testing.assert_array_equal(odd_steps, np.arange(1, 200, 2))
        np.testing.assert_array_equal(odd, [[np.nan, np.inf, -1.5][s % 3] for s in range(1, 200, 2)])
        np.testing.assert_array_equal(run.steps()["optimizer_stepped"], np.arange(200) % 3 > 0)
        np.testing.assert_array_equal(run.series("layer_x").values[:, 1], -np.arange(200.0))
        histograms = run.histograms("h")
        assert list(histograms.steps) == [7, 57, 107, 157]
        np.testing.assert_array_equal(histograms.counts[1], big * 57)


def test_without_shared_memory_every_frame_goes_through_the_pipe(tmp_path, monkeypatch):
    """No room in /dev/shm (creating the ring fails): the store falls back to the pipe, nothing is lost."""
    def no_room(cls, capacity=0, checked=True):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Ring, "create", classmethod(no_room))
    writer = StoreWriter(tmp_path / "run")
    assert writer._ring is None
    writer.open({"name": "t"}, [{"name": "w", "module": "fc", "module_class": "Linear", "shape": [2], "numel": 2}])
    for step in range(30):
        writer.write_step(StepRecord(step, 1000.0 + step, 0.01, 0.001, True, scalars={"loss": float(step)},
                                     new_series=[("i", SeriesInfo("loss"))] if step == 0 else []))
    writer.close()
    with open_run(tmp_path / "run") as run:
        np.testing.assert_array_equal(run.scalar("loss")[1], np.arange(30.0))
