"""The ``bort`` command. Heavy libraries are imported inside commands so ``--help`` is instant.

The stage commands come from the core's stage table (:data:`bort.stages.STAGES`); each resolves
its ``entry`` here, outside the core. Exit codes: 0 done; 2 a user mistake (one ``error:``
line); 1 a bug (traceback); 3 a load-test SLO missed; 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from pathlib import Path
from typing import Any

from bort.errors import BortError
from bort.stages import STAGES, Stage

RUN_HELP = "the whole pipeline: " + " -> ".join(s.name for s in STAGES if s.in_pipeline)
# Options that set a config key; `bort run` and `bort data` share the task/source ones.
SHORTCUTS = {"source": "source.model", "task": "task.name", "model": "serve.model", "port": "serve.port",
             "host": "serve.host", "model_dir": "serve.model_dir"}


def version() -> str:
    """The installed bort's version (the source tree's when it is not installed)."""
    from importlib import metadata

    try:
        return metadata.version("bort")
    except metadata.PackageNotFoundError:
        import bort

        return bort.__version__


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", action="append", default=[], metavar="FILE",
                   help="YAML config file (repeatable; later files win)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="override one setting, e.g. --set optimize.seq_len=64 (repeatable)")
    p.add_argument("--run-dir", default=None, help="run folder (default: runs/<profile>)")
    p.add_argument("--profile", default="default",
                   help="named config from configs/ applied first: default, quick, tiny, base (default: default)")


def _add_task_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", default=None, help="source model: minilm, mpnet, or a checkpoint folder")
    p.add_argument("--task", default=None, help="task: rotten_tomatoes, bbc_news, a CSV/JSONL file or GLUE folder")


def _add_force(p: argparse.ArgumentParser) -> None:
    p.add_argument("--force", action="store_true",
                   help="export and serve the student even when it fails the deploy gate (the report flags it)")


def _add_stage(sub: Any, stage: Stage) -> None:
    p = sub.add_parser(stage.name, help=stage.help, description=stage.help)
    _add_common(p)
    if stage.name == "data":
        _add_task_options(p)
        p.add_argument("--prepare", action="store_true", help="write the splits into the run folder")
    elif stage.name == "export":
        _add_force(p)
    elif stage.name == "serve":
        p.add_argument("--model", choices=["optimized", "baseline"], default=None,
                       help="which exported model of the run to serve (default: serve.model)")
        p.add_argument("--model-dir", default=None, metavar="DIR",
                       help="serve this folder instead of a run's export: a folder `bort export` wrote, "
                            "or a Hugging Face sequence classifier (exported to ONNX on the fly)")
        p.add_argument("--host", default=None, help="address to bind (default: serve.host, 127.0.0.1)")
        p.add_argument("--port", type=int, default=None, help="port (default: serve.port)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bort",
        description="Optimal subarchitecture extraction, Agora fine-tuning and CPU serving for BERT encoders.",
    )
    parser.add_argument("--version", action="version", version=f"bort {version()}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for stage in STAGES:
        _add_stage(sub, stage)
    p = sub.add_parser("run", help=RUN_HELP, description=RUN_HELP)
    _add_common(p)
    _add_task_options(p)
    _add_force(p)
    p = sub.add_parser("sources", help="what models and data can be loaded here",
                       description="List the embedded models and data sets and where they come from.")
    p.add_argument("--fetch", action="store_true", help="download and verify the embedded default assets")
    p.add_argument("--all", action="store_true", help="with --fetch: also all-mpnet-base-v2 (404 MB)")
    return parser


def resolve_config(args: argparse.Namespace) -> Any:
    """Profile YAML <- --config files <- --set, plus the command's shortcut options."""
    from bort import config as C

    overrides = list(args.overrides)
    for option, key in SHORTCUTS.items():
        value = getattr(args, option, None)
        if value is not None:
            overrides.append(f"{key}={value}")
    if getattr(args, "force", False):
        overrides.append("export.force=true")
    return C.resolve([args.profile, *args.config], overrides)


def run_dir_of(args: argparse.Namespace) -> Path:
    return Path(args.run_dir or f"runs/{args.profile}")


def entry_point(stage: Stage) -> Any:
    """The function a stage's ``entry`` names (``module:function``)."""
    module_name, _, func_name = stage.entry.partition(":")
    return getattr(importlib.import_module(module_name), func_name)


def _cmd_sources(args: argparse.Namespace) -> int:
    from bort import sources

    return sources.main(fetch=args.fetch, include_all=args.all)


def _cmd_run(args: argparse.Namespace) -> int:
    from pipeline import run

    return run.run(resolve_config(args), run_dir_of(args), args)


def _cmd_stage(args: argparse.Namespace) -> int:
    stage = next(s for s in STAGES if s.name == args.command)
    cfg = resolve_config(args)
    run_dir = run_dir_of(args)
    if "data" in stage.upstream:
        from bort import data

        data.prepare(cfg, run_dir)  # once, here: stages read the stored splits
    result = entry_point(stage)(cfg, run_dir, args)
    return result if isinstance(result, int) else 0


def main(argv: list[str] | None = None) -> int:
    # Spinning OpenMP threads collapse when the CPU is shared (training steps ran 2-6x slower).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    handler = {"sources": _cmd_sources, "run": _cmd_run}.get(args.command, _cmd_stage)
    try:
        return handler(args)
    except BortError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to continue where it stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
