"""The masked image-text pair textual inversion method and its single-token baseline (METHOD.md 4).

A query is ``normalize(E_T("a photo of * that {modifier}"))`` with ``* = Phi(g(reference))``;
the network ``Phi`` and its checkpoint format are in :mod:`isa_demo.models.masked_ti`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..models.masked_ti import Phi, load_phi, shipped_checkpoint
from .base import PROMPT, PseudoTokenMethod, Reference
from .baselines import vl_image_reference


class MaskedTI(PseudoTokenMethod):
    """``a photo of * that {modifier}`` with ``* = Phi(g(reference))``."""

    name = "masked-ti"
    default_checkpoint = "masked-ti"

    def __init__(self, vl, checkpoint: str | os.PathLike | None = None, phi: Phi | None = None, prompt: str = PROMPT,
                 **_):
        super().__init__(vl, prompt)
        if phi is not None:
            self.phi, self.meta = phi.to(vl.device).eval(), {}
        else:
            self.phi, self.meta = load_phi(checkpoint or shipped_checkpoint(self.default_checkpoint, vl.name), vl)
        self.phi.requires_grad_(False)
        method = self.meta.get("method")
        if method in ("masked-ti", "single-token"):
            self.name = method
            # an ablation checkpoint ("masked-ti-tau0.2") is named after its file, so that result
            # tables keep the variants apart
            stem = Path(str(checkpoint)).stem if checkpoint else ""
            if stem.startswith(method + "-"):
                self.name = stem

    def encode_reference(self, images) -> Reference:
        """Query image encoder: the frozen VL image tower and Phi -> pseudo words ``(B, 1, d_w)``."""
        g = vl_image_reference(self.vl, images).features
        return Reference(words=self.phi(g)[:, None])

    def identity(self) -> dict:
        out = super().identity()
        for k in ("tau", "w_qt", "w_orig", "query_text", "steps"):
            if k in self.meta:
                try:
                    out[k] = json.loads(self.meta[k])
                except ValueError:
                    out[k] = self.meta[k]
        return out


class SingleToken(MaskedTI):
    """The Pic2Word/SEARLE-style single-token inversion: Phi trained with the original loss only."""

    name = "single-token"
    default_checkpoint = "single-token"
