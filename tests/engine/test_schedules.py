import pytest

from trainspect.engine.schedules import as_schedule, every, first, logarithmic


def test_every_with_offset():
    s = every(3, offset=2)
    assert [t for t in range(12) if s(t)] == [2, 5, 8, 11]


def test_logarithmic_is_dense_early_and_sparse_late():
    s = logarithmic(per_decade=4)
    due = [t for t in range(10_001) if s(t)]
    assert due[:4] == [0, 1, 2, 3]
    assert 10 in due and 100 in due and 1000 in due and 10_000 in due
    assert len([t for t in due if 1000 <= t < 10_000]) == 4


def test_union_and_first():
    s = first(3) | every(10)
    assert [t for t in range(25) if s(t)] == [0, 1, 2, 10, 20]


def test_custom_callable_and_int():
    assert as_schedule(lambda t: t == 7)(7) and not as_schedule(lambda t: t == 7)(6)
    assert as_schedule(4)(8) and not as_schedule(4)(9)


@pytest.mark.parametrize("bad", [0, -2, True, "often", 1.5, None])
def test_bad_schedules_are_rejected_clearly(bad):
    with pytest.raises((TypeError, ValueError), match="schedule|interval"):
        as_schedule(bad)


@pytest.mark.parametrize("schedule", [
    "every(7, 3)", "first(4)", "first(4) | every(6)", "every(4, 2) | every(6, 1) | first(9)",
])
def test_periodicity_is_what_the_schedule_does(schedule):
    """(period, start): from `start` on, the schedule repeats with `period` (checked over several periods)."""
    s = eval(schedule, {"every": every, "first": first})
    period, start = s.periodicity()
    assert all(s(step) == s(step + period) for step in range(start, start + 5 * period + 3))


def test_schedules_without_a_known_period_say_so():
    assert logarithmic().periodicity() is None
    assert (every(3) | logarithmic()).periodicity() is None
    assert as_schedule(lambda step: step % 2 == 0).periodicity() is None
