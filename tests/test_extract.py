"""Extraction of a student from the source: exactness when nothing is removed, exact sizes, head rules."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_ARCH

from bort import families as F
from bort.errors import ConfigError
from distillation import extract as E


def _batches(vocab: int = 1000, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (3, 11), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0  # one padded row: padding must not change anything
    return [{"input_ids": ids, "attention_mask": mask}]


def _source(family: str, model) -> F.Source:
    return F.Source(name=f"tiny-{family}", folder=None, family=family, config=model.config)


def _outputs(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state


@pytest.fixture(scope="module")
def tiny():
    """family -> (random tiny source at TINY_ARCH, its importance on a random batch); built once."""
    cache = {}

    def get(family):
        if family not in cache:
            model = F.random_model(F.Arch(*TINY_ARCH), family, seed=1)
            cache[family] = (model, E.measure_importance(model, family, _batches()))
        return cache[family]
    return get


@pytest.mark.parametrize("family", ["bert", "mpnet", "roberta"])
def test_inherit_at_source_shape_reproduces_source_outputs_exactly(family, tiny):
    arch = F.Arch(*TINY_ARCH)
    source, imp = tiny(family)
    batches = _batches()
    student, layers = E.build_student(_source(family, source), source, arch, "inherit", imp, seed=5)
    assert layers == [0, 1]
    assert torch.equal(_outputs(student, batches[0]), _outputs(source, batches[0]))


def test_inherit_from_tiny_source_folder_is_exact(tiny_source):
    src = F.resolve_source(str(tiny_source))
    teacher = F.load_encoder(src.folder)
    batches = _batches()
    imp = E.measure_importance(teacher, src.family, batches)
    student, _ = E.build_student(src, teacher, src.arch, "inherit", imp, seed=0)
    assert torch.equal(_outputs(student, batches[0]), _outputs(teacher, batches[0]))


@pytest.mark.parametrize("family", ["bert", "mpnet"])
@pytest.mark.parametrize("shape", [(1, 3, 21, 20), (2, 1, 22, 10), (1, 6, 30, 5), (2, 3, 33, 1)])
def test_smaller_student_has_exact_param_count_and_runs(family, shape, tiny):
    source, imp = tiny(family)
    batches = _batches()
    arch = F.Arch(*shape)
    student, layers = E.build_student(_source(family, source), source, arch, "inherit", imp, seed=0)
    expected = F.count_params(arch, family, F.Vocab.from_config(source.config))["net"]
    assert sum(p.numel() for p in student.parameters()) == expected
    assert len(layers) == arch.layers
    assert torch.isfinite(_outputs(student, batches[0])).all()


def test_random_init_matches_families_random_model(tiny):
    source, _ = tiny("bert")
    arch = F.Arch(1, 3, 21, 20)
    student, _ = E.build_student(_source("bert", source), source, arch, "random", None, seed=9)
    reference = F.random_model(arch, "bert", base=source.config, seed=9)
    for (name, a), (_, b) in zip(student.state_dict().items(), reference.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_equal_head_size_keeps_whole_most_important_heads_in_order():
    scores = torch.tensor([0.1, 0.9, 0.5, 0.7])
    qk, v = E.attention_slots(scores, torch.rand(8), torch.rand(8), d=2, width=4)
    assert qk.tolist() == [2, 3, 6, 7]  # heads 1 and 3, in their original order
    assert torch.equal(qk, v)


def test_wider_student_heads_merge_source_heads():
    # 4 source heads of 2 dims -> 1 student head of 4 dims: the 2 best heads merged.
    scores = torch.tensor([0.8, 0.1, 0.2, 0.9])
    qk, _ = E.attention_slots(scores, torch.rand(8), torch.rand(8), d=2, width=4)
    assert qk.tolist() == [0, 1, 6, 7]
    mix = E._bias_mix(qk, n_src_heads=4, d_src=2, n_heads=1)
    assert mix.tolist() == [[1.0, 0.0, 0.0, 1.0]]


def test_partial_head_takes_its_most_active_dims():
    scores = torch.tensor([0.9, 0.5])
    qk_dims = torch.tensor([0, 0, 0, 0.1, 0.9, 0.2])  # head 1 = dims 3..5
    v_dims = torch.tensor([0, 0, 0, 0.9, 0.1, 0.8])
    qk, v = E.attention_slots(scores, qk_dims, v_dims, d=3, width=5)
    assert qk.tolist() == [0, 1, 2, 4, 5]
    assert v.tolist() == [0, 1, 2, 3, 5]


def test_query_scaling_keeps_logits_when_heads_merge():
    # One student head made of two whole source heads: its logit is the sum of theirs.
    source = F.random_model(F.Arch(1, 2, 8, 6), "bert", seed=3)
    imp = E.measure_importance(source, "bert", _batches(seed=1))
    student, _ = E.build_student(_source("bert", source), source, F.Arch(1, 1, 8, 6), "inherit", imp, seed=0)
    x = torch.randn(5, 8)
    s_att, t_att = student.encoder.layer[0].attention.self, source.encoder.layer[0].attention.self
    t_q, t_k = t_att.query(x).view(5, 2, 4), t_att.key(x).view(5, 2, 4)
    t_logits = torch.einsum("ihd,jhd->ij", t_q, t_k) / 2.0  # sum over heads of q.k / sqrt(4)
    s_logits = s_att.query(x) @ s_att.key(x).T / 8 ** 0.5
    assert torch.allclose(s_logits, t_logits, atol=1e-5)


def test_layer_selection_rules():
    assert E.select_layers(6, 3) == [0, 2, 5]
    assert E.select_layers(6, 1) == [5]
    assert E.select_layers(6, 6) == list(range(6))
    assert E.select_layers(6, 2, torch.tensor([0.1, 0.5, 0.2, 0.0, 0.3, 0.9])) == [1, 5]


def test_inherit_cannot_grow_the_source(tiny):
    source, imp = tiny("bert")
    with pytest.raises(ConfigError, match="pretrain.init=random"):
        E.build_student(_source("bert", source), source, F.Arch(3, 3, 33, 37), "inherit", imp, seed=0)


def test_mlm_head_is_sliced_with_the_encoder():
    from transformers import BertForMaskedLM

    config = F.hf_config(F.Arch(*TINY_ARCH), "bert", vocab_size=99)
    torch.manual_seed(0)
    source = BertForMaskedLM(config).eval()
    batches = _batches(vocab=99)
    imp = E.measure_importance(source, "bert", batches)
    same, _ = E.build_student(_source("bert", source), source, F.Arch(*TINY_ARCH), "inherit", imp, seed=0)
    b = batches[0]
    with torch.no_grad():
        assert torch.equal(same.eval()(**b).logits, source(**b).logits)
    small, _ = E.build_student(_source("bert", source), source, F.Arch(1, 3, 21, 20), "inherit", imp, seed=0)
    assert small.cls.predictions.decoder.weight.data_ptr() == small.bert.embeddings.word_embeddings.weight.data_ptr()
    assert small(**b).logits.shape == (3, 11, 99)
