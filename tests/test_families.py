"""Shapes, exact parameter counts and FLOPs."""

import pytest
import torch
from transformers import AutoModel

from bort import families as F
from bort.errors import ConfigError

SHAPES = [
    ("bert", F.BERT_BASE), ("bert", F.BERT_LARGE), ("bert", F.BORT), ("roberta", F.BORT),
    ("bert", F.MINILM_L6), ("mpnet", F.MPNET_BASE), ("bert", F.Arch(2, 3, 33, 37)),
]


@pytest.mark.parametrize(("family", "arch"), SHAPES, ids=lambda x: getattr(x, "label", lambda: x)())
def test_counted_parameters_equal_the_built_model(family, arch):
    config = F.hf_config(arch, family)
    with torch.device("meta"):  # shapes only: no memory, no init time
        model = AutoModel.from_config(config)
    counts = F.count_params(arch, family)
    assert counts["net"] == sum(p.numel() for p in model.parameters())
    encoder = sum(p.numel() for n, p in model.named_parameters() if n.startswith("encoder."))
    assert counts["effective"] == encoder


def test_bert_base_has_the_known_size():
    assert F.count_params(F.BERT_BASE)["net"] == 109_482_240


def test_flops_match_a_hand_computed_case():
    # 1 layer, H=4, I=8, S=2: 8*2*16 + 4*4*4 + 4*2*4*8 = 256 + 64 + 256 = 576; pooler 2*16 = 32.
    assert F.flops(F.Arch(1, 2, 4, 8), seq_len=2) == 608
    assert F.flops(F.Arch(1, 2, 4, 8), seq_len=2, batch_size=3) == 3 * 608


def test_flops_grow_with_every_dimension():
    base = F.flops(F.BORT, 128)
    for bigger in (F.Arch(5, 8, 1024, 768), F.Arch(4, 8, 1024, 1024), F.Arch(4, 8, 1536, 768)):
        assert F.flops(bigger, 128) > base


def test_hidden_not_divisible_by_heads_is_a_clear_error():
    with pytest.raises(ConfigError, match="not divisible by 5 heads"):
        F.Arch(2, 5, 384, 1536)


def test_arch_parse_and_label_round_trip():
    assert F.Arch.parse("4/8/1024/768") == F.BORT
    assert F.BORT.label() == "4/8/1024/768"
    with pytest.raises(ConfigError):
        F.Arch.parse("4/8/1024")


def test_random_model_is_seeded():
    a = F.random_model(F.Arch(2, 3, 33, 37), seed=1)
    b = F.random_model(F.Arch(2, 3, 33, 37), seed=1)
    c = F.random_model(F.Arch(2, 3, 33, 37), seed=2)
    wa, wb, wc = (m.encoder.layer[0].attention.self.query.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_unsupported_model_type_is_a_user_error():
    from transformers import GPT2Config

    with pytest.raises(Exception, match="not supported"):
        F.family_of(GPT2Config())
