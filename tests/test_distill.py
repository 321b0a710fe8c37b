"""Distillation losses, the shared training loop, the teacher cache and the search's error estimate."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from conftest import TINY_ARCH

from bort import config as C
from bort import families as F
from distillation import batches as B
from distillation import extract as E
from distillation import losses as D
from distillation import trainer as T
from distillation.teacher_cache import TeacherCache
from optimize.error import estimate_error

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TEXTS = [f"the film number {i} was {'great' if i % 2 else 'dull'} and {'moving' if i % 3 else 'long'}"
         for i in range(48)]


def _targets(teacher, tokenizer, texts, batch_size=8):
    seqs = B.tokenize(tokenizer, texts, 32)
    return [{**b, **D.teacher_targets(teacher, b)} for b in B.fixed_batches(seqs, batch_size, tokenizer.pad_token_id)]



@pytest.fixture(scope="module")
def tiny(tiny_source):
    src = F.resolve_source(str(tiny_source))
    return src, F.load_encoder(src.folder), F.load_tokenizer(src.folder)


@pytest.mark.parametrize("family", ["bert", "mpnet"])
def test_representation_loss_is_zero_when_student_is_teacher(family):
    teacher = F.random_model(F.Arch(*TINY_ARCH), family, seed=4).eval()
    ids = torch.randint(5, 500, (2, 9))
    mask = torch.ones_like(ids)
    mask[0, 6:] = 0
    batch = {"input_ids": ids, "attention_mask": mask}
    model = D.Distiller(copy.deepcopy(teacher), teacher.config).eval()
    assert model.projection is None
    out = model({**batch, **D.teacher_targets(teacher, batch)})
    assert float(out["hidden"].detach()) == 0.0
    assert abs(float(out["relation"].detach())) < 1e-6
    assert abs(float(out["loss"].detach())) < 1e-6


def test_projection_starts_as_channel_placement():
    student = F.random_model(F.Arch(1, 1, 4, 5), "bert", seed=0)
    teacher_cfg = F.hf_config(F.Arch(1, 3, 9, 5), "bert")
    model = D.Distiller(student, teacher_cfg, channel_index=torch.tensor([0, 2, 5, 8]))
    out = model.project(torch.tensor([[[1.0, 2.0, 3.0, 4.0]]]))
    assert out.flatten().tolist() == [1.0, 0, 2.0, 0, 0, 3.0, 0, 0, 4.0]
    assert model.n_rel == 1  # the only head count dividing both 9 and 4


def test_relation_heads_prefers_the_teacher_head_count():
    assert D.relation_heads(384, 192, 12) == 12
    assert D.relation_heads(384, 288, 12) == 12
    assert D.relation_heads(33, 21, 3) == 3
    assert D.relation_heads(33, 22, 3) == 1


def test_bort_kd_loss_is_standard_kd_on_masked_positions():
    torch.manual_seed(0)
    s, t = torch.randn(2, 5, 7), torch.randn(2, 5, 7)
    labels = torch.full((2, 5), -100)
    labels[0, 1], labels[1, 3] = 4, 2
    got = D.bort_kd_loss(s, t, labels)
    rows_s, rows_t = s[labels != -100], t[labels != -100]
    ce = torch.nn.functional.cross_entropy(rows_s, labels[labels != -100])
    p_t = (rows_t / 2).softmax(-1)
    kl = (p_t * (p_t.log() - (rows_s / 2).log_softmax(-1))).sum(-1).mean()
    assert torch.allclose(got, 0.1 * ce + 0.5 * 4 * kl, atol=1e-6)
    assert torch.allclose(D.bort_kd_loss(t, t, labels), 0.1 * torch.nn.functional.cross_entropy(
        rows_t, labels[labels != -100]), atol=1e-6)


def test_representation_loss_falls_over_a_few_steps(tiny):
    src, teacher, tokenizer = tiny
    batches = _targets(teacher, tokenizer, TEXTS)
    imp = E.measure_importance(teacher, src.family, batches[:2])
    arch = F.Arch(1, 3, 21, 20)
    student, _ = E.build_student(src, teacher, arch, "inherit", imp, seed=0)
    model = D.Distiller(student, teacher.config, channel_index=E.hidden_channels(imp, 21))
    before = T.evaluate(model, batches[-2:])
    spec = T.TrainSpec(max_steps=25, lr=3e-3, warmup_ratio=0.1, seed=0)
    result = T.train(model, B.ListBatches(batches[:-2], seed=0), spec, batches[-2:], progress=False)
    assert result.steps == 25 and result.stopped_by == "steps"
    assert result.heldout_loss < 0.8 * before
    assert result.tokens == sum(int(b["attention_mask"].sum()) for b in batches[:-2]) * 25 // 4


def test_a_time_budget_that_does_not_bind_leaves_the_run_step_exact(tiny):
    src, teacher, tokenizer = tiny
    batches = _targets(teacher, tokenizer, TEXTS)

    def run(time_budget_s: float) -> tuple[T.TrainResult, dict[str, torch.Tensor]]:
        model = D.Distiller(copy.deepcopy(teacher), teacher.config, seed=0)
        spec = T.TrainSpec(max_steps=12, lr=1e-3, warmup_ratio=0.25, time_budget_s=time_budget_s, seed=0)
        return T.train(model, B.ListBatches(batches, seed=0), spec, batches[:1], progress=False), model.state_dict()

    (steps_only, w0), (with_limit, w1) = run(0.0), run(3600.0)
    assert with_limit.stopped_by == "steps" and with_limit.steps == 12
    assert [r["lr"] for r in with_limit.history] == [r["lr"] for r in steps_only.history]
    assert all(torch.equal(w0[k], w1[k]) for k in w0)


def test_mlm_teacher_trains_with_the_bort_loss(tiny):
    from transformers import BertForMaskedLM

    _, _, tokenizer = tiny
    config = F.hf_config(F.Arch(*TINY_ARCH), "bert", vocab_size=len(tokenizer))
    torch.manual_seed(0)
    teacher = BertForMaskedLM(config).eval()
    masker = B.Masker(tokenizer, seed=0)
    seqs = B.tokenize(tokenizer, TEXTS, 32)
    source = B.TextBatches(seqs, 8, tokenizer.pad_token_id, teacher, seed=0, masker=masker)
    first = source.batch_for(0)
    assert (first["labels"] != -100).any() and "t.logits" in first
    assert torch.equal(first["input_ids"], source.batch_for(0)["input_ids"])  # masking is seeded per step
    src = F.Source("tiny-mlm", None, "bert", config)
    imp = E.measure_importance(teacher, "bert", [first])
    student, _ = E.build_student(src, teacher, F.Arch(1, 3, 21, 20), "inherit", imp, seed=0)
    model = D.Distiller(student, teacher.config)
    result = T.train(model, source, T.TrainSpec(max_steps=3, lr=1e-3), [first], progress=False)
    assert math.isfinite(result.heldout_loss) and result.heldout_loss > 0


def test_lr_schedule_warms_up_then_decays_to_zero():
    spec = T.TrainSpec(max_steps=10, lr=1.0, warmup_ratio=0.2)
    lrs = [T.lr_at(T.progress(s, 0.0, spec), 0.2, 1.0, 10) for s in range(10)]
    assert lrs[:3] == pytest.approx([0.5, 1.0, 1.0])
    assert lrs[-1] == pytest.approx(0.125) and all(a >= b for a, b in zip(lrs[1:], lrs[2:], strict=False))


def test_time_budget_drives_progress_and_stops_training(tiny):
    timed = T.TrainSpec(max_steps=1000, lr=1.0, time_budget_s=60.0)
    assert T.progress(10, 30.0, timed) == pytest.approx((0.5 - T.TIME_GRACE) / (1 - T.TIME_GRACE))
    assert T.progress(10, 60.0, timed) == 1.0 and T.progress(10, 90.0, timed) == 1.0
    # a run on pace to finish its steps in time is scheduled by the step alone, first steps included
    on_pace = T.TrainSpec(max_steps=100, lr=1.0, time_budget_s=100.0)
    assert all(T.progress(s, s * 0.9 + 2.0, on_pace) == s / 100 for s in range(0, 101, 5))
    src, teacher, tokenizer = tiny
    batches = _targets(teacher, tokenizer, TEXTS[:16])
    model = D.Distiller(copy.deepcopy(teacher), teacher.config)
    result = T.train(model, B.ListBatches(batches, seed=0), T.TrainSpec(max_steps=10 ** 6, lr=1e-4, time_budget_s=0.5),
                     batches, progress=False)
    assert result.stopped_by == "time" and 0 < result.steps < 10 ** 6
    assert result.history[-1]["lr"] < 0.2e-4  # the schedule reached (nearly) zero at the time limit


def test_teacher_cache_round_trips_and_estimate_is_deterministic(tiny, tmp_path):
    src, teacher, _ = tiny
    params = dict(seq_len=24, batch_size=6, n_batches=4, n_heldout_batches=2, seed=0)
    cache = TeacherCache.load_or_build(tmp_path, src, TEXTS[:40], TEXTS[40:], **params)
    files = list(tmp_path.glob("teacher-*.safetensors"))
    assert len(files) == 1
    again = TeacherCache.load_or_build(tmp_path, src, TEXTS[:40], TEXTS[40:], **params)
    assert len(again.train) == 4 and len(again.heldout) == 2
    assert torch.equal(again.train[1]["t.hidden"], cache.train[1]["t.hidden"])
    full = again.heldout_batches()[0]
    direct = D.teacher_targets(teacher, full)
    for key in ("t.hidden", "t.q", "t.k", "t.v"):
        assert torch.allclose(full[key], direct[key], atol=5e-3), key  # fp16 storage
    cfg = C.resolve(["tiny"], ["optimize.error_lr=0.001", "optimize.weight_clip=2.0"])
    arch = F.Arch(1, 3, 21, 20)
    first = estimate_error(src, arch, cfg.optimize, again, steps=4, seed=1)
    state = torch.get_rng_state()
    assert estimate_error(src.name, arch, cfg.optimize, again, steps=4, seed=1) == first
    assert torch.equal(torch.get_rng_state(), state)  # global RNG untouched
    assert math.isfinite(first) and first > 0


def test_mlm_source_folder_is_distilled_with_the_bort_loss_through_the_cache(tiny, tmp_path):
    from transformers import BertForMaskedLM

    _, _, tokenizer = tiny
    config = F.hf_config(F.Arch(*TINY_ARCH), "bert", vocab_size=len(tokenizer))
    torch.manual_seed(0)
    BertForMaskedLM(config).save_pretrained(tmp_path / "mlm", safe_serialization=True)
    tokenizer.save_pretrained(tmp_path / "mlm")
    src = F.resolve_source(str(tmp_path / "mlm"))
    cache = TeacherCache.build(src, TEXTS[:40], TEXTS[40:], seq_len=24, batch_size=8, n_batches=3,
                               n_heldout_batches=1, seed=0)
    assert D.has_mlm_head(cache.teacher()) and "t.hidden" not in cache.train[0]
    batch = cache.train_batches(seed=0).batch_for(0)
    assert "t.logits" in batch and (batch["labels"] != -100).any()
    cfg = C.resolve(["tiny"], [f"source.model={tmp_path / 'mlm'}"])
    loss = estimate_error(src, F.Arch(1, 3, 21, 20), cfg.optimize, cache, steps=2, seed=0)
    assert math.isfinite(loss) and loss > 0
