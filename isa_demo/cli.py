"""The one command-line entry point: ``python -m isa_demo <command> ...`` (or ``isa-demo ...``).

Command groups are data: each entry below names a module whose ``register(subparsers)`` (or
``register_command(top)`` for a command without sub-commands) adds sub-commands with
``set_defaults(func=...)``; ``func(args)`` returns the exit code. Anything a user can cause
raises :class:`isa_demo.errors.UserError`, caught here, once, as a one-line message.
"""
from __future__ import annotations

import argparse
import importlib

from .options import run

GROUPS = {
    "world": ("build and inspect the built-in world", "isa_demo.world.cli"),
    "train": ("train models (vl, isa, masked-ti)", "isa_demo.training.cli"),
    "bench": ("benchmarks that print a table and write it to assets/results/", "isa_demo.bench.cli"),
    "index": ("gallery indexes: encode an image folder into a faiss index", "isa_demo.index.cli"),
}
# commands without sub-commands: name -> module with register_command(top)
SINGLE: dict[str, str] = {"eval": "isa_demo.evaluation.cli", "masking-sheet": "isa_demo.bench.masking",
                          "app": "isa_demo.app.cli"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m isa_demo", description=__doc__.splitlines()[0])
    top = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (help_text, module) in GROUPS.items():
        group = top.add_parser(name, help=help_text, description=help_text)
        importlib.import_module(module).register(group.add_subparsers(dest="subcommand", metavar="SUBCOMMAND",
                                                                      required=True))
    for module in SINGLE.values():
        importlib.import_module(module).register_command(top)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))
