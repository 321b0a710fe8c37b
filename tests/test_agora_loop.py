"""The Agora loop (agora/loop.py): pruning rules, the loop end to end on a tiny model, the test guard."""

from __future__ import annotations

import numpy as np
import pytest
from agora_fixtures import keyword_probs, tiny_task  # noqa: F401  (fixtures)

from agora import loop
from agora import train as T
from agora.guard import Guard, TestLeakError, example_key
from agora.transform import GSettings, Neighbours, TextTransform, sentence_embedder
from bort import config as C
from bort import families as F

pytestmark = pytest.mark.usefixtures("one_torch_thread")

THETAS = '["lr=3e-4,wd=0.01,warmup=0.1", "lr=1e-4,wd=0.0,warmup=0.0", "lr=5e-4,wd=0.01,warmup=0.2,batch=8"]'


def tiny_cfg(*overrides: str):
    return C.resolve(["tiny"], [
        "finetune.seq_len=24", "finetune.batch_size=16", "finetune.epochs=1", "finetune.round_epochs=1",
        f"finetune.thetas={THETAS}", "finetune.max_rounds=3", "finetune.points_per_mistake=2",
        "finetune.candidates_per_mistake=4", "finetune.similarity_band=[0.0, 0.9999]", *overrides])


@pytest.fixture(scope="module")
def parts(tiny_source):
    tokenizer = F.load_tokenizer(tiny_source)
    encoder = F.load_encoder(tiny_source, add_pooling_layer=False)
    neighbours = Neighbours(tokenizer, encoder.get_input_embeddings().weight.detach().numpy(), n=5)
    return tokenizer, neighbours, sentence_embedder(encoder, tokenizer, seq_len=24)


def inputs_for(parts, tiny_source, task, cfg, dev=None):
    tokenizer, neighbours, embed = parts
    guard = Guard(task.test)
    f = cfg.finetune
    g = TextTransform(neighbours, embed, GSettings(f.points_per_mistake, f.candidates_per_mistake,
                                                   f.similarity_band, f.edit_rate, f.seq_len), guard)
    return loop.AgoraInputs(tiny_source, tokenizer, task.labels, task.train, dev or task.dev, guard, g,
                            keyword_probs)


@pytest.fixture
def spy(monkeypatch):
    """Every set the loop trains on, as example keys."""
    seen: list[set[str]] = []
    real = T.fine_tune

    def recording(model, tokenizer, examples, *args, **kwargs):
        seen.append({example_key(e) for e in examples})
        return real(model, tokenizer, examples, *args, **kwargs)

    monkeypatch.setattr(T, "fine_tune", recording)
    return seen


@pytest.mark.parametrize("rule", ["halving", "paper"])
def test_pruning_ends_within_theta_rounds(rule):
    rng = np.random.default_rng(0)
    for trial in range(200):
        names = [f"t{i}" for i in range(int(rng.integers(1, 9)))]
        left, rounds = list(names), 0
        while left:
            # coarse scores make ties common, the case where the paper's rule removes a run
            scores = {n: float(rng.integers(0, 4)) / 4 for n in left}
            new = loop.prune(left, scores, rule, tolerance=0.01)
            assert len(new) < len(left) and set(new) <= set(left)
            left, rounds = new, rounds + 1
        assert rounds <= len(names), (trial, rule)


def test_halving_keeps_the_better_half_and_paper_removes_the_worst_run():
    scores = {"a": 0.70, "b": 0.80, "c": 0.70, "d": 0.90, "e": 0.705}
    assert loop.prune(list(scores), scores, "halving", 0.01) == ["b", "d"]
    # worst first: a, c (0.70) and e (0.705, within one dev example of 0.70) form the run
    assert loop.prune(list(scores), scores, "paper", 0.01) == ["b", "d"]
    assert loop.prune(list(scores), scores, "paper", 0.001) == ["b", "d", "e"]


def test_loop_runs_end_to_end_on_a_tiny_model(parts, tiny_source, tmp_path, spy):
    task, cfg = tiny_task(), tiny_cfg()
    result = loop.run_agora(inputs_for(parts, tiny_source, task, cfg), cfg, tmp_path / "ck", "fp1")
    rounds = {r["round"] for r in result.rows}
    assert 1 <= len(rounds) <= len(cfg.finetune.thetas)
    assert result.rows[0]["thetas"] == [t.text for t in cfg.finetune.thetas]
    assert len(spy) == sum(len(r["thetas"]) for r in result.rows)  # one fine-tune per θ per iteration
    assert result.model is not None and 0.0 <= result.dev["accuracy"] <= 1.0
    assert result.points, "no point was made"
    assert [p.label for p in result.points] == list(keyword_probs(result.points).argmax(1))  # labeller's labels
    assert sum(r["kept"] for r in result.rows) == len(result.points)
    assert all(not (keys & {example_key(e) for e in task.test}) for keys in spy)
    assert (tmp_path / "ck" / "state.json").is_file() and (tmp_path / "ck" / "best").is_dir()
    # a rerun with the same fingerprint resumes from the checkpoint: no training, same log
    spy.clear()
    again = loop.run_agora(inputs_for(parts, tiny_source, task, cfg), cfg, tmp_path / "ck", "fp1")
    assert spy == [] and again.rows == result.rows and len(again.points) == len(result.points)


def test_budgets_stop_the_loop(parts, tiny_source, tmp_path, spy):
    task = tiny_task()
    cfg = tiny_cfg("finetune.max_rounds=1")
    result = loop.run_agora(inputs_for(parts, tiny_source, task, cfg), cfg, tmp_path / "a", "fp")
    assert len(result.rows) == 1 and result.points == [] and "max_rounds" in result.stop_reason
    cfg = tiny_cfg("finetune.max_points=4", "finetune.max_points_per_round=4")
    result = loop.run_agora(inputs_for(parts, tiny_source, task, cfg), cfg, tmp_path / "b", "fp")
    assert 0 < len(result.points) <= 4


def test_a_test_text_planted_in_the_dev_mistakes_cannot_reach_training(parts, tiny_source):
    task, cfg = tiny_task(), tiny_cfg()
    planted = task.test[0]
    dev = [planted, *task.dev]
    inputs = inputs_for(parts, tiny_source, task, cfg, dev=dev)
    # the best model got every dev example wrong: the planted test text is among the mistakes
    state = loop.LoopState(thetas=[], iteration=1, best_dev={"pred": np.array([1 - e.label for e in dev])})
    new, stats = loop._make_points(inputs, cfg.finetune, state)
    assert stats["refused_test_texts"] == 1
    assert new and example_key(planted) not in {example_key(e) for e in new}
    # none of the new points derives from the planted text: each is near a real dev mistake
    test_keys = {example_key(e) for e in task.test}
    assert not test_keys & {example_key(e) for e in new}
    # and a set holding the test text can be neither trained nor selected on
    model = T.new_classifier(tiny_source, task.labels, seed=0)
    with pytest.raises(TestLeakError):
        T.fine_tune(model, inputs.tokenizer, [*task.train, planted], T.TrainSpec(1e-4, 0, 0, 1, 16, 0), 24,
                    inputs.guard)
    with pytest.raises(TestLeakError):
        T.evaluate(model, inputs.tokenizer, dev, 24, guard=inputs.guard)


def test_dev_split_is_stratified_disjoint_and_seeded():
    from bort.task import Example

    dev = [Example(f"t{i}", i % 3) for i in range(90)] + [Example("lonely", 3)]
    split = loop.dev_split(dev, 0.5, seed=0)
    assert sorted([*split.mine, *split.select]) == list(range(len(dev)))  # disjoint, covering dev
    for label in range(3):  # about half of each label on each side
        assert sum(dev[i].label == label for i in split.select) == 15
    assert 90 in split.mine  # a label with one row stays on the mining side
    again, other = loop.dev_split(dev, 0.5, seed=0), loop.dev_split(dev, 0.5, seed=1)
    assert again.select.tolist() == split.select.tolist() and other.select.tolist() != split.select.tolist()
    whole = loop.dev_split(dev, 0.0, seed=0)
    assert whole.mine.tolist() == whole.select.tolist() == list(range(len(dev)))  # the paper: no split


def test_with_a_selection_holdout_mistakes_are_mined_apart_from_the_rows_that_select(parts, tiny_source):
    from dataclasses import replace

    task, cfg = tiny_task(), tiny_cfg("finetune.selection_holdout=0.5")
    inputs = inputs_for(parts, tiny_source, task, cfg)
    split = loop.dev_split(inputs.dev, cfg.finetune.selection_holdout, cfg.seed)
    seen: list[str] = []
    transform = inputs.transform

    def recording(mistakes, rng):
        seen.extend(example_key(m) for m in mistakes)
        return transform(mistakes, rng)

    inputs = replace(inputs, split=split, transform=recording)
    # every dev example wrong: only the mining rows may become mistakes
    pred = np.array([1 - e.label for e in inputs.dev])
    state = loop.LoopState(thetas=[], iteration=1, best_dev={"pred": pred})
    loop._make_points(inputs, cfg.replace(finetune={"max_points_per_round": 10_000, "max_points": 10_000}).finetune,
                      state)
    mine = {example_key(inputs.dev[i]) for i in split.mine}
    assert seen and set(seen) <= mine and len(set(seen)) == len(mine)
    # and the score that picks θ, round and model reads only the selection rows
    pred[split.select] = [inputs.dev[i].label for i in split.select]
    assert loop.selection_score(inputs, {"pred": pred, "accuracy": 0.0}, "accuracy") == 1.0
    assert loop.selection_score(replace(inputs, split=None), {"pred": pred, "accuracy": 0.5}, "accuracy") == 0.5
