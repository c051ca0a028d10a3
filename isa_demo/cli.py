"""The one command-line entry point: ``python -m isa_demo <command> ...``.

Command groups are data: each entry below names ``module`` (whose ``register(subparsers)`` is
called) or ``module:function``; it adds sub-commands with ``set_defaults(func=...)``, and
``func(args)`` returns the exit code.
"""
from __future__ import annotations

import argparse
import importlib
import sys

GROUPS = {
    "world": ("build and inspect the built-in world", ["isa_demo.world.cli"]),
    "train": ("train models (vl, isa, masked-ti)", ["isa_demo.vl.cli", "isa_demo.training.cli",
                                                      "isa_demo.training.masked_ti_cli"]),
    "bench": ("benchmarks that print a table and write it to assets/results/",
              ["isa_demo.vl.cli:register_bench", "isa_demo.evaluation.cli",
               "isa_demo.evaluation.efficiency:register_bench", "isa_demo.training.ablation:register_bench",
               "isa_demo.index.cli:register_bench", "isa_demo.app.cli:register_bench",
               "isa_demo.evaluation.prompts:register_bench", "isa_demo.evaluation.report:register_bench"]),
    "index": ("gallery indexes: encode an image folder into a faiss index", ["isa_demo.index.cli"]),
}
# commands without sub-commands: name -> module with register_command(subparsers)
SINGLE: dict[str, str] = {"eval": "isa_demo.evaluation.cli", "masking-sheet": "isa_demo.training.masked_ti_cli",
                          "app": "isa_demo.app.cli"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m isa_demo", description=__doc__.splitlines()[0])
    top = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (help_text, modules) in GROUPS.items():
        group = top.add_parser(name, help=help_text, description=help_text)
        sub = group.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
        for entry in modules:
            mod, _, func = entry.partition(":")
            getattr(importlib.import_module(mod), func or "register")(sub)
    for name, mod in SINGLE.items():
        importlib.import_module(mod).register_command(top)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
