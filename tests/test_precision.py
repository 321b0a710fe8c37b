"""Training precision: what ``pretrain.precision`` / ``finetune.precision`` resolve to, the one-line
refusal of emulated bf16, and bf16 steps that still train (losses in fp32)."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import TINY_ARCH

from bort import config as C
from bort import devices
from bort import families as F
from bort.errors import ConfigError
from distillation import batches as B
from distillation import losses as D
from distillation import trainer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CPU = torch.device("cpu")
NATIVE = {"avx2", "avx512f", "avx512_bf16"}
AVX2 = {"avx", "avx2", "fma"}


def test_precision_resolves_by_the_cpu_flags():
    assert devices.resolve_precision("fp32", CPU, cpu_flags=NATIVE) == "fp32"
    assert devices.resolve_precision("auto", CPU, cpu_flags=NATIVE) == "bf16"
    assert devices.resolve_precision("auto", CPU, cpu_flags={"amx_bf16", "amx_tile"}) == "bf16"
    assert devices.resolve_precision("auto", CPU, cpu_flags=AVX2) == "fp32"  # emulated bf16 is slower
    assert devices.resolve_precision("bf16", CPU, cpu_flags=NATIVE) == "bf16"


def test_emulated_bf16_and_unknown_precisions_are_refused_in_one_line():
    with pytest.raises(ConfigError, match=r"finetune.precision=bf16, but this CPU .*no native bfloat16.*"
                                          r"use finetune.precision=fp32 or auto") as e:
        devices.resolve_precision("bf16", CPU, "finetune.precision", cpu_flags=AVX2)
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="pretrain.precision='fp16' is not a precision"):
        devices.resolve_precision("fp16", CPU, "pretrain.precision", cpu_flags=NATIVE)
    with pytest.raises(ConfigError, match="finetune.precision"):
        C.resolve([], ["finetune.precision=fp16"])


def test_profiles_pick_their_precision():
    assert C.resolve([], []).finetune.precision == "fp32"  # the default's figures were measured in fp32
    base = C.resolve(["base"], [])
    assert base.pretrain.precision == "auto" and base.finetune.precision == "auto"


def test_the_distillation_loss_stays_fp32_and_close_under_bf16_autocast():
    teacher = F.random_model(F.Arch(*TINY_ARCH), "bert", seed=4).eval()
    student = F.random_model(F.Arch(*TINY_ARCH), "bert", seed=5)
    ids = torch.randint(5, 500, (4, 12))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    batch = {**batch, **D.teacher_targets(teacher, batch)}
    model = D.Distiller(student, teacher.config).eval()
    same = D.Distiller(copy.deepcopy(teacher), teacher.config).eval()
    with torch.no_grad():
        exact = model(batch)
        with devices.autocast(CPU, "bf16"):
            mixed, twin = model(batch), same(batch)
    assert mixed["loss"].dtype == torch.float32
    assert abs(float(mixed["loss"]) - float(exact["loss"])) < 0.05 * float(exact["loss"])
    assert float(twin["hidden"]) < 0.02  # student = teacher: only bf16 rounding is left


def test_pretraining_in_bf16_lowers_the_held_out_loss(tiny_source):
    src = F.resolve_source(str(tiny_source))
    teacher, tokenizer = F.load_encoder(src.folder).eval(), F.load_tokenizer(src.folder)
    texts = [f"the film number {i} was {'great' if i % 2 else 'dull'} and {'moving' if i % 3 else 'long'}"
             for i in range(48)]
    batches = [{**b, **D.teacher_targets(teacher, b)}
               for b in B.fixed_batches(B.tokenize(tokenizer, texts, 32), 8, tokenizer.pad_token_id)]
    student = F.random_model(F.Arch(1, 3, 21, 20), src.family, seed=0)
    model = D.Distiller(student, teacher.config)
    before = trainer.evaluate(model, batches[-2:])
    spec = trainer.TrainSpec(max_steps=25, lr=3e-3, warmup_ratio=0.1, seed=0, precision="bf16")
    result = trainer.train(model, B.ListBatches(batches[:-2], seed=0), spec, batches[-2:], progress=False)
    assert result.heldout_loss < 0.8 * before


def test_fine_tuning_in_bf16_learns_and_predictions_for_scores_stay_fp32(tiny_source, monkeypatch):
    from agora import train as T
    from agora.guard import Guard
    from bort.task import Example

    monkeypatch.setattr(devices, "native_bf16", lambda device, flags=None: True)
    examples = [Example(f"{'good great fine' if i % 2 else 'bad awful poor'} film {i}", i % 2) for i in range(64)]
    model = T.new_classifier(tiny_source, ["neg", "pos"], seed=0)
    tokenizer = F.load_tokenizer(tiny_source)
    T.set_device("cpu", "bf16")
    try:
        assert T.current_precision() == "bf16"
        spec = T.TrainSpec(lr=3e-3, weight_decay=0.0, warmup_ratio=0.1, epochs=8, batch_size=16, seed=0)
        T.fine_tune(model, tokenizer, examples, spec, 16, Guard([]))
        scores = T.evaluate(model, tokenizer, examples, 16)
        assert scores["accuracy"] > 0.9
        fast = T.predict(model, tokenizer, examples, 16, fast=True)
        exact = T.predict(model, tokenizer, examples, 16)
        assert abs(fast - exact).max() < 0.1 and (fast.argmax(1) == exact.argmax(1)).mean() > 0.9
    finally:
        T.set_device("cpu")
    assert T.current_precision() == "fp32"
