"""``bort finetune``: the labeller, plain fine-tuning and Agora, side by side on the same splits.

Outputs in ``<run>/finetune/``: ``models/{labeller,plain,agora}/`` (Hugging Face sequence
classifiers with label maps), ``rounds.{json,csv}``, ``accuracy.png``, ``report.md`` and the
manifest, whose metrics give each model's test accuracy and macro-F1 and which one to deploy.
The labeller and plain models are cached as parts (``parts/*.json``): a rerun with other Agora
settings reuses them. The Agora loop checkpoints every round under ``checkpoints/agora`` and keeps
its finished state there: a rerun that changes only what the loop does not read (the distillation
arm, the deploy choice: :data:`NOT_AGORA`) reuses it too.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from agora import loop, report
from agora import train as T
from agora.guard import Guard
from agora.transform import GSettings, Neighbours, TextTransform, has_mlm_head, sentence_embedder
from bort import families as F
from bort import metrics
from bort.artifacts import (
    MANIFEST,
    Manifest,
    atomic_write_json,
    is_up_to_date,
    read_manifest,
    sha256_file,
    stage_dir,
    stage_fingerprint,
    write_manifest,
)
from bort.config import RunConfig
from bort.errors import ArtifactError, BortError, ConfigError
from bort.task import Example

log = logging.getLogger(__name__)
STAGE = "finetune"
# finetune settings the Agora loop and its inputs do not read: the distillation arm, the deploy
# choice, the labeller's gate, the ablation (a rerun of the loop's path) and where θ runs execute
# (Ray or inline give the same rows). Changing them reuses a finished loop (agora_fingerprint).
NOT_AGORA = ("distil", "distil_epochs", "distil_lr", "distil_temperature", "distil_alpha", "distil_augment",
             "distil_candidates", "distil_from", "choice_alpha", "labeller_min_margin", "ablation", "executor",
             "ray_address")
TRAIN_KEYS = ("seq_len", "batch_size", "weight_decay", "warmup_ratio", "grad_clip", "freeze_word_embeddings", "min_steps")


class LabellerTooWeakError(BortError):
    """The labeller does not beat the majority baseline by ``finetune.labeller_min_margin``."""


@dataclass
class Trained:
    """A classifier, its tokenizer, its dev scores and how long it took (0 when cached)."""

    model: Any
    tokenizer: Any
    dev: dict[str, Any]
    seconds: float
    cached: bool = False


def run(cfg: RunConfig, run_dir: Path, args: Any = None) -> Manifest:
    """Make the labeller, plain and Agora classifiers; write models, log, plot, report, manifest."""
    import torch

    from bort import data

    started, run_dir = time.time(), Path(run_dir)
    if cfg.finetune.num_threads:
        torch.set_num_threads(cfg.finetune.num_threads)
    # a CUDA device torch does not see, or bf16 where it would be emulated: ConfigError, one line
    device = T.set_device(cfg.finetune.device, cfg.finetune.precision)
    log.info("finetune runs on %s in %s", device, T.current_precision())
    student_dir, upstream = locate_student(cfg, run_dir)
    fingerprint = stage_fingerprint(cfg, STAGE, upstream={"pretrain": upstream})
    if is_up_to_date(run_dir, STAGE, fingerprint):
        log.info("finetune is up to date in %s", run_dir)
        return read_manifest(run_dir, STAGE)
    out = stage_dir(run_dir, STAGE)
    (out / MANIFEST).unlink(missing_ok=True)  # a half-done rerun must not look finished
    task = data.load_prepared(run_dir)
    guard = Guard(task.test)
    train, whole_dev = guard.filter(task.train, "train"), guard.filter(task.dev, "dev")
    dev, choice = split_choice(whole_dev, cfg)
    source = F.resolve_source(cfg.source.model)
    judge = Judge.for_task(cfg, task, whole_dev)
    log.info("finetune: models are picked by dev %s (%s)", judge.metric, judge.why)
    recipe = choose_recipe(cfg, len(train), len(choice))
    log.info("finetune recipe: %s", recipe["why"])
    labeller = ensure_labeller(cfg, out, source, task.labels, train, whole_dev, guard)
    labeller_gate = check_labeller(labeller, cfg, judge)
    plain = ensure_plain(cfg, out, student_dir, upstream, task.labels, train, dev, guard)
    transform = make_transform(cfg, source, labeller, guard)
    trained = {"labeller": labeller, "plain": plain}
    if cfg.finetune.distil:
        trained["distil"] = ensure_distilled(cfg, out, student_dir, upstream, task.labels, train, dev, guard,
                                             labeller, transform)
    agora_started = time.time()
    inputs = agora_inputs(cfg, student_dir, task.labels, train, dev, guard, labeller, plain, judge.metric,
                           transform)
    loop_cfg = cfg if recipe["agora_loop"] else cfg.model_copy(
        update={"finetune": cfg.finetune.model_copy(update={"max_rounds": 1})})  # round 1: Θ enumeration
    result = loop.run_agora(inputs, loop_cfg, out / "checkpoints" / "agora",
                            agora_fingerprint(loop_cfg, {"pretrain": upstream}))
    T.save_classifier(result.model, plain.tokenizer, out / "models" / "agora")
    seconds = sum(r.get("seconds", 0.0) for r in result.rows) if result.cached else time.time() - agora_started
    trained["agora"] = Trained(result.model, plain.tokenizer, result.dev, round(seconds, 1), cached=result.cached)
    facts = _metrics(cfg, task, trained, result, guard, judge, choice, recipe["recommended"])
    facts["labeller_gate"], facts["recipe"] = labeller_gate, recipe
    if cfg.finetune.ablation:
        facts["ablation"] = _ablation(cfg, inputs, result, task.test)
    facts["seconds"]["total"] = round(time.time() - started, 1)
    report.write_rounds(out, result.rows)
    report.plot_rounds(out / "accuracy.png", result.rows, {"plain": plain.dev, "labeller": labeller.dev},
                       judge.metric)
    report.write_report(out, facts, result.rows, cfg)
    return write_manifest(run_dir, STAGE, cfg, fingerprint=fingerprint, metrics=facts,
                          inputs={"pretrain": upstream}, started=started)


def agora_fingerprint(cfg: RunConfig, upstream: dict[str, str]) -> str:
    """The stage's fingerprint with the settings the Agora loop does not read (:data:`NOT_AGORA`) at
    their defaults: what the loop's checkpoint is kept under."""
    defaults = type(cfg.finetune).model_fields
    neutral = cfg.finetune.model_copy(update={k: defaults[k].get_default(call_default_factory=True)
                                              for k in NOT_AGORA})
    return stage_fingerprint(cfg.model_copy(update={"finetune": neutral}), STAGE, upstream=upstream)


def split_choice(dev: list, cfg: RunConfig) -> tuple[list, list]:
    """Dev for the students' training and selection, and the rows held apart for the deploy choice
    (``finetune.choice_holdout`` of dev, stratified and seeded; none when it is 0)."""
    if cfg.finetune.choice_holdout <= 0:
        return dev, []
    split = loop.dev_split(dev, cfg.finetune.choice_holdout, cfg.seed, salt=loop.CHOICE_SALT)
    return [dev[i] for i in split.mine], [dev[i] for i in split.select]


def choose_recipe(cfg: RunConfig, n_train: int, n_choice: int) -> dict[str, Any]:
    """Whether Agora's rounds after the first run (``finetune.agora_loop``), and the sentence that
    says why; the report and the log carry it."""
    f = cfg.finetune
    on = f.agora_loop == "on" or (f.agora_loop == "auto" and n_train < f.loop_below)
    if f.agora_loop != "auto":
        why = f"Agora's loop {'on' if on else 'off'} (finetune.agora_loop={f.agora_loop})"
    elif on:
        why = (f"Agora's loop on: {n_train} training texts, below finetune.loop_below={f.loop_below}, where "
               "its points measured ahead of Θ enumeration (bench/results/agora_curve-min300.md)")
    else:
        why = (f"Agora's loop off, its model is Θ enumeration (round 1): {n_train} training texts, at least "
               f"finetune.loop_below={f.loop_below}; at 500 texts and at the full task its points added no more than "
               "the seeds' spread over enumeration (bench/results/agora_curve-min300.md, run-default.md)")
    if on or not f.distil:
        recommended = "agora"
        because = "Agora's loop" if on else "Θ enumeration (distil is off)"
    elif n_train >= f.distil_from:
        recommended, because = "distil", (f"distil, at {n_train} >= finetune.distil_from={f.distil_from} "
                                          "training texts (bench/results/run-default-choice.md)")
    else:
        recommended, because = "agora", (f"Θ enumeration, below finetune.distil_from={f.distil_from} training "
                                         "texts (at 500 on the curve, distil was 0.76 below it)")
    if n_choice:
        chosen = (f"the recipe's student is {because}, kept unless another beats it on {n_choice} held-out dev "
                  f"texts no student trained, mined or was selected on (paired p < {f.choice_alpha:g})")
    else:
        chosen = "the deploy choice reads each student's own dev score (finetune.choice_holdout=0)"
    return {"agora_loop": on, "recommended": recommended, "choice_texts": n_choice, "why": f"{why}; {chosen}"}


def locate_student(cfg: RunConfig, run_dir: Path) -> tuple[Path, str]:
    """The student's folder and the fingerprint it stands for (pretrain's, or a folder's hash)."""
    if cfg.finetune.student:
        folder = Path(cfg.finetune.student).expanduser()
        weights = folder / "model.safetensors"
        if not (folder / "config.json").is_file() or not weights.is_file():
            raise ConfigError(f"finetune.student {str(folder)!r} must be a Hugging Face encoder folder with "
                              "config.json and model.safetensors; or leave it empty to use `bort pretrain`'s")
        return folder.resolve(), "folder:" + sha256_file(weights)[:16]
    try:
        manifest = read_manifest(run_dir, "pretrain")
    except ArtifactError as e:
        raise ArtifactError(f"{e}; or set finetune.student to an encoder folder") from e
    return manifest.dir / "model", manifest.fingerprint


def _part_fingerprint(cfg: RunConfig, keys: tuple[str, ...], extra: dict[str, Any]) -> str:
    data = cfg.to_dict()
    f = data["finetune"]
    task = {k: v for k, v in data["task"].items() if k != "metric"}  # how models are judged, not trained
    blob = {"seed": cfg.seed, "task": task, **{k: f[k] for k in keys}, **extra}
    if T.current_precision() != "fp32":  # a bf16 part is another model; fp32 parts keep their old keys
        blob["precision"] = T.current_precision()
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


def _cached(out: Path, name: str, fingerprint: str) -> dict[str, Any] | None:
    """The part record when models/<name> was made with this fingerprint and is unchanged."""
    record, weights = out / "parts" / f"{name}.json", out / "models" / name / "model.safetensors"
    if not record.is_file() or not weights.is_file():
        return None
    data = json.loads(record.read_text(encoding="utf-8"))
    if data.get("fingerprint") != fingerprint or data.get("sha256") != sha256_file(weights):
        return None
    return data


def _train_part(cfg: RunConfig, out: Path, name: str, fingerprint: str, encoder_dir: Path, labels: list[str],
                spec: T.TrainSpec, train: list, dev: list, guard: Guard,
                make_soft: Callable[[], tuple[list, T.SoftTargets]] | None = None) -> Trained:
    """Load a cached part, or fine-tune `encoder_dir` on train (or on what `make_soft` returns, with
    soft targets), score dev, save, record. A killed fine-tune resumes from its last checkpoint."""
    f = cfg.finetune
    if (record := _cached(out, name, fingerprint)) is not None:
        log.info("%s: cached (%s)", name, out / "models" / name)
        model, tokenizer = T.load_classifier(out / "models" / name), F.load_tokenizer(out / "models" / name)
        dev_scores = record["dev"]
        if not set(metrics.METRICS) <= set(dev_scores):  # recorded before bort scored every metric
            dev_scores = T.evaluate(model, tokenizer, dev, f.seq_len, f.eval_batch_size, guard)
        return Trained(model, tokenizer, dev_scores, record["seconds"], cached=True)
    started = time.time()
    tokenizer = _tokenizer(encoder_dir, cfg)
    model = T.new_classifier(encoder_dir, labels, spec.seed)
    examples, soft = (train, None) if make_soft is None else make_soft()
    T.fine_tune(model, tokenizer, examples, spec, f.seq_len, guard, desc=name, soft=soft,
                resume=T.Resume(out / "checkpoints" / name, fingerprint))
    scored = T.evaluate(model, tokenizer, dev, f.seq_len, f.eval_batch_size, guard)
    dev_scores = {k: v for k, v in scored.items() if k != "pred"}
    T.save_classifier(model, tokenizer, out / "models" / name)
    seconds = round(time.time() - started, 1)
    atomic_write_json(out / "parts" / f"{name}.json", {
        "fingerprint": fingerprint, "dev": dev_scores, "seconds": seconds, "examples": len(examples),
        "sha256": sha256_file(out / "models" / name / "model.safetensors")})
    log.info("%s: dev accuracy %.4f, macro-F1 %.4f (%.0f s)", name, dev_scores["accuracy"],
             dev_scores["macro_f1"], seconds)
    return Trained(model, tokenizer, {**dev_scores, "pred": scored["pred"]}, seconds)


def _tokenizer(folder: Path, cfg: RunConfig) -> Any:
    """The folder's tokenizer; the source's when the folder has none (a bare weights folder)."""
    if any((folder / name).is_file() for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json")):
        return F.load_tokenizer(folder)
    log.warning("%s has no tokenizer files; using the source model's tokenizer", folder)
    return F.load_tokenizer(F.resolve_source(cfg.source.model).folder)


def ensure_labeller(cfg: RunConfig, out: Path, source: Any, labels: list[str], train: list, dev: list,
                    guard: Guard) -> Trained:
    """The source model fine-tuned on the task (cached in the run for the same settings)."""
    f = cfg.finetune
    spec = T.TrainSpec(lr=f.labeller_lr, weight_decay=f.weight_decay, warmup_ratio=f.warmup_ratio,
                       epochs=f.labeller_epochs, batch_size=f.batch_size, seed=cfg.seed, grad_clip=f.grad_clip,
                       freeze_word_embeddings=f.freeze_word_embeddings, min_steps=f.min_steps)
    fp = _part_fingerprint(cfg, (*TRAIN_KEYS, "labeller_epochs", "labeller_lr"),
                           {"source": cfg.source.model, "source_config": source.config.to_json_string()})
    return _train_part(cfg, out, "labeller", fp, source.folder, labels, spec, train, dev, guard)


def check_labeller(labeller: Trained, cfg: RunConfig, judge: Judge) -> dict[str, Any]:
    """Agora needs an ok-ish labeller: its chance-corrected dev score (MCC for two classes, macro-F1
    for more) must beat the majority baseline's by ``finetune.labeller_min_margin`` points.

    Raises:
        LabellerTooWeakError: naming the scores, the margin and what to change.
    """
    metric = metrics.chance_corrected(len(judge.labels))
    verdict = metrics.gate("the labeller", labeller.dev, judge.dev_baselines["majority"], metric,
                           cfg.finetune.labeller_min_margin)
    if not verdict["passed"]:
        raise LabellerTooWeakError(
            f"{verdict['text']}: the labeller (source model {cfg.source.model!r} fine-tuned on the task) "
            "would teach the student noise. Train it longer (finetune.labeller_epochs), use a stronger "
            "source model or more data, or lower finetune.labeller_min_margin if you accept that")
    return verdict


def ensure_plain(cfg: RunConfig, out: Path, student_dir: Path, upstream: str, labels: list[str], train: list,
                 dev: list, guard: Guard) -> Trained:
    """The control: the student fine-tuned on the training split alone (cached like the labeller)."""
    spec = plain_spec(cfg)
    fp = _part_fingerprint(cfg, (*TRAIN_KEYS, "epochs", "lr", "student_seed", "choice_holdout"), {"student": upstream})
    return _train_part(cfg, out, "plain", fp, student_dir, labels, spec, train, dev, guard)


def ensure_distilled(cfg: RunConfig, out: Path, student_dir: Path, upstream: str, labels: list[str], train: list,
                     dev: list, guard: Guard, labeller: Trained, transform: TextTransform) -> Trained:
    """Task-specific distillation (TinyBERT's recipe): the student trained to the labeller's soft
    outputs on the training texts and on G's perturbations of them (``finetune.distil_augment`` per
    text), cached like the other parts."""
    f = cfg.finetune
    spec = T.TrainSpec(lr=f.distil_lr, weight_decay=f.weight_decay, warmup_ratio=f.warmup_ratio,
                       epochs=f.distil_epochs, batch_size=f.batch_size, seed=f.students_seed(cfg.seed),
                       grad_clip=f.grad_clip,
                       freeze_word_embeddings=f.freeze_word_embeddings, min_steps=f.min_steps)
    keys = (*TRAIN_KEYS, "student_seed", "choice_holdout", "distil_epochs", "distil_lr", "distil_temperature", "distil_alpha", "distil_augment",
            "distil_candidates", "similarity_band", "edit_rate", "neighbours", "embedder")
    fp = _part_fingerprint(cfg, keys, {"student": upstream,
                                       "labeller": json.loads((out / "parts" / "labeller.json").read_text())["sha256"]})

    def make_soft() -> tuple[list, T.SoftTargets]:
        points: list = []
        if f.distil_augment > 0:
            g = TextTransform(transform.neighbours, transform.embed,
                              replace(transform.settings, k=f.distil_augment, candidates=f.distil_candidates),
                              guard, transform.mlm)
            made, stats = g(train, np.random.default_rng([f.students_seed(cfg.seed), 11]))
            points = [Example(p.text, -1, p.text_pair) for p in made]
            log.info("distil: G made %d new texts from %d training texts (%d tries, %d in band)", len(points),
                     len(train), stats.candidates, stats.in_band)
        examples = list(train) + points
        probs = T.predict(labeller.model, labeller.tokenizer, examples, f.seq_len, f.eval_batch_size, fast=True)
        return examples, T.SoftTargets(probs, f.distil_temperature, f.distil_alpha)

    return _train_part(cfg, out, "distil", fp, student_dir, labels, spec, train, dev, guard, make_soft)


def plain_spec(cfg: RunConfig) -> T.TrainSpec:
    """Plain fine-tuning's settings: the ``finetune`` section's own values."""
    f = cfg.finetune
    return T.TrainSpec(lr=f.lr, weight_decay=f.weight_decay, warmup_ratio=f.warmup_ratio, epochs=f.epochs,
                       batch_size=f.batch_size, seed=f.students_seed(cfg.seed), grad_clip=f.grad_clip,
                       freeze_word_embeddings=f.freeze_word_embeddings, min_steps=f.min_steps)


def make_transform(cfg: RunConfig, source: Any, labeller: Trained, guard: Guard) -> TextTransform:
    """G: neighbours from the labeller's word embeddings, the band's sentence embedder, the guard."""
    f = cfg.finetune
    if f.embedder == "source":
        with T.quiet_transformers():
            encoder = F.load_encoder(source.folder, add_pooling_layer=False)
        embed = sentence_embedder(encoder, F.load_tokenizer(source.folder), f.seq_len, f.eval_batch_size)
    else:
        embed = sentence_embedder(labeller.model.base_model, labeller.tokenizer, f.seq_len, f.eval_batch_size)
    guard.attach_embeddings(embed, near_copy_cosine=f.similarity_band[1])
    weight = labeller.model.get_input_embeddings().weight.detach().numpy()
    mlm = None
    if has_mlm_head(source.folder):
        from transformers import AutoModelForMaskedLM

        mlm = (AutoModelForMaskedLM.from_pretrained(source.folder, use_safetensors=True).eval(),
               F.load_tokenizer(source.folder))
    log.info("G: substitute / drop / swap%s", " / MLM infill" if mlm else " (no MLM head: no infill)")
    settings = GSettings(k=f.points_per_mistake, candidates=f.candidates_per_mistake, band=f.similarity_band,
                         edit_rate=f.edit_rate, max_words=f.seq_len)
    return TextTransform(Neighbours(labeller.tokenizer, weight, f.neighbours), embed, settings, guard, mlm)


def agora_inputs(cfg: RunConfig, student_dir: Path, labels: list[str], train: list, dev: list, guard: Guard,
                  labeller: Trained, plain: Trained, metric: str, transform: TextTransform) -> loop.AgoraInputs:
    """Wire G and the labelling function into the loop's inputs."""
    f = cfg.finetune

    def label(points: list) -> Any:
        return T.predict(labeller.model, labeller.tokenizer, points, f.seq_len, f.eval_batch_size, fast=True)

    teacher = None
    if f.mistakes == "teachable":  # the labeller's own dev scores are on all of dev, the loop's dev is a part
        teacher = T.evaluate(labeller.model, labeller.tokenizer, dev, f.seq_len, f.eval_batch_size, guard)["pred"]
    return loop.AgoraInputs(student_dir, plain.tokenizer, labels, train, dev, guard, transform, label,
                            plain=(plain_spec(cfg), plain.model), labeller_dev_pred=teacher, metric=metric)


def _ablation(cfg: RunConfig, inputs: loop.AgoraInputs, result: loop.AgoraResult, test: list) -> dict[str, Any]:
    """Scores of Agora's path re-run without its new points (see :func:`agora.loop.more_epochs_only`)."""
    f = cfg.finetune
    started = time.time()
    model = loop.more_epochs_only(inputs, cfg, result)
    dev = T.evaluate(model, inputs.tokenizer, inputs.dev, f.seq_len, f.eval_batch_size, inputs.guard)
    scored = T.evaluate(model, inputs.tokenizer, test, f.seq_len, f.eval_batch_size)
    return {**_public(scored), "dev_accuracy": dev["accuracy"], "dev": _public(dev),
            "seconds": round(time.time() - started, 1)}


def _metrics(cfg: RunConfig, task: Any, models: dict[str, Trained], result: loop.AgoraResult,
             guard: Guard, judge: Judge, choice: list, recommended: str) -> dict[str, Any]:
    """Test scores of the three models (and of round 1 alone) beside the baselines, the deploy choice
    and the facts the deploy gate reads, counts and times."""
    f = cfg.finetune
    test = {name: T.evaluate(m.model, m.tokenizer, task.test, f.seq_len, f.eval_batch_size)
            for name, m in models.items()}
    enum = T.evaluate(result.round1_model, models["plain"].tokenizer, task.test, f.seq_len, f.eval_batch_size)
    metric = judge.metric
    if choice:
        held = {n: T.evaluate(models[n].model, models[n].tokenizer, choice, f.seq_len, f.eval_batch_size, guard)
                for n in STUDENTS if n in models}
        deploy, reason = choose_held_out(held, [e.label for e in choice], len(task.labels), metric, recommended,
                                         f.choice_alpha, cfg.seed)
        scores = {n: {**_public(h), **({"p_vs_recommended": h["p"]} if "p" in h else {})} for n, h in held.items()}
    else:
        scores = {n: _public(models[n].dev) for n in STUDENTS if n in models}
        deploy, reason = choose_student(scores, metric, "dev")
    acc = {name: test[name]["accuracy"] for name in models}
    gap = acc["labeller"] - acc["plain"]
    closed = (acc["agora"] - acc["plain"]) / gap if gap > 0 else None
    first = result.rows[0]
    return {
        "task": task.name, "labels": list(task.labels), "deploy": deploy, "deploy_reason": reason,
        "metric": metric, "metric_reason": judge.why, "chance_metric": metrics.chance_corrected(len(task.labels)),
        "test": {n: _public(test[n]) for n in models}, "dev": {n: _public(m.dev) for n, m in models.items()},
        "choice": scores if choice else {}, "choice_texts": len(choice),
        "baselines": {"dev": judge.dev_baselines, "test": judge.test_baselines},
        "deploy_gate": judge.gate_facts(deploy, models[deploy], cfg, guard),
        "accuracy": acc, "macro_f1": {n: test[n]["macro_f1"] for n in models},
        "dev_accuracy": {n: m.dev["accuracy"] for n, m in models.items()},
        "dev_macro_f1": {n: m.dev["macro_f1"] for n, m in models.items()},
        "enumeration": {**_public(enum), "dev_accuracy": first["dev_accuracy"]},
        "gap_closed": None if closed is None else round(closed, 4),
        "gap_closed_by": {n: round((acc[n] - acc["plain"]) / gap, 4) if gap > 0 else None
                          for n in models if n not in ("labeller", "plain")},
        "gap_closed_text": "n/a (the labeller is not ahead of plain on test)" if closed is None else
        f"{100 * closed:.0f}% of the labeller's {100 * gap:.2f}-point lead over plain on test",
        "rounds": max(r["round"] for r in result.rows), "iterations": len(result.rows),
        "replays": sum(bool(r["replay"]) for r in result.rows), "best_iteration": result.best_iteration,
        "points_made": sum(r["made"] for r in result.rows), "points_kept": sum(r["kept"] for r in result.rows),
        "stop_reason": result.stop_reason, "labeller_cached": models["labeller"].cached,
        "plain_cached": models["plain"].cached, "agora_cached": models["agora"].cached, "device": str(T.current_device()),
        "precision": T.current_precision(),
        "seconds": {name: m.seconds for name, m in models.items()},
        "guard": {"test_texts": len(guard), "dropped": dict(guard.dropped)},
        "sizes": {"train": len(task.train), "dev": len(task.dev), "test": len(task.test)},
        "models": {name: f"models/{name}" for name in models},
    }


STUDENTS = ("agora", "distil", "plain")  # the deploy choice's order among equals


def choose_student(scored: dict[str, dict[str, float]], metric: str, where: str) -> tuple[str, str]:
    """The student to deploy: the best `metric` in `scored` (scores on `where`) among plain, Agora and
    (when trained) distillation."""
    scores = {n: scored[n][metric] for n in STUDENTS if n in scored}
    best = max(scores, key=lambda n: (scores[n], -STUDENTS.index(n)))
    others = ", ".join(f"{n} {v:.4f}" for n, v in scores.items() if n != best)
    return best, f"best {where} {metric}: {best} {scores[best]:.4f} (against {others})"


def choose_held_out(held: dict[str, dict[str, Any]], gold: list[int], n_labels: int, metric: str, recommended: str,
                    alpha: float, seed: int) -> tuple[str, str]:
    """The student to deploy from held-out dev predictions: the recipe's `recommended` one, unless
    another scores higher there with a paired permutation p below `alpha` (then the best of those).
    Each challenger's p is written into its entry of `held` (``"p"``)."""
    base = held[recommended]
    better = {}
    for name, h in held.items():
        if name != recommended and h[metric] > base[metric]:
            h["p"] = round(metrics.paired_p(gold, base["pred"], h["pred"], n_labels, metric, seed=seed), 4)
            if h["p"] < alpha:
                better[name] = h[metric]
    if better:
        best = max(better, key=lambda n: (better[n], -STUDENTS.index(n)))
        return best, (f"held-out dev {metric}: {best} {held[best][metric]:.4f} beats the recipe's {recommended} "
                      f"{base[metric]:.4f} (paired p = {held[best]['p']:.3g} < {alpha:g})")
    others = ", ".join(f"{n} {h[metric]:.4f}" + (f" (p = {h['p']:.3g})" if "p" in h else "")
                       for n, h in held.items() if n != recommended)
    return recommended, (f"the recipe's {recommended}: held-out dev {metric} {base[metric]:.4f}, no other student "
                         f"better with paired p < {alpha:g} ({others})")


def _public(scored: dict[str, Any]) -> dict[str, float]:
    """The metrics of an evaluation, without its predictions."""
    return {k: scored[k] for k in metrics.METRICS if k in scored}


@dataclass
class Judge:
    """How this task's models are judged: the metric (and why), and the baselines on dev and test."""

    metric: str
    why: str
    labels: list[str]
    dev: list  # the dev examples models are scored on (after the guard's filter)
    dev_baselines: dict[str, dict[str, float]]
    test_baselines: dict[str, dict[str, float]]

    @classmethod
    def for_task(cls, cfg: RunConfig, task: Any, dev: list) -> Judge:
        train = [e.label for e in task.train]
        n = len(task.labels)
        metric, why = metrics.choose_metric(cfg.task.metric, train, n)
        return cls(metric, why, list(task.labels), dev, metrics.baselines(train, [e.label for e in dev], n),
                   metrics.baselines(train, [e.label for e in task.test], n))

    def gate_facts(self, name: str, model: Trained, cfg: RunConfig, guard: Guard) -> dict[str, Any]:
        """What the deploy gate (``bort export``) decides on: the deployed student's dev score on the
        task's metric, the majority baseline's, and a permutation test of its dev predictions."""
        f = cfg.finetune
        dev = T.evaluate(model.model, model.tokenizer, self.dev, f.seq_len, f.eval_batch_size, guard)
        p_value = metrics.permutation_p([e.label for e in self.dev], dev["pred"], len(self.labels), self.metric,
                                        seed=cfg.seed)
        return {"model": name, "metric": self.metric, "dev": _public(dev),
                "majority": self.dev_baselines["majority"], "p_value": round(p_value, 6),
                "predicted_classes": int(len(set(dev["pred"].tolist())))}
