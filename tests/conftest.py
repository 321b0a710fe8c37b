"""Shared test setup: no network but loopback, assets in the project cache, tiny odd-sized models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
os.environ.setdefault("BENTOML_HOME", str(ROOT / ".cache" / "bentoml-test"))
os.environ.setdefault("BORT_CACHE", str(ROOT / ".cache" / "bort"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Odd sizes so that a transposed dimension fails instead of matching by accident.
TINY_ARCH = (2, 3, 33, 37)  # layers, heads, hidden (3 x 11), intermediate


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The real embedded default source model folder (fetched once into the cache)."""
    from bort import assets

    return assets.model_dir("minilm")


@pytest.fixture(scope="session")
def tiny_source(tmp_path_factory, minilm_dir) -> Path:
    """A tiny random BERT (2/3/33/37) saved in Hugging Face layout with MiniLM's real tokenizer."""
    from bort import families as F

    folder = tmp_path_factory.mktemp("tiny_source")
    model = F.random_model(F.Arch(*TINY_ARCH), "bert", seed=0)
    model.config.max_position_embeddings = 512
    model.save_pretrained(folder, safe_serialization=True)
    F.load_tokenizer(minilm_dir).save_pretrained(folder)
    return folder


# --- A fake finetune stage output (serve/ tests; reusable by any stage downstream of finetune) ---
TINY_LABELS = ("fresh", "rotten")


def make_tiny_classifier(folder: Path, tokenizer_dir: Path, labels=TINY_LABELS, seed: int = 0) -> Path:
    """A tiny random BertForSequenceClassification (2/3/33/37) with ``labels`` and a real tokenizer."""
    import torch
    from transformers import BertForSequenceClassification

    from bort import families as F

    config = F.hf_config(F.Arch(*TINY_ARCH), "bert", num_labels=len(labels),
                         id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BertForSequenceClassification(config).eval()
    model.save_pretrained(folder, safe_serialization=True)
    F.load_tokenizer(tokenizer_dir).save_pretrained(folder)
    return folder


def gate_facts(model: str = "agora", learned: bool = True) -> dict:
    """The deploy-gate facts `bort finetune` records: a student that learned, or a constant one."""
    majority = {"accuracy": 0.58, "macro_f1": 0.367, "mcc": 0.0, "balanced_accuracy": 0.5}
    dev = {"accuracy": 0.78, "macro_f1": 0.77, "mcc": 0.55, "balanced_accuracy": 0.77} if learned else majority
    return {"model": model, "metric": "accuracy", "dev": dev, "majority": majority,
            "p_value": 0.002 if learned else 1.0, "predicted_classes": 2 if learned else 1}


def write_fake_finetune(run_dir: Path, tokenizer_dir: Path, labels=TINY_LABELS, deploy: str = "agora",
                        learned: bool = True):
    """``run_dir/finetune/`` as `bort finetune` leaves it: models/{labeller,plain,agora} + manifest."""
    from bort import artifacts, config

    cfg = config.resolve(["tiny"])
    models = run_dir / "finetune" / "models"
    for seed, name in enumerate(("labeller", "plain", "agora")):
        make_tiny_classifier(models / name, tokenizer_dir, labels, seed=seed)
    metrics = {"deploy": deploy, "accuracy": {"labeller": 0.5, "plain": 0.5, "agora": 0.5},
               "deploy_gate": gate_facts(deploy, learned), "metric": "accuracy", "chance_metric": "mcc"}
    return artifacts.write_manifest(run_dir, "finetune", cfg, metrics=metrics,
                                    fingerprint=artifacts.stage_fingerprint(cfg, "finetune"))


@pytest.fixture(scope="session")
def tiny_finetune_run(tmp_path_factory, minilm_dir) -> Path:
    """A run folder holding only a fake finetune stage of tiny classifiers (labels fresh/rotten)."""
    run_dir = tmp_path_factory.mktemp("tiny_finetune_run")
    write_fake_finetune(run_dir, minilm_dir)
    return run_dir


TINY_DEV_TEXTS = (
    "a gripping, beautifully acted film", "dull and lifeless from start to finish",
    "the best thing I have seen all year", "a tedious mess with no redeeming qualities",
    "warm, funny and surprisingly moving", "I wanted my two hours back",
    "an instant classic", "flat characters and a predictable plot",
)


def fake_task(labels=TINY_LABELS, repeat: int = 4):
    """A stand-in for ``bort.data.prepare``'s TaskData: labels, a small dev split, and training texts
    (static int8 is calibrated on them)."""
    from types import SimpleNamespace

    dev = [SimpleNamespace(text=t, text_pair=None, label=i % len(labels))
           for _ in range(repeat) for i, t in enumerate(TINY_DEV_TEXTS)]
    train = [SimpleNamespace(text=f"{t} {t[::-1]}", text_pair=None, label=i % len(labels))
             for i, t in enumerate(TINY_DEV_TEXTS)]
    return SimpleNamespace(name="tiny", labels=list(labels), is_pair=False, dev=dev, train=train, test=[])


@pytest.fixture(scope="session")
def tiny_export_run(tiny_finetune_run) -> Path:
    """``tiny_finetune_run`` after `bort export` (tiny profile, fake dev split, few timing runs)."""
    from bort import config
    from serve import export

    cfg = config.resolve(["tiny"], ["export.timed_runs=5", "export.warmup_runs=1"])
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(export, "load_task", lambda cfg, run_dir: fake_task())
        export.run(cfg, tiny_finetune_run)
    return tiny_finetune_run


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for tiny models: faster, and two spinning threads crawl when other jobs share
    the CPU; a test that compares against a subprocess also needs the same floating-point sums."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def staged(run, cfg, run_dir, *args):
    """Run one stage's entry as the CLI does: the task's splits are prepared first, once."""
    from bort import data

    data.prepare(cfg, run_dir)
    return run(cfg, run_dir, *args)
