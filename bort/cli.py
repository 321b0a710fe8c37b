"""The ``bort`` command. Heavy libraries are imported inside commands so ``--help`` is instant.

Exit codes: 0 done; 2 a user mistake (one ``error:`` line); 1 a bug (traceback); 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from pathlib import Path

from bort.errors import BortError

# command -> (module, function, one-line help). Each function takes (cfg, run_dir, args).
STAGES: dict[str, tuple[str, str, str]] = {
    "optimize": ("optimize.stage", "run", "search the Pareto front of sub-architectures on this CPU"),
    "pretrain": ("optimize.pretrain", "run", "extract the chosen shape from the source and distil it"),
    "finetune": ("agora.stage", "run", "fine-tune labeller, plain and Agora classifiers"),
    "export": ("serve.export", "run", "export to ONNX (fp32, int8), check parity, register in BentoML"),
    "serve": ("serve.server", "run", "serve the optimised (or baseline) model over HTTP on 127.0.0.1"),
    "loadtest": ("loadtest.stage", "run", "load-test baseline and optimised services side by side"),
    "run": ("bort.pipeline", "run", "the whole pipeline: optimize -> pretrain -> finetune -> export -> loadtest"),
}


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", action="append", default=[], metavar="FILE",
                   help="YAML config file (repeatable; later files win)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="override one setting, e.g. --set optimize.seq_len=64 (repeatable)")
    p.add_argument("--run-dir", default=None, help="run folder (default: runs/<profile>)")
    p.add_argument("--profile", default="default",
                   help="named config from configs/ applied first: default, quick, tiny (default: default)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bort",
        description="Optimal subarchitecture extraction, Agora fine-tuning and CPU serving for BERT encoders.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, _, text) in STAGES.items():
        p = sub.add_parser(name, help=text, description=text)
        _add_common(p)
        if name == "serve":
            p.add_argument("--model", choices=["optimized", "baseline"], default=None,
                           help="which exported model to serve (default: serve.model)")
            p.add_argument("--port", type=int, default=None, help="port (default: serve.port)")
        if name == "run":
            p.add_argument("--source", default=None, help="source model: minilm, mpnet, or a checkpoint folder")
            p.add_argument("--task", default=None, help="task: rotten_tomatoes, bbc_news, a CSV/JSONL file or GLUE folder")
    p = sub.add_parser("sources", help="what models and data can be loaded here",
                       description="List the embedded models and data sets and where they come from.")
    p.add_argument("--fetch", action="store_true", help="download and verify the embedded default assets")
    p.add_argument("--all", action="store_true", help="with --fetch: also all-mpnet-base-v2 (404 MB)")
    p = sub.add_parser("data", help="a task set's sizes and class balance",
                       description="Load the configured task, split it, and report sizes and balance.")
    _add_common(p)
    p.add_argument("--prepare", action="store_true", help="write the splits into the run folder")
    return parser


def resolve_config(args: argparse.Namespace):
    """Profile YAML <- --config files <- --set, plus the `run` shortcuts."""
    from bort import config as C

    overrides = list(args.overrides)
    if getattr(args, "source", None):
        overrides.append(f"source.model={args.source}")
    if getattr(args, "task", None):
        overrides.append(f"task.name={args.task}")
    if getattr(args, "model", None):
        overrides.append(f"serve.model={args.model}")
    if getattr(args, "port", None):
        overrides.append(f"serve.port={args.port}")
    return C.resolve([args.profile, *args.config], overrides)


def _run_dir(args: argparse.Namespace) -> Path:
    return Path(args.run_dir or f"runs/{args.profile}")


def _cmd_sources(args: argparse.Namespace) -> int:
    from bort import sources

    return sources.main(fetch=args.fetch, include_all=args.all)


def _cmd_data(args: argparse.Namespace) -> int:
    from bort import data

    cfg = resolve_config(args)
    return data.report(cfg, _run_dir(args), prepare=args.prepare)


def _cmd_stage(args: argparse.Namespace) -> int:
    module_name, func_name, _ = STAGES[args.command]
    cfg = resolve_config(args)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name == module_name:
            raise BortError(f"`bort {args.command}` is not implemented yet") from e
        raise
    result = getattr(module, func_name)(cfg, _run_dir(args), args)
    return result if isinstance(result, int) else 0


def main(argv: list[str] | None = None) -> int:
    # Spinning OpenMP threads collapse when the CPU is shared (training steps ran 2-6x slower).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    handler = {"sources": _cmd_sources, "data": _cmd_data}.get(args.command, _cmd_stage)
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
