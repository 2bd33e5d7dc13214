"""Look beyond the numbers: log a batch of inputs, predictions and targets, and summarize it.

One call in the training loop (``inspector.log_samples(inputs, outputs, targets)``) stores the examples of
the step's batch on a schedule; the dashboard and the HTML report show the highest-loss examples with their
predicted and true labels (images drawn for image inputs, text for token inputs), the per-class accuracy and
the confusion matrix, so a systematic error (one class always wrong) is seen instead of averaged away.

Stored in the ``samples`` table of the run store (one row per example; inputs as float32 bytes).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from trainspect.engine.schedules import ScheduleLike, as_schedule

if TYPE_CHECKING:
    from trainspect.engine.inspector import Inspector
    from trainspect.store.reader import RunReader

INPUT_KINDS = ("auto", "image", "tokens", "text", "vector", "none")
#: image sides above this are subsampled (by a stride) before storing: the views only draw thumbnails
MAX_IMAGE_SIDE = 128
#: vector inputs longer than this are truncated before storing
MAX_VECTOR_LENGTH = 4096
CLASS_NAMES_KEY = "samples_class_names"


def _as_numpy(value: Any, what: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().to("cpu")
        if value.dtype in (torch.bfloat16, torch.float16):
            value = value.float()
        return value.numpy()
    try:
        return np.asarray(value)
    except Exception as error:  # pragma: no cover - odd user objects
        raise TypeError(f"log_samples: {what} must be a tensor or array, got {type(value).__name__}") from error


def _input_kind(inputs: np.ndarray, kind: str, image_shape: Sequence[int] | None) -> str:
    if kind not in INPUT_KINDS:
        raise ValueError(f"log_samples: input_kind must be one of {INPUT_KINDS}, got {kind!r}")
    if kind != "auto":
        return kind
    if image_shape is not None:
        return "image"
    if inputs.dtype.kind in "iu" and inputs.ndim == 2:
        return "tokens"
    if inputs.ndim == 3 or (inputs.ndim == 4 and inputs.shape[1] in (1, 3, 4)):
        return "image"
    return "vector"


def _image(x: np.ndarray) -> np.ndarray:
    """One image as (C, H, W) float32, subsampled to at most MAX_IMAGE_SIDE per side."""
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3:
        raise ValueError(f"log_samples: an image input must be (H, W) or (C, H, W), got shape {x.shape}")
    stride = max(1, math.ceil(max(x.shape[1], x.shape[2]) / MAX_IMAGE_SIDE))
    return np.ascontiguousarray(x[:, ::stride, ::stride], dtype=np.float32)


def log_samples(
    inspector: Inspector,
    inputs: Any,
    outputs: Any,
    targets: Any,
    *,
    step: int,
    losses: Any = None,
    schedule: ScheduleLike = 100,
    max_samples: int = 64,
    input_kind: str = "auto",
    image_shape: Sequence[int] | None = None,
    class_names: Sequence[str] | None = None,
    decode: Callable[[Sequence[int]], str] | None = None,
) -> bool:
    """Store a batch's examples at ``step`` if ``schedule`` is due; see :meth:`Inspector.log_samples`.

    Returns:
        True if the samples were stored at this step.
    """
    if not as_schedule(schedule, what="log_samples schedule")(step):
        return False
    store = getattr(inspector, "store", None)
    if store is None:  # e.g. a non-zero rank: nothing is written
        return False
    x = _as_numpy(inputs, "inputs") if inputs is not None else None
    out = _as_numpy(outputs, "outputs")
    y = _as_numpy(targets, "targets")
    n = int(out.shape[0]) if out.ndim else 0
    if y.shape[:1] != (n,):
        raise ValueError(
            f"log_samples: outputs and targets must hold one entry per example; got outputs {out.shape} and "
            f"targets {y.shape}"
        )
    if x is not None and x.shape[:1] != (n,):
        raise ValueError(f"log_samples: inputs must hold one entry per example ({n}); got shape {x.shape}")

    # predictions: class scores (N × C) → argmax and softmax; otherwise the outputs are the predictions
    probabilities = None
    if out.ndim == 2 and out.dtype.kind == "f" and out.shape[1] > 1:
        logits = torch.as_tensor(out, dtype=torch.float64)
        probabilities = torch.softmax(logits, dim=1).numpy()
        predictions: np.ndarray = out.argmax(axis=1)
        if losses is None and y.dtype.kind in "iu" and y.ndim == 1:
            # cross-entropy per example, −log softmax(logits)[target]: the loss a classifier is trained on
            if y.min(initial=0) < 0 or y.max(initial=0) >= out.shape[1]:
                raise ValueError(
                    f"log_samples: targets must be class indices in [0, {out.shape[1]}); got {y.min()}..{y.max()}"
                )
            logp = torch.log_softmax(logits, dim=1).numpy()
            losses = -logp[np.arange(n), y]
    else:
        predictions = out.reshape(n, -1)[:, 0] if out.ndim > 1 else out
    loss_arr = None if losses is None else _as_numpy(losses, "losses").astype(np.float64).reshape(-1)
    if loss_arr is not None and loss_arr.shape[0] != n:
        raise ValueError(f"log_samples: losses must hold one value per example ({n}); got {loss_arr.shape[0]}")

    kind = "none" if x is None else _input_kind(x, input_kind, image_shape)
    keep = min(n, int(max_samples))
    rows = []
    for i in range(keep):
        blob = shape = text = None
        if x is not None and kind != "none":
            xi = x[i]
            if kind == "image":
                xi = _image(xi.reshape(tuple(image_shape)) if image_shape is not None else xi)
            elif kind == "tokens":
                ids = [int(t) for t in np.asarray(xi).reshape(-1)]
                text = decode(ids) if decode is not None else " ".join(map(str, ids))
                xi = np.asarray(ids, dtype=np.float32)
            elif kind == "text":
                text = str(xi)
                xi = None
            else:
                xi = np.asarray(xi, dtype=np.float32).reshape(-1)[:MAX_VECTOR_LENGTH]
            if xi is not None:
                blob = np.ascontiguousarray(xi, dtype="<f4").tobytes()
                shape = json.dumps(list(xi.shape))
        rows.append((
            step, i,
            None if loss_arr is None or not math.isfinite(loss_arr[i]) else float(loss_arr[i]),
            json.dumps(_plain(y[i])),
            json.dumps(_plain(predictions[i])),
            None if probabilities is None else np.ascontiguousarray(probabilities[i], dtype="<f8").tobytes(),
            blob, shape, kind, text,
        ))
    store.execute(
        "INSERT OR REPLACE INTO samples(step, idx, loss, target, prediction, probabilities, input, input_shape, "
        "input_kind, input_text) VALUES (?,?,?,?,?,?,?,?,?,?)",
        rows,
    )
    if class_names is not None:
        store.write_meta({CLASS_NAMES_KEY: [str(c) for c in class_names]})
    return True


def _plain(v: Any) -> Any:
    v = np.asarray(v)
    if v.ndim == 0:
        item = v.item()
        return item if not isinstance(item, float) or math.isfinite(item) else None
    return [_plain(x) for x in v]


# ---------------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------------
def sample_steps(reader: RunReader) -> list[int]:
    return [int(r[0]) for r in reader.conn.execute("SELECT DISTINCT step FROM samples ORDER BY step")]


def confusion_matrix(targets: Sequence[int], predictions: Sequence[int], classes: Sequence[int]) -> np.ndarray:
    """``C[i, j]`` = number of examples of true class ``classes[i]`` predicted as ``classes[j]``."""
    index = {c: k for k, c in enumerate(classes)}
    matrix = np.zeros((len(classes), len(classes)), dtype=np.int64)
    for t, p in zip(targets, predictions):
        if t in index and p in index:
            matrix[index[t], index[p]] += 1
    return matrix


def samples_payload(reader: RunReader, step: int | str | None = None, top: int = 24) -> dict[str, Any]:
    """The logged examples at ``step`` (default: the latest; ``"all"``: every logged step).

    Returns the ``top`` highest-loss examples (input, predicted and true label, loss, confidence), the
    per-class accuracy and the confusion matrix (rows: true class, columns: predicted class) of every
    example at that step. Classes are the integer labels seen (or ``range(C)`` with C class scores).
    """
    steps = sample_steps(reader)
    if not steps:
        return {"steps": [], "step": None, "examples": [], "classes": [], "confusion": [], "per_class": []}
    if step is None or step == "latest":
        chosen: int | str = steps[-1]
        where, args = "WHERE step = ?", (steps[-1],)
    elif step == "all":
        chosen, where, args = "all", "", ()
    else:
        chosen = int(step)
        where, args = "WHERE step = ?", (chosen,)
    rows = reader.conn.execute(
        "SELECT step, idx, loss, target, prediction, probabilities, input, input_shape, input_kind, input_text "
        f"FROM samples {where} ORDER BY step, idx",
        args,
    ).fetchall()
    targets = [json.loads(r[3]) for r in rows]
    preds = [json.loads(r[4]) for r in rows]
    n_classes = 0
    for r in rows:
        if r[5] is not None:
            n_classes = max(n_classes, len(r[5]) // 8)
    classification = all(isinstance(t, int) for t in targets) and all(isinstance(p, int) for p in preds)
    classes: list[int] = []
    per_class: list[dict[str, Any]] = []
    confusion: list[list[int]] = []
    names = reader.meta.get(CLASS_NAMES_KEY) or []
    if classification and rows:
        classes = sorted(set(targets) | set(preds) | set(range(n_classes)))
        matrix = confusion_matrix(targets, preds, classes)
        confusion = matrix.tolist()
        for k, c in enumerate(classes):
            total = int(matrix[k].sum())
            per_class.append({
                "class": c, "name": names[c] if 0 <= c < len(names) else str(c), "n": total,
                "correct": int(matrix[k, k]), "accuracy": None if total == 0 else matrix[k, k] / total,
            })
    order = sorted(range(len(rows)), key=lambda i: -math.inf if rows[i][2] is None else rows[i][2], reverse=True)
    examples = []
    for i in order[:top]:
        s, idx, loss, _, _, probs, blob, shape, kind, text = rows[i]
        ex: dict[str, Any] = {
            "step": s, "idx": idx, "loss": loss, "target": targets[i], "prediction": preds[i],
            "correct": targets[i] == preds[i], "input_kind": kind, "text": text,
        }
        for key, label in (("target_name", targets[i]), ("prediction_name", preds[i])):
            ex[key] = names[label] if isinstance(label, int) and 0 <= label < len(names) else str(label)
        if probs is not None:
            p = np.frombuffer(probs, dtype="<f8")
            ex["confidence"] = float(p.max())
        if blob is not None and kind in ("image", "vector"):
            arr = np.frombuffer(blob, dtype="<f4").astype(np.float64)
            ex["shape"] = json.loads(shape)
            ex["input"] = [None if not math.isfinite(v) else round(v, 5) for v in arr.tolist()]
        examples.append(ex)
    return {
        "steps": steps, "step": chosen, "n": len(rows), "examples": examples, "classes": classes,
        "class_names": [names[c] if 0 <= c < len(names) else str(c) for c in classes],
        "confusion": confusion, "per_class": [
            {**pc, "accuracy": None if pc["accuracy"] is None else float(pc["accuracy"])} for pc in per_class
        ],
    }
