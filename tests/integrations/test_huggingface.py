"""Hugging Face Trainer: TrainspectCallback records pre-clip gradients and the step's loss, HF's own numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers", reason="the 'huggingface' extra is not installed "
                                                           "(pip install 'trainspect[huggingface]')")
pytest.importorskip("accelerate", reason="transformers.Trainer needs accelerate "
                                         "(pip install 'trainspect[huggingface]')")

import trainspect  # noqa: E402
from trainspect.integrations.huggingface import HAS_OPTIMIZER_EVENTS, TrainspectCallback  # noqa: E402

ACCUMULATE, BATCH, STEPS, VOCAB, LENGTH = 2, 4, 3, 40, 6
CLIP = 0.01  # far below the gradient norm: HF clips every step


class _Sequences(torch.utils.data.Dataset):
    def __init__(self, n: int):
        g = torch.Generator().manual_seed(1)
        self.ids = torch.randint(0, VOCAB, (n, LENGTH), generator=g)
        self.labels = torch.randint(0, 2, (n,), generator=g)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


class _HFLogs(transformers.TrainerCallback):
    """The reference: what the Trainer itself logs each step (pre-clip total gradient norm, loss)."""

    def __init__(self):
        self.grad_norms, self.losses = [], []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "grad_norm" in logs:
            self.grad_norms.append(float(logs["grad_norm"]))
            self.losses.append(float(logs["loss"]))


def _train(tmp_path, callbacks):
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=16, hidden_dropout_prob=0.0,
                                     attention_probs_dropout_prob=0.0, num_labels=2)
    model = transformers.BertForSequenceClassification(config)  # random weights: no download
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "hf"), max_steps=STEPS, per_device_train_batch_size=BATCH,
        gradient_accumulation_steps=ACCUMULATE, max_grad_norm=CLIP, learning_rate=1e-2, logging_steps=1,
        report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True, dataloader_num_workers=0, seed=0,
        data_seed=0,
    )
    trainer = transformers.Trainer(model=model, args=args, train_dataset=_Sequences(BATCH * ACCUMULATE * STEPS),
                                   callbacks=callbacks)
    trainer.train()
    return model


def test_callback_records_preclip_gradients_and_leaves_training_unchanged(tmp_path):
    reference = _HFLogs()
    callback = TrainspectCallback(run_dir=tmp_path / "run", instruments="cheap")
    model = _train(tmp_path, [reference, callback])
    plain = _train(tmp_path, [])
    for (name, p), q in zip(model.named_parameters(), plain.parameters()):
        assert torch.equal(p, q), f"{name} differs: attaching trainspect changed the training"

    run = trainspect.open_run(tmp_path / "run")
    steps, norms = run.scalar("grad_norm")
    np.testing.assert_array_equal(steps, np.arange(STEPS))
    assert len(reference.grad_norms) == STEPS and min(reference.grad_norms) > 10 * CLIP
    expected = "before clipping" if HAS_OPTIMIZER_EVENTS else "after clipping (max_grad_norm)"
    assert run.meta["config"]["gradients_measured"] == expected
    if HAS_OPTIMIZER_EVENTS:
        np.testing.assert_allclose(norms, reference.grad_norms, rtol=1e-5)
    _, loss = run.scalar("loss")
    np.testing.assert_allclose(loss, reference.losses, rtol=1e-5)
    _, update = run.scalar("update_size")
    assert len(update) == STEPS and (update > 0).all()
    assert run.errors() == []
