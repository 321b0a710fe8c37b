"""optimize.precision=auto: the search times at the precision export would deploy on this CPU."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from conftest import TINY_ARCH

from bort import families as F
from optimize import precision as OP
from runtime import recipe


def settings(**changes):
    base = {"precision": "auto", "num_threads": 1, "seq_len": 16, "optimize_graph": False, "quantization": "auto"}
    return SimpleNamespace(**{**base, **changes})


@pytest.fixture
def tiny(tiny_source):
    from transformers import AutoConfig

    return SimpleNamespace(arch=F.Arch(*TINY_ARCH), family="bert", folder=tiny_source,
                           config=AutoConfig.from_pretrained(tiny_source))


def test_auto_measures_the_source_shape_once_per_machine_and_names_why(tiny, tmp_path, monkeypatch):
    texts = ["a gripping film", "dull", "the best thing I have seen all year", "meh"] * 4
    precision, decision = OP.search_precision(settings(), tiny, texts, cache_path=tmp_path / "p.jsonl", hw="hw1")
    assert precision in recipe.PRECISIONS and decision["precision"] == precision
    assert set(decision["figures"]) == set(recipe.PRECISIONS) and "speed only" in decision["why"]
    assert decision["isa"] == OP.cpu_info()["isa"]
    monkeypatch.setattr(OP, "measure", lambda *a, **k: pytest.fail("the decision is cached per machine"))
    again, _ = OP.search_precision(settings(), tiny, texts, cache_path=tmp_path / "p.jsonl", hw="hw1")
    assert again == precision


def test_an_explicit_precision_is_used_as_it_is(tiny):
    assert OP.search_precision(settings(precision="int8"), tiny, [])[0] == "int8"


def test_latency_settings_refuse_an_unresolved_auto():
    from optimize.latency import LatencySettings

    with pytest.raises(ValueError, match="resolved"):
        LatencySettings.from_config(SimpleNamespace(precision="auto", batch_size=1, seq_len=8, num_threads=1,
                                                    warmup_runs=1, timed_runs=1, optimize_graph=False,
                                                    quantization="auto"))
