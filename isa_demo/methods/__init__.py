"""Method registry: every CIR method of the project behind :class:`Method`.

``create_method(name, vl, **kw)`` builds one; ``METHODS`` maps names to factories. Trained
methods (ISA, masked-pair, single-token) add themselves here as they load checkpoints. A
method/backbone/checkpoint combination is a :class:`Variant`; :func:`shipped_variants` lists the
shipped ones.
"""
from __future__ import annotations

from typing import Callable

from ..settings import LIGHTEST_BACKBONE, SYMMETRIC
from .base import PROMPT, Method, QueryError, Reference, clean_modifier
from .baselines import ImageOnly, Sum, TextOnly
from .variant import Variant

METHODS: dict[str, Callable[..., Method]] = {
    "image-only": lambda vl, **kw: ImageOnly(vl),
    "text-only": lambda vl, **kw: TextOnly(vl),
    "sum": lambda vl, **kw: Sum(vl),
    "isa": lambda vl, backbone=LIGHTEST_BACKBONE, checkpoint=None, prompt=PROMPT, **kw:
        _isa(vl, backbone, checkpoint, prompt),
    "isa-symmetric": lambda vl, checkpoint=None, prompt=PROMPT, **kw: _isa(vl, SYMMETRIC, checkpoint, prompt),
    "masked-ti": lambda vl, checkpoint=None, prompt=PROMPT, **kw: _masked_ti(vl, "masked-ti", checkpoint, prompt),
    "single-token": lambda vl, checkpoint=None, prompt=PROMPT, **kw: _masked_ti(vl, "single-token", checkpoint, prompt),
}
PROMPT_METHODS = ("isa", "isa-symmetric", "masked-ti", "single-token")  # those that accept ``prompt=``


def _isa(vl, backbone, checkpoint, prompt):
    from .isa import ISA

    return ISA(vl, backbone=backbone or LIGHTEST_BACKBONE, checkpoint=checkpoint, prompt=prompt)


def _masked_ti(vl, name, checkpoint, prompt):
    from .masked_ti import MaskedTI, SingleToken

    return (SingleToken if name == "single-token" else MaskedTI)(vl, checkpoint=checkpoint, prompt=prompt)


def create_method(name: str, vl, **kwargs) -> Method:
    if name not in METHODS:
        raise KeyError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name](vl, **kwargs)


def shipped_variants(vl_name: str | None = None) -> list[dict]:
    """Every method/backbone the project ships for the built-in VL model ``vl_name`` (default: the
    default one; another VL model has only the training-free baselines), as ``create_method`` arguments:
    ``{"method": name, "backbone": str | None, "checkpoint": path | None}`` (:meth:`Variant.as_dict`).
    ``bench accuracy`` evaluates exactly these (plus the caption oracle)."""
    from ..models import SHIPPED_BACKBONES, shipped_checkpoint
    from ..models.masked_ti import shipped_variants as masked_ti_variants

    out = [Variant(name).as_dict() for name in ("image-only", "text-only", "sum")]
    out += [Variant("isa", b).as_dict() for b in SHIPPED_BACKBONES + [SYMMETRIC]
            if shipped_checkpoint(b, vl_name).exists()]
    return out + masked_ti_variants(vl_name)


def trained_variants(vl_name: str) -> list[dict]:
    """The query models trained here for a VL model other than a built-in one's shipped weights:
    ``RUNS_DIR/{isa,masked-ti}/*--{vl_name}.safetensors`` (where ``train isa|masked-ti`` writes
    them), newest first, as ``create_method`` arguments. Whether each one fits the loaded weights
    is checked by whoever offers them (the app's catalogue names those that do not)."""
    import json

    from ..common import read_metadata
    from ..settings import RUNS_DIR

    out = []
    for kind in ("isa", "masked-ti"):
        files = sorted((RUNS_DIR / kind).glob(f"*--{vl_name}.safetensors"), key=lambda f: -f.stat().st_mtime)
        for f in files:
            try:
                meta = read_metadata(f)
            except Exception:  # not a checkpoint (or being written): not offered
                continue
            if kind == "isa":
                out.append({"method": "isa", "backbone": json.loads(meta["config"])["backbone"], "checkpoint": str(f)})
            else:
                out.append({"method": meta.get("method", "masked-ti"), "backbone": None, "checkpoint": str(f)})
    return out


__all__ = ["METHODS", "PROMPT", "PROMPT_METHODS", "Method", "QueryError", "Reference", "Variant", "clean_modifier",
           "create_method", "shipped_variants", "trained_variants"]
