"""A variant: one method with one backbone and one checkpoint, as a typed value.

A :class:`Variant` is the identity of a selectable model everywhere above the registry (the
app's choices, its method cache, its "not available" notes); the strings people see are derived
from it, never parsed back. The symmetric ISA variant is the one place two spellings meet: its
identity is the backbone ``symmetric``, and its registry name ``isa-symmetric`` is derived from
that (:func:`isa_method_name`), so ``Variant("isa", "symmetric")`` and
``Variant("isa-symmetric")`` are the same value.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..settings import LIGHTEST_BACKBONE, REPO, SYMMETRIC

ISA_METHODS = ("isa", "isa-symmetric")


def isa_method_name(backbone: str | None) -> str:
    """The registry name of an ISA variant: ``isa-symmetric`` for the VL tower, else ``isa``."""
    return "isa-symmetric" if backbone == SYMMETRIC else "isa"


def _stem(path: str | None) -> str | None:
    return Path(path).stem if path else None


@dataclass(frozen=True)
class Variant:
    """``method`` (a registry name), ``backbone`` (ISA only) and ``checkpoint`` (None: the shipped
    one): the arguments of :func:`isa_demo.methods.create_method`, canonical so that equal
    models are equal values (an ISA variant always has its backbone)."""

    method: str
    backbone: str | None = None
    checkpoint: str | None = None

    def __post_init__(self):
        if self.method in ISA_METHODS:
            backbone = self.backbone or (SYMMETRIC if self.method == "isa-symmetric" else LIGHTEST_BACKBONE)
            object.__setattr__(self, "backbone", backbone)
            object.__setattr__(self, "method", isa_method_name(backbone))
        if self.checkpoint is not None:
            object.__setattr__(self, "checkpoint", os.fspath(self.checkpoint))

    @classmethod
    def of(cls, spec: "Variant | dict") -> "Variant":
        """From a ``{"method", "backbone", "checkpoint"}`` dict (:func:`shipped_variants`) or a variant."""
        if isinstance(spec, Variant):
            return spec
        return cls(spec["method"], spec.get("backbone"), spec.get("checkpoint"))

    def as_dict(self) -> dict:
        return {"method": self.method, "backbone": self.backbone, "checkpoint": self.checkpoint}

    def create_kwargs(self) -> dict:
        """Keyword arguments of ``create_method(self.method, vl, **...)``."""
        return {k: v for k, v in (("backbone", self.backbone), ("checkpoint", self.checkpoint)) if v is not None}

    @property
    def is_isa(self) -> bool:
        return self.method in ISA_METHODS

    # ------------------------------------------------------------------ what people see
    @property
    def label(self) -> str:
        """The method choice: ``isa`` for every ISA variant (they differ by backbone); another
        method's extra checkpoints (ablations) add the checkpoint's name: ``masked-ti [masked-ti-tau0.2]``."""
        if self.is_isa:
            return "isa"
        stem = _stem(self.checkpoint)
        return self.method if stem in (None, self.method) else f"{self.method} [{stem}]"

    @property
    def backbone_label(self) -> str | None:
        """The backbone choice (ISA only): the backbone, plus the checkpoint's name when it is not
        the backbone's own: ``resnet18 [resnet18-L1]``."""
        if not self.is_isa:
            return None
        stem = _stem(self.checkpoint)
        return self.backbone if stem in (None, self.backbone) else f"{self.backbone} [{stem}]"

    @property
    def display(self) -> str:
        """One line naming the variant: ``isa mobilenetv3_small_100``, ``masked-ti``."""
        return f"{self.label} {self.backbone_label}" if self.backbone_label else self.label

    @property
    def choice(self) -> tuple[str, str | None]:
        """``(label, backbone_label)``: what the user picks; two variants with one choice are one."""
        return self.label, self.backbone_label

    # ------------------------------------------------------------------ files
    def checkpoint_file(self, vl_name: str | None = None) -> Path | None:
        """The weights this variant loads with the built-in VL model ``vl_name`` (None: a
        training-free method). A relative path is the repository's, as :func:`shipped_variants`
        names ablation checkpoints."""
        if self.checkpoint:
            path = Path(self.checkpoint)
            return path if path.is_absolute() or path.exists() else REPO / path
        if self.is_isa:
            from ..models import shipped_checkpoint

            return shipped_checkpoint(self.backbone, vl_name)
        if self.method in ("masked-ti", "single-token"):
            from ..models.masked_ti import shipped_checkpoint

            return shipped_checkpoint(self.method, vl_name)
        return None
