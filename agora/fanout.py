"""One round's θ fine-tunes, inline or as Ray tasks (``finetune.executor``).

Each θ's fine-tune in a round is independent of the others: it starts from the student (round 1,
or without warm start) or from the best model so far, trains on the same D and is scored on
dev. :class:`ThetaRun` is that one fine-tune; everything it needs (the student's folder as
bytes, the tokenizer, D, dev, the guard, the best model) travels with it, so on Ray it is put in
the object store once per round and each θ is a task declaring ``max(1, finetune.num_threads)``
CPUs, run with that many torch threads. With ``finetune.num_threads`` set, a θ's model and dev
scores are the same on Ray as inline: the same seed, data order and threads.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agora import train as T
from bort.cluster import PackedFolder, pack_folder, unpack_folder

log = logging.getLogger(__name__)


@dataclass
class ThetaRun:
    """One θ's fine-tune and dev scores, for any θ of one round."""

    student: Path | PackedFolder
    labels: list[str]
    tokenizer: Any
    train: list[Any]
    dev: list[Any]
    guard: Any
    seq_len: int
    eval_batch_size: int
    start: Any = None  # the best model so far, for warm-started θ
    threads: int = 0  # torch threads on a Ray worker (0: leave as they are, inline)
    device: str = "cpu"
    precision: str = "fp32"  # as resolved in the driver

    def __call__(self, name: str, spec: T.TrainSpec, warm: bool, desc: str) -> tuple[Any, dict[str, Any]]:
        if self.threads:
            import torch

            torch.set_num_threads(self.threads)
            T.set_device(self.device, self.precision)
        student = self.student if isinstance(self.student, Path) else unpack_folder(self.student)
        model = copy.deepcopy(self.start) if warm else T.new_classifier(student, self.labels, spec.seed)
        T.fine_tune(model, self.tokenizer, self.train, spec, self.seq_len, self.guard, desc=desc)
        dev = T.evaluate(model, self.tokenizer, self.dev, self.seq_len, self.eval_batch_size, self.guard)
        return model, dev

    def portable(self, threads: int) -> ThetaRun:
        """This run for another machine: the student's folder as bytes, torch threads fixed."""
        student = pack_folder(self.student) if isinstance(self.student, Path) else self.student
        return ThetaRun(student, self.labels, self.tokenizer, self.train, self.dev, self.guard, self.seq_len,
                        self.eval_batch_size, self.start, threads, str(T.current_device()),
                        T.current_precision())


@contextlib.contextmanager
def theta_executor(f: Any) -> Iterator[Any]:
    """None for ``finetune.executor=inline``; a :class:`bort.cluster.RayExecutor` for ``ray``
    (a GPU per task when this process fine-tunes on one)."""
    if f.executor != "ray":
        yield None
        return
    from bort.cluster import RayExecutor, connected

    with connected(f.ray_address, "finetune.executor") as ray:
        gpus = 1.0 if T.current_device().type == "cuda" else 0.0
        executor = RayExecutor(ray, num_cpus=float(max(1, f.num_threads)), num_gpus=gpus)
        try:
            yield executor
        finally:
            executor.shutdown()


def run_thetas(run: ThetaRun, jobs: list[tuple[str, T.TrainSpec, bool, str]], executor: Any,
               threads: int) -> Iterator[tuple[str, Any, dict[str, Any]]]:
    """(θ name, model, dev scores) per job, in the jobs' order: one after the other inline, all at
    once on Ray (the run put in the object store once)."""
    if executor is None:
        for name, spec, warm, desc in jobs:
            yield (name, *run(name, spec, warm, desc))
        return
    shared = run.portable(threads)
    futures = [(job[0], executor.submit(shared, *job)) for job in jobs]
    for name, future in futures:
        yield (name, *future.result())
