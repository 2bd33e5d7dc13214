"""The samples view: examples ordered by loss, per-class accuracy and a confusion matrix that match ones
computed here independently (a plain loop over the examples, cross-entropy by torch's functional)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import trainspect
from trainspect.store import open_run
from trainspect.views.samples import samples_payload


def _attach(run_dir: Path, **kw: object) -> trainspect.Inspector:
    model = nn.Linear(4, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return trainspect.attach(model, opt, nn.CrossEntropyLoss(), run_dir=run_dir, instruments=["loss"],
                             checks=None, progress=False, **kw)


def test_confusion_matrix_per_class_accuracy_and_loss_order(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(0)
    n, classes = 50, 3
    logits = torch.randn(n, classes, generator=gen) * 2
    targets = torch.randint(0, classes, (n,), generator=gen)
    images = torch.rand(n, 1, 5, 7, generator=gen)
    inspector = _attach(tmp_path / "run")
    with inspector.step(images, targets) as step:
        step.loss = torch.tensor(1.0)
        assert inspector.log_samples(images, logits, targets, schedule=1, max_samples=n,
                                     class_names=["cat", "dog", "bird"])
    inspector.close()

    with open_run(tmp_path / "run") as r:
        payload = samples_payload(r, top=n)

    # independent references: a loop for the confusion matrix, torch's cross-entropy for the losses
    expected = np.zeros((classes, classes), dtype=int)
    predicted = logits.argmax(1)
    for t, p in zip(targets.tolist(), predicted.tolist()):
        expected[t, p] += 1
    assert payload["classes"] == [0, 1, 2]
    assert payload["class_names"] == ["cat", "dog", "bird"]
    assert np.array_equal(np.array(payload["confusion"]), expected)
    for row in payload["per_class"]:
        mask = targets == row["class"]
        assert row["n"] == int(mask.sum())
        assert row["accuracy"] == pytest.approx(float((predicted[mask] == targets[mask]).float().mean()))

    losses = F.cross_entropy(logits.double(), targets, reduction="none")
    shown = payload["examples"]
    assert len(shown) == n
    assert [e["loss"] for e in shown] == sorted((e["loss"] for e in shown), reverse=True)
    for e in shown:
        i = e["idx"]
        assert e["loss"] == pytest.approx(float(losses[i]), rel=1e-9)
        assert e["target"] == int(targets[i]) and e["prediction"] == int(predicted[i])
        assert e["target_name"] == ["cat", "dog", "bird"][int(targets[i])]
        assert e["input_kind"] == "image" and e["shape"] == [1, 5, 7]
        assert np.allclose(e["input"], images[i].reshape(-1).numpy(), atol=1e-5)
    assert shown[0]["loss"] == pytest.approx(float(losses.max()))


def test_schedule_tokens_and_no_store(tmp_path: Path) -> None:
    inspector = _attach(tmp_path / "run")
    tokens = torch.tensor([[3, 1, 2], [0, 0, 1]])
    stored = []
    for _ in range(5):
        with inspector.step(None, None) as step:
            step.loss = torch.tensor(1.0)
        stored.append(inspector.log_samples(tokens, torch.tensor([[0.1, 2.0], [3.0, 0.0]]), torch.tensor([1, 1]),
                                            schedule=2, decode=lambda ids: "-".join(map(str, ids))))
    inspector.close()
    assert stored == [True, False, True, False, True]
    with open_run(tmp_path / "run") as r:
        payload = samples_payload(r, "all")
        assert payload["steps"] == [0, 2, 4]
        assert payload["n"] == 6
        texts = {e["text"] for e in payload["examples"]}
        assert texts == {"3-1-2", "0-0-1"}
        assert payload["confusion"] == [[0, 0], [3, 3]]

    quiet = _attach(tmp_path / "nostore", store=False)
    assert quiet.log_samples(tokens, torch.zeros(2, 2), torch.tensor([0, 1]), schedule=1) is False
    quiet.close()


def test_bad_input_gives_a_clear_error(tmp_path: Path) -> None:
    inspector = _attach(tmp_path / "run")
    with pytest.raises(ValueError, match="one entry per example"):
        inspector.log_samples(None, torch.zeros(4, 3), torch.zeros(3, dtype=torch.long), schedule=1)
    with pytest.raises(ValueError, match="class indices"):
        inspector.log_samples(None, torch.zeros(2, 3), torch.tensor([0, 7]), schedule=1)
    with pytest.raises(ValueError, match="input_kind"):
        inspector.log_samples(torch.zeros(2, 3), torch.zeros(2, 3), torch.tensor([0, 1]), schedule=1,
                              input_kind="audio")
    inspector.close()
