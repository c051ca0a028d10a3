"""Command-line options shared by every command: one spelling, one default, one parser each.

- :func:`add_vl_args`: ``--vl-model`` / ``--vl-pretrained`` (``--model`` / ``--pretrained`` are
  accepted too) and ``--device``, the same in every command that loads the VL model; "none" is
  read by :func:`isa_demo.settings.parse_pretrained` inside ``load_vl``, nowhere else.
- :func:`add_world_arg`: ``--world``, defaulting to :data:`isa_demo.settings.WORLD_DIR`.
- :func:`add_function_args`: flags generated from a library function's keyword defaults, so a
  default is written once (in the function's signature) and the ``--help`` text shows it;
  :func:`function_kwargs` reads them back for the call.
- :func:`command_line`: the command that reproduces parsed arguments (recorded with results).
- :func:`run`: runs parsed arguments; the one place a :class:`isa_demo.errors.UserError` becomes a
  one-line message (``python -m isa_demo`` and ``python app.py`` both end here).
"""
from __future__ import annotations

import argparse
import inspect
import shlex
import sys
from typing import Any, Callable

from .errors import UserError
from .settings import BUILTIN_PRETRAINED, BUILTIN_VL, WORLD_DIR

PRETRAINED_HELP = ("open_clip pretrained tag, a checkpoint path, 'builtin' (the shipped weights of the built-in "
                   "model) or 'none' (random weights)")


def add_vl_args(p: argparse.ArgumentParser, *, model: str | None = BUILTIN_VL,
                pretrained: str | None = BUILTIN_PRETRAINED, default_note: str | None = None,
                device: bool = True) -> None:
    """``--vl-model NAME --vl-pretrained TAG [--device DEV]``; ``dest`` is ``vl_model`` / ``vl_pretrained``."""
    note = default_note or f"default {model}"
    p.add_argument("--vl-model", "--model", dest="vl_model", default=model, metavar="NAME",
                   help=f"open_clip model name of the VL model ({note})")
    note = default_note or f"default {pretrained}"
    p.add_argument("--vl-pretrained", "--pretrained", dest="vl_pretrained", default=pretrained, metavar="TAG",
                   help=f"{PRETRAINED_HELP} ({note})")
    if device:
        add_device_arg(p)


def add_device_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, help="cpu / cuda (default: cuda when available)")


def add_world_arg(p: argparse.ArgumentParser, flag: str = "--world", help: str = "built world directory") -> None:
    p.add_argument(flag, default=str(WORLD_DIR), metavar="DIR", help=f"{help} (default {WORLD_DIR})")


def vl_kwargs(args: argparse.Namespace) -> dict:
    """``load_vl(**vl_kwargs(args))``."""
    return {"name": args.vl_model, "pretrained": args.vl_pretrained, "device": getattr(args, "device", None)}


def add_function_args(p: argparse.ArgumentParser, func: Callable, helps: dict[str, str],
                      choices: dict[str, Any] | None = None, short: dict[str, str] | None = None) -> None:
    """One ``--name`` flag per entry of ``helps`` (a keyword parameter of ``func``), its default and
    type taken from ``func``'s signature; booleans become ``--name/--no-name``."""
    params = inspect.signature(func).parameters
    for name, text in helps.items():
        default = params[name].default
        if default is inspect.Parameter.empty:
            raise TypeError(f"{func.__name__}({name}) has no default to expose")
        flags = ["--" + name.replace("_", "-")] + ([short[name]] if short and name in short else [])
        kw: dict[str, Any] = {"dest": name, "default": default,
                              "help": f"{text} (default {default})" if default is not None else text}
        if isinstance(default, bool):
            kw["action"] = argparse.BooleanOptionalAction
        elif isinstance(default, (int, float, str)):
            kw["type"] = type(default)
        else:  # None: the annotation says what a given value is ("int | None" -> int)
            note = str(params[name].annotation)
            kw["type"] = next((t for t in (int, float) if t.__name__ in note.replace("|", " ").split()), str)
        if choices and name in choices:
            kw["choices"] = choices[name]
        p.add_argument(*flags, **kw)


def function_kwargs(args: argparse.Namespace, func: Callable, names) -> dict:
    """The parsed values of the flags :func:`add_function_args` made for ``func``."""
    params = inspect.signature(func).parameters
    return {n: getattr(args, n) for n in names if n in params}


def command_line(args: argparse.Namespace, *words: str) -> str:
    """The command line that reproduces ``args`` (every option spelled out; works however the
    parser was called, from a shell or from ``main([...])``)."""
    parts = ["python", "-m", "isa_demo", *words]
    for key, value in vars(args).items():
        if key in ("func", "command", "subcommand") or value is None or value is False:
            continue
        parts.append("--" + key.replace("_", "-"))
        if value is not True:
            parts += [str(v) for v in value] if isinstance(value, list) else [str(value)]
    return shlex.join(parts)


def run(args: argparse.Namespace) -> int:
    """Run parsed arguments: the exit code, with a user's error as one line on stderr (code 2)."""
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
