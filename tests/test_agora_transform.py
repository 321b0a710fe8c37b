"""G (agora/transform.py) and the test guard (agora/guard.py) on tiny models."""

from __future__ import annotations

import numpy as np
import pytest
from agora_fixtures import tiny_task  # noqa: F401  (fixtures)

from agora.guard import Guard, TestLeakError, text_key
from agora.transform import (
    GSettings,
    Neighbours,
    TextTransform,
    has_mlm_head,
    join_words,
    sentence_embedder,
    split_words,
)
from bort import families as F
from bort.task import Example

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_parts(tiny_source):
    encoder = F.load_encoder(tiny_source, add_pooling_layer=False)
    tokenizer = F.load_tokenizer(tiny_source)
    neighbours = Neighbours(tokenizer, encoder.get_input_embeddings().weight.detach().numpy(), n=5)
    return neighbours, sentence_embedder(encoder, tokenizer, seq_len=32)


def make_g(tiny_parts, band=(-1.0, 1.0), guard=None, k=3, mlm=None):
    neighbours, embed = tiny_parts
    settings = GSettings(k=k, candidates=8, band=band, edit_rate=0.2, max_words=32)
    return TextTransform(neighbours, embed, settings, guard or Guard([]), mlm)


def test_split_join_round_trips_text_exactly():
    text = "It's a three-hour  cinema (master) class... Don't go!"
    assert join_words(split_words(text)) == text
    assert "three-hour  " in split_words(text)


def test_neighbours_are_whole_words_only(tiny_parts):
    neighbours, _ = tiny_parts
    assert not any(w.startswith("##") or w.startswith("[") or not w.isalpha() for w in neighbours.words)
    near = neighbours.of("good")
    assert len(near) == 5 and "good" not in near
    assert neighbours.of("##ing") == [] and neighbours.of("[CLS]") == []


def test_g_is_deterministic_for_a_seed(tiny_parts):
    g = make_g(tiny_parts)
    mistakes = tiny_task().dev[:6]
    first, _ = g(mistakes, np.random.default_rng(7))
    again, _ = g(mistakes, np.random.default_rng(7))
    other, _ = g(mistakes, np.random.default_rng(8))
    assert first == again
    assert [p.text for p in first] != [p.text for p in other]
    assert all(p.text != mistakes[p.origin].text for p in first)


def test_every_kept_point_lies_inside_the_band(tiny_parts):
    _, embed = tiny_parts
    mistakes = tiny_task().dev[:8]
    wide, _ = make_g(tiny_parts, k=8)(mistakes, np.random.default_rng(1))
    sims = np.array([p.similarity for p in wide])
    band = (float(np.quantile(sims, 0.3)), float(np.quantile(sims, 0.7)))
    points, stats = make_g(tiny_parts, band=band, k=8)(mistakes, np.random.default_rng(1))
    assert 0 < len(points) < len(wide)  # the band rejected some candidates and kept some
    assert stats.made == len(points) <= stats.in_band <= stats.candidates
    new = embed([p.text for p in points])
    old = embed([mistakes[p.origin].text for p in points])
    cosine = np.sum(new * old, axis=1)  # recomputed independently of G
    assert np.all(cosine >= band[0] - 1e-5) and np.all(cosine <= band[1] + 1e-5)
    assert max(np.bincount([p.origin for p in points])) <= 8


def test_pairs_edit_the_second_segment_only(tiny_parts):
    pair = [Example("The premise stays as it is here.", 0, "the actors were really very good in it", None)]
    points, _ = make_g(tiny_parts)(pair, np.random.default_rng(0))
    assert points and all(p.text == pair[0].text and p.text_pair != pair[0].text_pair for p in points)


def test_guard_raises_on_a_test_text_and_filters_it():
    task = tiny_task()
    guard = Guard(task.test)
    planted = Example(task.test[0].text.upper() + "  ", 1)  # case and spacing do not hide it
    assert guard.contains(planted)
    with pytest.raises(TestLeakError, match="test-split"):
        guard.check([*task.train[:3], planted], "training")
    assert guard.filter([*task.train[:3], planted], "dev") == task.train[:3]
    assert guard.dropped == {"dev": 1}


def test_g_refuses_test_texts_and_drops_outputs_equal_to_one(tiny_parts):
    task = tiny_task()
    planted = task.test[0]
    g = make_g(tiny_parts, guard=Guard(task.test))
    points, stats = g([planted, *task.dev[:4]], np.random.default_rng(0))
    assert stats.refused_inputs == 1
    assert points and all(p.origin != 0 for p in points)
    # an output identical to a test text is dropped: make the test split hold G's own output
    free, _ = make_g(tiny_parts)(task.dev[:1], np.random.default_rng(3))
    trap = Guard([Example(free[0].text, 0)])
    caught, stats = make_g(tiny_parts, guard=trap)(task.dev[:1], np.random.default_rng(3))
    assert stats.guard_dropped >= 1 and text_key(free[0].text) not in {text_key(p.text) for p in caught}


def test_near_copies_of_test_texts_are_dropped(tiny_parts):
    _, embed = tiny_parts
    task = tiny_task()
    guard = Guard(task.dev[:2])  # pretend the dev texts are test texts: their perturbations are near copies
    guard.attach_embeddings(embed, near_copy_cosine=-1.0)
    free = Guard([])
    points, stats = make_g(tiny_parts, guard=guard)(task.train[:2], np.random.default_rng(0))
    assert points == [] and stats.guard_dropped == stats.in_band > 0
    assert make_g(tiny_parts, guard=free)(task.train[:2], np.random.default_rng(0))[0]


def test_mlm_infill_path_runs_when_a_head_exists(tmp_path, tiny_source, tiny_parts):
    import torch
    from transformers import AutoConfig, AutoModelForMaskedLM

    config = AutoConfig.from_pretrained(tiny_source)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        mlm = AutoModelForMaskedLM.from_config(config).eval()
    mlm.save_pretrained(tmp_path / "mlm", safe_serialization=True)
    assert has_mlm_head(tmp_path / "mlm") and not has_mlm_head(tiny_source)
    # a config that names a masked-LM architecture over encoder-only weights (all-mpnet-base-v2's case)
    encoder_only = tmp_path / "encoder-only"
    F.load_encoder(tiny_source).save_pretrained(encoder_only, safe_serialization=True)
    (encoder_only / "config.json").write_text((encoder_only / "config.json").read_text().replace(
        '"BertModel"', '"BertForMaskedLM"'))
    assert "BertForMaskedLM" in (encoder_only / "config.json").read_text() and not has_mlm_head(encoder_only)
    g = make_g(tiny_parts, mlm=(mlm, F.load_tokenizer(tiny_source)))
    words = split_words("the movie was really quite good and the actors were fine")
    edited = [g._infill(list(words), np.random.default_rng(s)) for s in range(6)]
    assert any(e != words for e in edited)
    assert all(len(e) == len(words) for e in edited)  # infill replaces, never adds or drops
