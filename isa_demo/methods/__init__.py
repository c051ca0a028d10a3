"""Method registry: every CIR method of the project behind :class:`Method`.

``create_method(name, vl, **kw)`` builds one; ``METHODS`` maps names to factories. Trained
methods (ISA, masked-pair, single-token) add themselves here as they load checkpoints.
"""
from __future__ import annotations

from typing import Callable

from .base import PROMPT, Method, QueryError, clean_modifier
from .baselines import ImageOnly, Sum, TextOnly, caption_oracle

METHODS: dict[str, Callable[..., Method]] = {
    "image-only": lambda vl, **kw: ImageOnly(vl),
    "text-only": lambda vl, **kw: TextOnly(vl),
    "sum": lambda vl, **kw: Sum(vl),
}


def create_method(name: str, vl, **kwargs) -> Method:
    if name not in METHODS:
        raise KeyError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name](vl, **kwargs)


__all__ = ["METHODS", "PROMPT", "Method", "QueryError", "clean_modifier", "create_method", "caption_oracle"]
