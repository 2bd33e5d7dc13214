"""The engine and the cheap instruments, each against a value computed independently in the test."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import trainspect
from tests.conftest import batches, tiny_mlp, train
from trainspect import Instrument, SeriesInfo
from trainspect.store import StoreError, open_run

OPTIMIZERS = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.1),
    "sgd-momentum": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-3),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
}


def _norm(ts):
    return math.sqrt(sum(float(t.double().square().sum()) for t in ts))


@pytest.mark.parametrize("optimizer_name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_cheap_instruments_match_independent_computation(run_dir, optimizer_name, reduction):
    model = tiny_mlp(dtype=torch.float64)
    initial = [p.detach().clone() for p in model.parameters()]
    optimizer = OPTIMIZERS[optimizer_name](model.parameters())
    loss_fn = nn.CrossEntropyLoss(reduction=reduction)
    inspector = trainspect.attach(model, optimizer, loss_fn, run_dir=run_dir, instruments="cheap", progress=False)
    expected: dict[str, list] = {k: [] for k in ("loss", "grad_norm", "layer_grad_norm", "param_norm", "update_size",
                                                 "layer_update_size", "distance", "update_to_weight",
                                                 "layer_update_to_weight", "lr")}
    data = batches(6, dtype=torch.float64)
    for x, y in data:
        optimizer.zero_grad()
        before = [p.detach().clone() for p in model.parameters()]
        with inspector.step(x, y):
            loss = loss_fn(model(x), y)
            loss.backward()
        grads = [p.grad.detach().clone() for p in model.parameters()]
        optimizer.step()
        after = [p.detach().clone() for p in model.parameters()]
        deltas = [a - b for a, b in zip(after, before)]
        expected["loss"].append(loss.item())
        expected["grad_norm"].append(_norm(grads))
        expected["layer_grad_norm"].append([_norm([g]) for g in grads])
        expected["param_norm"].append(_norm(before))
        expected["update_size"].append(_norm(deltas))
        expected["layer_update_size"].append([_norm([d]) for d in deltas])
        expected["distance"].append(_norm([b - i for b, i in zip(before, initial)]))
        expected["update_to_weight"].append(_norm(deltas) / _norm(before))
        expected["layer_update_to_weight"].append([_norm([d]) / _norm([b]) for d, b in zip(deltas, before)])
        expected["lr"].append(optimizer.param_groups[0]["lr"])
    inspector.close()
    with open_run(run_dir) as run:
        for name, values in expected.items():
            series = run.series(name)
            np.testing.assert_array_equal(series.steps, np.arange(len(data)))
            np.testing.assert_allclose(series.values, np.array(values), rtol=1e-10, err_msg=name)
        assert run.meta["loss_reduction"] == reduction
        assert run.meta["optimizer"] == type(optimizer).__name__
        assert list(run.scalar("nonfinite_grads")[1]) == [0.0] * len(data)


def test_default_schedules_record_per_layer_values_every_tenth_step(run_dir):
    model = tiny_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_fn = nn.CrossEntropyLoss()
    inspector = trainspect.attach(model, optimizer, loss_fn, run_dir=run_dir, progress=False)
    train(inspector, model, optimizer, loss_fn, batches(23))
    inspector.close()
    with open_run(run_dir) as run:
        assert list(run.series("loss").steps) == list(range(23))
        assert list(run.series("layer_update_size").steps) == [0, 10, 20]
        assert run.series("layer_grad_norm").values.shape == (23, 4)
        assert run.layer_names == ["0.weight", "0.bias", "2.weight", "2.bias"]
        assert [l["module_class"] for l in run.layers()] == ["Linear"] * 4


def test_frozen_parameters_are_skipped_not_an_error(run_dir):
    model = tiny_mlp()
    model[0].weight.requires_grad_(False)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    loss_fn = nn.CrossEntropyLoss()
    inspector = trainspect.attach(model, optimizer, loss_fn, run_dir=run_dir, instruments="cheap", progress=False)
    train(inspector, model, optimizer, loss_fn, batches(3))
    inspector.close()
    with open_run(run_dir) as run:
        assert run.layer_names == ["0.bias", "2.weight", "2.bias"]
        assert run.series("layer_update_size").values.shape == (3, 3)
        assert not run.errors()


class Exploding(Instrument):
    name = "test_exploding"
    series = (SeriesInfo("test_exploding_value"),)

    def __init__(self, schedule=None):
        super().__init__(schedule)
        self.calls = 0

    def compute(self, ctx):
        self.calls += 1
        if ctx.step == 2:
            raise ZeroDivisionError("boom at step 2")
        return {"test_exploding_value": float(ctx.step)}


def test_failing_instrument_is_recorded_once_disabled_and_training_continues(run_dir):
    model = tiny_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    exploding = Exploding()
    loss_fn = nn.CrossEntropyLoss()
    inspector = trainspect.attach(model, optimizer, loss_fn, run_dir=run_dir,
                                  instruments=["loss", "grad_norm", exploding], progress=False)
    with pytest.warns(RuntimeWarning, match="test_exploding"):
        train(inspector, model, optimizer, loss_fn, batches(6))
    inspector.close()
    assert exploding.calls == 3  # steps 0, 1, 2; then disabled
    with open_run(run_dir) as run:
        errors = run.errors()
        assert len(errors) == 1
        assert errors[0]["source"] == "instrument:test_exploding" and errors[0]["step"] == 2
        assert "ZeroDivisionError: boom at step 2" in errors[0]["message"]
        assert "Traceback" in errors[0]["traceback"]
        assert list(run.series("test_exploding_value").steps) == [0, 1]
        assert list(run.series("loss").steps) == list(range(6))  # the others go on


def test_failing_sink_is_recorded_dropped_and_training_continues(run_dir):
    from trainspect.engine.record import Sink

    class BrokenSink(Sink):
        def __init__(self):
            self.steps = []

        def write_step(self, record):
            self.steps.append(record.step)
            if record.step == 1:
                raise OSError("disk full")

    model = tiny_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_fn = nn.CrossEntropyLoss()
    broken = BrokenSink()
    inspector = trainspect.attach(model, optimizer, loss_fn, run_dir=run_dir, instruments=["loss"], checks=None,
                                  progress=False, sinks=[broken])
    with pytest.warns(RuntimeWarning, match="BrokenSink"):
        train(inspector, model, optimizer, loss_fn, batches(4))
    inspector.close()
    assert broken.steps == [0, 1]  # dropped after it failed
    assert [e["source"] for e in inspector.errors] == ["sink:BrokenSink"]
    assert "OSError: disk full" in inspector.errors[0]["message"]
    assert "write_step" in inspector.errors[0]["traceback"]  # the sink's own frame, not only the engine's
    with open_run(run_dir) as run:
        assert list(run.series("loss").steps) == list(range(4))  # the store goes on


def test_instrument_returning_wrong_layer_count_is_an_error_not_a_silent_value(run_dir):
    class WrongLength(Instrument):
        name = "test_wrong_length"
        series = (SeriesInfo("layer_wrong", "layers"),)

        def compute(self, ctx):
            return {"layer_wrong": torch.ones(2)}

    model = tiny_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_fn = nn.CrossEntropyLoss()
    inspector = trainspect.attach(model, optimizer, loss_fn, run_dir=run_dir,
                                  instruments=["loss", WrongLength()], progress=False)
    with pytest.warns(RuntimeWarning, match="one per tracked parameter"):
        train(inspector, model, optimizer, loss_fn, batches(2))
    inspector.close()


def test_nonfinite_counts_are_exact(run_dir):
    model = tiny_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_fn = nn.CrossEntropyLoss()
    inspector = trainspect.attach(model, optimizer, loss_fn, run_dir=run_dir, instruments="cheap", progress=False)

    for i, (x, y) in enumerate(batches(4)):
        optimizer.zero_grad()
        with inspector.step(x, y):
            loss_fn(model(x), y).backward()
            if i == 2:
                model[2].weight.grad[0, :3] = float("nan")
                model[2].bias.grad[1] = float("inf")
        optimizer.step()
    inspector.close()
    with open_run(run_dir) as run:
        assert list(run.scalar("nonfinite_grads")[1]) == [0, 0, 4, 66]
        # step 3: the loss and all
        # 5*7+7 + 7*3+3 = 66 gradient entries are NaN
        assert list(run.scalar("nonfinite_params")[1]) == [0, 0, 0, 4]  # plain SGD: only the 4 poisoned entries
        assert list(run.scalar("nonfinite_loss")[1]) == [0, 0, 0, 1]


def test_optimizer_step_inside_the_block_and_skipped_steps(run_dir):
    model = tiny_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_fn = nn.CrossEntropyLoss()
    inspector = trainspect.attach(model, optimizer, loss_fn, run_dir=run_dir, instruments="cheap", progress=False)
    sizes = []
    for i, (x, y) in enumerate(batches(4)):
        with inspector.step(x, y):
            optimizer.zero_grad()
            loss_fn(model(x), y).backward()
            before = [p.detach().clone() for p in model.parameters()]
            if i != 2:  # step 2: e.g. GradScaler found inf and skipped the update
                optimizer.step()
            sizes.append(_norm([p.detach() - b for p, b in zip(model.parameters(), before)]))
    inspector.close()
    with open_run(run_dir) as run:
        steps, values = run.scalar("update_size")
        assert list(steps) == [0, 1, 3]
        np.testing.assert_allclose(values, [sizes[0], sizes[1], sizes[3]], rtol=1e-6)
        assert list(run.steps()["optimizer_stepped"]) == [1, 1, 0, 1]
        assert list(run.series("loss").steps) == [0, 1, 2, 3]
        assert not run.errors()


def test_functional_loss_via_step_loss_and_via_inspector_loss_fn(run_dir, tmp_path):
    model = tiny_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    inspector = trainspect.attach(model, optimizer, torch.nn.functional.cross_entropy, run_dir=run_dir,
                                  instruments=["loss"], progress=False)
    seen = []
    for i, (x, y) in enumerate(batches(4)):
        optimizer.zero_grad()
        with inspector.step(x, y) as step:
            if i % 2:
                loss = torch.nn.functional.cross_entropy(model(x), y)
                step.loss = loss
            else:
                loss = inspector.loss_fn(model(x), y)
            loss.backward()
        optimizer.step()
        seen.append(loss.item())
    inspector.close()
    with open_run(run_dir) as run:
        np.testing.assert_allclose(run.scalar("loss")[1], seen, rtol=1e-6)


def test_training_without_optimizer_hooks_records_the_gradient_phase(run_dir):
    model = tiny_mlp()
    loss_fn = nn.CrossEntropyLoss()
    inspector = trainspect.attach(model, None, loss_fn, run_dir=run_dir, instruments="cheap", progress=False)
    for x, y in batches(3):
        model.zero_grad()
        with inspector.step(x, y):
            loss_fn(model(x), y).backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.1 * p.grad
    inspector.close()
    with open_run(run_dir) as run:
        assert len(run.series("grad_norm")) == 3
        assert "update_size" not in run.series_names()
        assert not run.errors()


def test_user_exception_inside_the_step_propagates_and_drops_the_step(run_dir):
    model = tiny_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_fn = nn.CrossEntropyLoss()
    inspector = trainspect.attach(model, optimizer, loss_fn, run_dir=run_dir, progress=False)
    x, y = batches(1)[0]
    with pytest.raises(KeyError, match="user bug"), inspector.step(x, y):
        raise KeyError("user bug")
    train(inspector, model, optimizer, loss_fn, batches(2))
    inspector.close()
    with open_run(run_dir) as run:
        assert list(run.series("loss").steps) == [0, 1]


def test_log_user_metrics(run_dir):
    model = tiny_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_fn = nn.CrossEntropyLoss()
    inspector = trainspect.attach(model, optimizer, loss_fn, run_dir=run_dir, progress=False)
    train(inspector, model, optimizer, loss_fn, batches(3))
    inspector.log(val_accuracy=0.25, val_loss=float("nan"))
    inspector.close()
    with open_run(run_dir) as run:
        assert list(run.series("val_accuracy").steps) == [2]
        assert math.isnan(run.scalar("val_loss")[1][0])
        assert run.series_info()["val_accuracy"]["instrument"] == "user"


# -- bad input ----------------------------------------------------------------------------------------------
def test_model_without_trainable_parameters(run_dir):
    model = tiny_mlp().requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        trainspect.attach(model, None, nn.MSELoss(), run_dir=run_dir)


def test_loss_that_is_not_a_scalar(run_dir):
    model = tiny_mlp()
    loss_fn = nn.CrossEntropyLoss(reduction="none")
    with pytest.raises(ValueError, match="reduction='none'"):
        trainspect.attach(model, None, loss_fn, run_dir=run_dir)
    inspector = trainspect.attach(model, None, torch.nn.functional.cross_entropy, run_dir=run_dir, progress=False)
    x, y = batches(1)[0]
    with pytest.raises(ValueError, match="must be a scalar tensor, got shape \\(8,\\)"), inspector.step(x, y) as s:
        s.loss = torch.nn.functional.cross_entropy(model(x), y, reduction="none")
    inspector.close()


def test_unknown_names_and_bad_schedules(run_dir):
    model = tiny_mlp()
    with pytest.raises(ValueError, match="unknown instrument configuration 'economi'"):
        trainspect.attach(model, None, nn.MSELoss(), run_dir=run_dir, instruments="economi")
    with pytest.raises(ValueError, match="unknown instrument 'grad_nrom'.*grad_norm"):
        trainspect.attach(model, None, nn.MSELoss(), run_dir=run_dir, instruments=["grad_nrom"])
    with pytest.raises(TypeError, match="positive integer interval or a callable"):
        trainspect.attach(model, None, nn.MSELoss(), run_dir=run_dir, instruments={"loss": "often"})
    with pytest.raises(ValueError, match="positive integer"):
        trainspect.attach(model, None, nn.MSELoss(), run_dir=run_dir, schedule=0)
    with pytest.raises(TypeError, match="torch.nn.Module"):
        trainspect.attach(lambda x: x, None, nn.MSELoss(), run_dir=run_dir)


def test_run_folder_not_writable_or_taken(tmp_path):
    model = tiny_mlp()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError, match="is a file"):
        trainspect.attach(model, None, nn.MSELoss(), run_dir=blocker)
    with pytest.raises(StoreError, match="cannot create run folder|not writable"):
        trainspect.attach(model, None, nn.MSELoss(), run_dir=blocker / "sub")
    trainspect.attach(model, None, nn.MSELoss(), run_dir=tmp_path / "r", progress=False).close()
    with pytest.raises(StoreError, match="already holds a run; pass overwrite=True"):
        trainspect.attach(model, None, nn.MSELoss(), run_dir=tmp_path / "r")
    trainspect.attach(model, None, nn.MSELoss(), run_dir=tmp_path / "r", overwrite=True, progress=False).close()


def test_loss_is_found_when_the_loop_uses_another_loss_instance(run_dir):
    model = tiny_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    inspector = trainspect.attach(model, optimizer, nn.CrossEntropyLoss(), run_dir=run_dir, instruments=["loss"],
                                  progress=False)
    criterion = nn.CrossEntropyLoss()
    seen = []

    def remember(i):
        seen.append(criterion(model(data[i][0]), data[i][1]).item())

    data = batches(3)
    train(inspector, model, optimizer, criterion, data, on_step=remember)
    inspector.close()
    with open_run(run_dir) as run:
        np.testing.assert_allclose(run.scalar("loss")[1], seen, rtol=1e-6)
        assert not run.errors()


def test_periodic_schedules_are_followed_and_a_replaced_schedule_takes_effect(run_dir):
    """The engine caches the due set of every(n) schedules per phase of lcm(n): the recorded steps are exactly
    those the schedules say, with offsets, and replacing a schedule mid-run takes effect at once."""
    from trainspect.engine.schedules import every

    model = tiny_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_fn = nn.CrossEntropyLoss()
    inspector = trainspect.attach(model, optimizer, loss_fn, run_dir=run_dir, checks=None, progress=False,
                                  instruments={"loss": 1, "param_norm": 3, "grad_norm": every(4, offset=2)})
    data = batches(30)
    train(inspector, model, optimizer, loss_fn, data[:14])
    next(i for i in inspector.instruments if i.name == "param_norm").schedule = every(5, offset=1)
    train(inspector, model, optimizer, loss_fn, data[14:])
    inspector.close()
    with open_run(run_dir) as run:
        assert list(run.series("loss").steps) == list(range(30))
        assert list(run.series("grad_norm").steps) == [s for s in range(30) if s >= 2 and (s - 2) % 4 == 0]
        expected = [s for s in range(14) if s % 3 == 0] + [s for s in range(14, 30) if (s - 1) % 5 == 0]
        assert list(run.series("param_norm").steps) == expected


def test_composed_periodic_schedules_are_looked_up_exactly(run_dir):
    """first(k) | every(n) (the probes' defaults) is periodic too: the cached due sets give exactly the steps the
    schedules say, across the start (the largest k) and several periods, and the cache is in use."""
    from trainspect.engine.schedules import every, first

    model = tiny_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_fn = nn.CrossEntropyLoss()
    schedules = {"loss": first(3) | every(4), "grad_norm": first(7) | every(6, offset=1), "param_norm": 5}
    inspector = trainspect.attach(model, optimizer, loss_fn, run_dir=run_dir, checks=None, progress=False,
                                  instruments=schedules)
    train(inspector, model, optimizer, loss_fn, batches(40))
    _, period, start, phases = inspector._due_cache
    assert (period, start) == (60, 7) and phases
    inspector.close()
    with open_run(run_dir) as run:
        for name, series in (("loss", "loss"), ("grad_norm", "grad_norm"), ("param_norm", "param_norm")):
            schedule = trainspect.engine.schedules.as_schedule(schedules[name])
            assert list(run.series(series).steps) == [s for s in range(40) if schedule(s)], name


def _findings_of_a_diverging_run(run_dir, batch: int, *, read_midway: bool = False):
    """A run whose learning rate makes the loss diverge (loss-curve, gradient-scale and update checks fire), with
    the deferrable checks observing `batch` steps at a time."""
    model = tiny_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=3.0, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    inspector = trainspect.attach(model, optimizer, loss_fn, run_dir=run_dir, progress=False)
    inspector.CHECK_BATCH = batch
    data = batches(80, seed=3)
    train(inspector, model, optimizer, loss_fn, data[:50])
    midway = (sorted((f.code, f.location, f.first_step, f.last_step) for f in inspector.findings)
              if read_midway else None)
    train(inspector, model, optimizer, loss_fn, data[50:])
    inspector.close()
    final = sorted((f.code, f.location, f.first_step, f.last_step, f.count) for f in inspector.findings)
    with open_run(run_dir) as run:
        stored = sorted((f["code"], f["location"], f["first_step"], f["last_step"], f["count"]) for f in run.findings())
    return midway, final, stored, inspector.errors


def test_deferred_checks_find_exactly_what_checks_at_every_step_find(tmp_path):
    """The deferrable checks, handed 16 steps at a time, give the same findings (codes, places, first and last
    steps, counts) as when they observe every step at once; reading ``findings`` midway sees every finished step."""
    _, every_step, stored_every_step, errors = _findings_of_a_diverging_run(tmp_path / "a", 1)
    assert not errors and every_step == stored_every_step
    deferred_codes = {c for c in trainspect.checks.CHECKS.values() if c.deferrable for c in c.codes}
    assert {f[0] for f in every_step} & deferred_codes, "the scenario must exercise deferrable checks"
    midway, batched, stored_batched, errors = _findings_of_a_diverging_run(tmp_path / "b", 16, read_midway=True)
    assert not errors
    assert batched == every_step and stored_batched == stored_every_step
    # at step 50, midway: everything observed up to step 49, though 50 is not a multiple of 16
    midway_every_step, _, _, _ = _findings_of_a_diverging_run(tmp_path / "c", 1, read_midway=True)
    assert midway == midway_every_step


def test_a_non_finite_loss_hands_the_waiting_steps_to_the_checks_at_once(run_dir):
    model = tiny_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_fn = nn.CrossEntropyLoss()
    inspector = trainspect.attach(model, optimizer, loss_fn, run_dir=run_dir, progress=False)
    data = batches(5)
    train(inspector, model, optimizer, loss_fn, data[:3])
    assert len(inspector._deferred) == 3
    x, y = data[3]
    optimizer.zero_grad()
    with inspector.step(x * float("nan"), y):
        loss_fn(model(x * float("nan")), y).backward()
    optimizer.step()
    assert inspector._deferred == []
    inspector.close()


def test_a_deferrable_check_reading_live_step_data_fails_loudly(run_dir):
    """A check declared deferrable that reads what only the live step has (the model's output) is disabled with
    an error naming it: it is never fed another step's data."""
    from trainspect.checks import Check

    class LiveReader(Check):
        deferrable = True

        def observe(self, record, ctx):
            self.seen = ctx.model_output
            return []

    LiveReader.name = "live_reader_test"
    model = tiny_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_fn = nn.CrossEntropyLoss()
    inspector = trainspect.attach(model, optimizer, loss_fn, run_dir=run_dir, progress=False, checks=[LiveReader()])
    with pytest.warns(RuntimeWarning, match="live_reader_test"):
        train(inspector, model, optimizer, loss_fn, batches(20))
        inspector.close()
    (error,) = inspector.errors
    assert error["source"] == "check:live_reader_test" and "model_output" in error["message"]
