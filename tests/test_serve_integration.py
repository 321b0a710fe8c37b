"""The embedded default end to end: a MiniLM classifier on Rotten Tomatoes -> export -> HTTP.

The classifier is fine-tuned here, briefly (one pass over the quick profile's 2,000 training
rows), so this test does not depend on `bort finetune`'s budget; it stands in for the finetune
stage's output with the same folder layout and manifest.
"""

from __future__ import annotations

import http.client
import json

import pytest

from bort import artifacts, config
from serve import export
from serve.predictor import Predictor
from serve.server import ServerProcess, deployed_folder

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def finetune_minilm(task, minilm_dir, out, seed: int = 0, epochs: int = 1):
    """A quick MiniLM sequence classifier: AdamW, batch 32, 64 tokens."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    model = AutoModelForSequenceClassification.from_pretrained(
        minilm_dir, num_labels=len(task.labels), id2label=dict(enumerate(task.labels)),
        label2id={n: i for i, n in enumerate(task.labels)})
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(task.train), generator=generator).tolist()
        for start in range(0, len(order), 32):
            batch = [task.train[i] for i in order[start:start + 32]]
            enc = tokenizer([e.text for e in batch], padding=True, truncation=True, max_length=64,
                            return_tensors="pt")
            loss = model(**enc, labels=torch.tensor([e.label for e in batch])).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    model.eval().save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


@pytest.fixture(scope="module")
def exported_default(tmp_path_factory, minilm_dir):
    import shutil

    from bort import data

    run_dir = tmp_path_factory.mktemp("default_run")
    cfg = config.resolve(["quick"])
    task = data.prepare(cfg, run_dir)
    models = run_dir / "finetune" / "models"
    finetune_minilm(task, minilm_dir, models / "labeller")
    for name in ("plain", "agora"):
        shutil.copytree(models / "labeller", models / name)
    artifacts.write_manifest(run_dir, "finetune", cfg, fingerprint=artifacts.stage_fingerprint(cfg, "finetune"),
                             metrics={"deploy": "agora", "accuracy": {}})
    export.run(cfg, run_dir)
    return cfg, run_dir, task


def test_export_manifest_shows_parity_and_int8_drop(exported_default):
    cfg, run_dir, _ = exported_default
    m = artifacts.read_manifest(run_dir, "export").metrics
    assert m["parity_max_abs_diff"] < cfg.export.parity_atol
    assert m["fp32_dev_accuracy"] > 0.65, "MiniLM should learn Rotten Tomatoes sentiment in one pass"
    expected = "int8" if m["int8_drop_points"] <= cfg.export.max_int8_drop_points else "fp32"
    assert m["deployed"]["optimized"] == expected


def test_served_labels_are_correct_over_http(exported_default):
    cfg, run_dir, task = exported_default
    folder = deployed_folder(run_dir, "optimized")
    serve_cfg = config.resolve(["quick"], ["serve.port=0"]).serve
    dev = task.dev[:192]
    local = Predictor(folder, num_threads=2, max_seq_len=serve_cfg.max_seq_len)
    with ServerProcess(folder, serve_cfg, log_path=run_dir / "server.log") as server:
        conn = http.client.HTTPConnection(server.host, server.port, timeout=60)
        served = []
        for start in range(0, len(dev), 64):
            texts = [e.text for e in dev[start:start + 64]]
            conn.request("POST", "/classify", json.dumps({"texts": texts}), {"Content-Type": "application/json"})
            resp = conn.getresponse()
            assert resp.status == 200
            served += [r["label"] for r in json.loads(resp.read())["results"]]
            expected = [r["label"] for r in local.predict(texts=texts)]
            assert served[-len(texts):] == expected
    accuracy = sum(label == task.labels[e.label] for label, e in zip(served, dev, strict=True)) / len(dev)
    assert accuracy > 0.65
