"""The search's error estimate ê(ξ): short distillation runs on cached teacher batches.

The training engine is the one ``bort pretrain`` uses (:mod:`distillation`), but every setting
of it comes from ``optimize.error_*``: the search's estimate must not depend on how the chosen
shape is pretrained later, so changing ``pretrain.*`` never makes the search stale.

Steps per candidate: ``optimize.error_steps`` when set, else
``ceil(error_steps_scale / (epsilon * interval ** 1.5))`` — the paper's per-candidate term
``1 / (ε · s^{3/2})`` scaled by a constant (defaults: ε 0.1, s 4, scale 8 -> 10 steps).
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

from bort.config import OptimizeConfig, RunConfig
from bort.families import Arch, Source, Vocab, count_params


def error_steps(opt: OptimizeConfig) -> tuple[int, str]:
    """Steps per candidate, and the rule that gave them (for the report)."""
    if opt.error_steps:
        return opt.error_steps, "optimize.error_steps"
    steps = math.ceil(opt.error_steps_scale / (opt.epsilon * opt.interval ** 1.5))
    return steps, (f"ceil({opt.error_steps_scale:g} / (ε={opt.epsilon:g} · s={opt.interval:g}^1.5))")


class ProxyError:
    """Size-only stand-in for ê: log(source encoder params / candidate encoder params).

    For speed-only searches (``optimize.error_estimator=proxy``); it says nothing about accuracy.
    """

    def __init__(self, source: Source):
        self.family, self.vocab = source.family, Vocab.from_config(source.config)
        self.reference = count_params(source.arch, self.family, self.vocab)["effective"]

    def __call__(self, arch: Arch) -> float:
        return math.log(self.reference / count_params(arch, self.family, self.vocab)["effective"])


def teacher_cache(cfg: RunConfig, folder: str | Path, train_texts: list[str], heldout_texts: list[str],
                  n_batches: int = 32, n_heldout_batches: int = 8) -> Any:
    """The cache the search uses: ``cfg.source.model`` at ``optimize.error_batch_size``/``error_seq_len``."""
    from bort.families import resolve_source
    from distillation.teacher_cache import TeacherCache

    return TeacherCache.load_or_build(folder, resolve_source(cfg.source.model), train_texts, heldout_texts,
                                      seq_len=cfg.optimize.error_seq_len,
                                      batch_size=cfg.optimize.error_batch_size, n_batches=n_batches,
                                      n_heldout_batches=n_heldout_batches, seed=cfg.seed)


def estimate_error(source: Any, arch: Arch, opt: OptimizeConfig, cache: Any, steps: int, seed: int) -> float:
    """ê(ξ): distil a student at `arch` for `steps` on the cached teacher batches.

    Initialisation ``opt.error_init`` (inherit by default, as ``bort pretrain`` does), layers by
    ``opt.error_layer_selection``; lr ``opt.error_lr``, weight decay ``opt.error_weight_decay``,
    gradient clipping ``opt.error_grad_clip``, weight clipping ``opt.weight_clip``; batches come from
    `cache` (built with ``opt.error_batch_size`` / ``error_seq_len``). Global torch RNG state is
    left as it was.

    Args:
        source: a :class:`bort.families.Source` or its spec (``minilm``, a folder).
        arch: the candidate shape.
        opt: the ``optimize`` section.
        cache: a :class:`distillation.teacher_cache.TeacherCache` for this source.
        steps: optimiser steps.
        seed: seeds the student's initialisation, data order and dropout.

    Returns:
        Held-out distillation loss after training (lower is better).
    """
    import torch

    from distillation import trainer
    from distillation.extract import build_student
    from distillation.losses import Distiller

    src = cache.source
    name = getattr(source, "name", source)
    if name != src.name:
        raise ValueError(f"teacher cache was built for source {src.name!r}, not {name!r}")
    teacher = cache.teacher()
    init = opt.error_init
    student, _ = build_student(src, teacher, arch, init, cache.importance, seed, opt.error_layer_selection)
    channels = cache.channel_index(arch.hidden) if init == "inherit" else None
    distiller = Distiller(student, teacher.config, channel_index=channels, seed=seed)
    spec = trainer.TrainSpec(max_steps=steps, lr=opt.error_lr, weight_decay=opt.error_weight_decay,
                             warmup_ratio=0.1, grad_clip=opt.error_grad_clip, weight_clip=opt.weight_clip,
                             seed=seed)
    with torch.random.fork_rng(devices=[]):
        result = trainer.train(distiller, cache.train_batches(seed), spec, heldout=cache.heldout_batches(),
                               progress=False)
    return float(result.heldout_loss)


class DistillError:
    """ê by :func:`estimate_error`.

    Holds only picklable state so a process pool (``optimize.workers > 1``) can run it; each
    process loads the teacher cache once from its file.
    """

    def __init__(self, cfg: RunConfig, source: Source, texts: tuple[list[str], list[str]], steps: int):
        self.cfg, self.source, self.texts, self.steps = cfg, source, texts, steps
        self._cache = None

    def teacher_cache(self) -> Any:
        if self._cache is None:
            from bort.assets import cache_dir

            # As many training batches as a candidate takes steps (at least 8); 4 held-out
            # batches: every candidate is scored on the same ones, so the comparison is paired.
            self._cache = teacher_cache(self.cfg, cache_dir() / "teacher", *self.texts,
                                        n_batches=min(32, max(8, self.steps)), n_heldout_batches=4)
        return self._cache

    def __call__(self, arch: Arch) -> float:
        return estimate_error(self.source, arch, self.cfg.optimize, self.teacher_cache(), self.steps,
                              self.cfg.seed)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_cache": None}


def make_error_fn(cfg: RunConfig, source: Source, corpus: tuple[list[str], list[str]], steps: int) -> Any:
    """The configured ê; for ``distill``, the teacher cache is built now (before any latency is
    timed: phases never overlap)."""
    if cfg.optimize.error_estimator == "proxy":
        return ProxyError(source)
    fn = DistillError(cfg, source, corpus, steps)
    fn.teacher_cache()
    return fn


def error_key(cfg: RunConfig, steps: int) -> str:
    """What a stored ê depends on: source, task, corpus and the ``optimize.error_*`` settings."""
    opt = cfg.optimize
    data = {"base": cfg.section_fingerprint("source", "task", "corpus"), "steps": steps,
            "estimator": opt.error_estimator, "lr": opt.error_lr, "clip": opt.weight_clip,
            "batch": opt.error_batch_size, "seq": opt.error_seq_len, "init": opt.error_init,
            "layers": opt.error_layer_selection, "wd": opt.error_weight_decay, "grad_clip": opt.error_grad_clip}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]
