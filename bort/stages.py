"""The stage table: the one list of bort's stages that the CLI, ``bort run`` and the manifests read.

Each stage is a command (``bort <name>``) and, except ``serve``, an artifact folder
``runs/<run>/<name>/`` with a manifest. The table says which config sections a stage's output
depends on (its fingerprint) and which stages' manifests it reads. ``entry`` names the function
that runs the stage as ``module:function``; the core never imports it (the core knows no stage):
the CLI resolves it.
"""

from __future__ import annotations

from dataclasses import dataclass

from bort.errors import BortError


@dataclass(frozen=True)
class Stage:
    """One stage of the pipeline.

    Attributes:
        name: the command (``bort <name>``) and the artifact folder.
        entry: ``module:function`` taking ``(cfg, run_dir, args)``.
        help: one line for ``bort --help``.
        sections: config sections the stage's output depends on (with the seed: its fingerprint).
        upstream: stages whose manifests it reads (their fingerprints join its own).
        in_pipeline: part of ``bort run``.
        artifact: writes ``runs/<run>/<name>/manifest.json``.
    """

    name: str
    entry: str
    help: str
    sections: tuple[str, ...] = ()
    upstream: tuple[str, ...] = ()
    in_pipeline: bool = True
    artifact: bool = True

    @property
    def command(self) -> str:
        """The command that makes this stage's artifact."""
        return "bort data --prepare" if self.name == "data" else f"bort {self.name}"


STAGES: tuple[Stage, ...] = (
    Stage("data", "bort.data:command", "a task set's sizes and class balance; --prepare stores the splits",
          sections=("task",), in_pipeline=False),
    Stage("optimize", "optimize.stage:run", "search the Pareto front of sub-architectures on this CPU",
          sections=("source", "task", "corpus", "optimize"), upstream=("data",)),
    Stage("pretrain", "pretrain.stage:run", "extract the chosen shape from the source and distil it",
          sections=("source", "task", "corpus", "pretrain"), upstream=("data", "optimize")),
    Stage("finetune", "agora.stage:run", "fine-tune labeller, plain and Agora classifiers",
          sections=("source", "task", "finetune"), upstream=("data", "pretrain")),
    Stage("export", "serve.export:run", "export to ONNX (fp32, int8), check parity and accuracy, register in BentoML",
          sections=("task", "export"), upstream=("data", "finetune")),
    Stage("serve", "serve.server:run", "serve an exported model over HTTP (127.0.0.1 unless told otherwise)",
          upstream=("export",), in_pipeline=False, artifact=False),
    Stage("loadtest", "loadtest.stage:run", "load-test baseline and optimised services side by side",
          sections=("task", "serve", "loadtest"), upstream=("data", "finetune", "export")),
)
PIPELINE: tuple[Stage, ...] = tuple(s for s in STAGES if s.in_pipeline)


def stage(name: str) -> Stage:
    """The stage called `name`.

    Raises:
        BortError: no such stage (naming the ones there are).
    """
    for s in STAGES:
        if s.name == name:
            return s
    raise BortError(f"unknown stage {name!r}; the stages are {', '.join(s.name for s in STAGES)}")
