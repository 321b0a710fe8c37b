"""Task-specific distillation in agora/train.fine_tune, and a fine-tune that resumes exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from agora_fixtures import keyword_probs, tiny_task

from agora import train as T
from agora.guard import Guard
from bort import families as F
from bort.task import Example

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SPEC = T.TrainSpec(lr=3e-3, weight_decay=0.0, warmup_ratio=0.0, epochs=3, batch_size=8, seed=0)


@pytest.fixture
def tiny(tiny_source):
    return T.new_classifier(tiny_source, ["negative", "positive"], seed=0), F.load_tokenizer(tiny_source)


def test_the_distillation_loss_is_zero_when_the_student_is_the_teacher():
    logits = torch.randn(6, 3)
    for temperature, alpha in ((1.0, 0.0), (2.0, 0.0), (2.0, 0.5)):
        soft = T.SoftTargets(torch.softmax(logits, -1).numpy(), temperature, alpha)
        gold = torch.full((6,), -1)  # new points: no gold label, so the gold term has nothing to add
        loss = T._loss(logits, gold, torch.from_numpy(soft.probs), soft)
        assert float(loss) == pytest.approx(0.0, abs=1e-5)
    wrong = T.SoftTargets(torch.softmax(-logits, -1).numpy())
    assert float(T._loss(logits, torch.full((6,), -1), torch.from_numpy(wrong.probs), wrong)) > 0.1


def test_distilling_a_teacher_lowers_the_loss_and_learns_its_labels(tiny):
    model, tokenizer = tiny
    task = tiny_task(n_train=96, n_eval=40)
    points = [Example(e.text, -1) for e in task.dev]  # unlabelled texts, labelled by the teacher only
    examples = task.train + points
    soft = T.SoftTargets(keyword_probs(examples), temperature=2.0)
    with torch.no_grad():
        batch = T.collate(T.encode(tokenizer, examples, 32), np.arange(len(examples)), tokenizer.pad_token_id)
        before = float(T._loss(model(**batch).logits, torch.full((len(examples),), -1),
                               torch.from_numpy(soft.probs), soft))
    # a random tiny encoder: its word embeddings must learn too (real students keep theirs frozen)
    spec = T.TrainSpec(lr=1e-3, weight_decay=0.0, warmup_ratio=0.0, epochs=10, batch_size=8, seed=0,
                       freeze_word_embeddings=False)
    out = T.fine_tune(model, tokenizer, examples, spec, 32, Guard(task.test), soft=soft)
    assert out["loss"] < 0.5 * before
    agree = T.predict(model, tokenizer, task.test, 32).argmax(1) == keyword_probs(task.test).argmax(1)
    assert agree.mean() > 0.8


def test_a_killed_fine_tune_resumes_to_the_same_weights(tiny, tiny_source, tmp_path, monkeypatch):
    task = tiny_task(n_train=64)
    guard = Guard(task.test)
    model, tokenizer = tiny
    T.fine_tune(model, tokenizer, task.train, SPEC, 32, guard)
    uninterrupted = {k: v.clone() for k, v in model.state_dict().items()}

    resume = T.Resume(tmp_path / "ck", key="fp", every_s=0.0)  # a checkpoint after every step
    saves = []
    real_save = T._save

    def save_then_die(*args):
        real_save(*args)
        saves.append(args[-1])
        if len(saves) == 5:
            raise KeyboardInterrupt

    monkeypatch.setattr(T, "_save", save_then_die)
    killed = T.new_classifier(tiny_source, ["negative", "positive"], seed=0)
    with pytest.raises(KeyboardInterrupt):
        T.fine_tune(killed, tokenizer, task.train, SPEC, 32, guard, resume=resume)
    monkeypatch.setattr(T, "_save", real_save)
    resumed = T.new_classifier(tiny_source, ["negative", "positive"], seed=0)
    T.fine_tune(resumed, tokenizer, task.train, SPEC, 32, guard, resume=resume)
    for key, value in resumed.state_dict().items():
        assert torch.equal(value, uninterrupted[key]), key
    assert not (tmp_path / "ck").exists()  # finished: checkpoints removed


def test_a_small_training_set_gets_min_steps_not_a_fraction_of_an_epoch(tiny):
    """64 texts at batch 8 are 8 steps an epoch: 3 epochs are 24 steps; a floor of 40 gives 40,
    drawn from 5 shuffled epochs (the last one cut), and a floor below the epochs changes nothing."""
    model, tokenizer = tiny
    task = tiny_task(n_train=64)
    assert T.planned_steps(SPEC, 8) == 24
    assert T.planned_steps(T.TrainSpec(**{**SPEC.__dict__, "min_steps": 40}), 8) == 40
    assert T.planned_steps(T.TrainSpec(**{**SPEC.__dict__, "min_steps": 10}), 8) == 24
    floored = T.TrainSpec(**{**SPEC.__dict__, "min_steps": 40})
    assert T.fine_tune(model, tokenizer, task.train, floored, 32, Guard(task.test))["steps"] == 40


def test_the_default_min_steps_binds_only_on_small_training_sets():
    from bort import config as C

    f = C.resolve([], []).finetune
    assert f.min_steps > 0
    full_rt = 10_200 // f.batch_size  # Rotten Tomatoes' training split: the floor does not change its recipe
    assert T.planned_steps(T.TrainSpec(f.labeller_lr, 0, 0, f.labeller_epochs, f.batch_size, 0,
                                       min_steps=f.min_steps), full_rt) == round(f.labeller_epochs * full_rt)
    assert C.resolve(["quick"], []).finetune.min_steps == 0 and C.resolve(["tiny"], []).finetune.min_steps == 0
