"""The masked image-text pair textual inversion method and its single-token baseline (METHOD.md 4).

A query is ``normalize(E_T("a photo of * that {modifier}"))`` with ``* = Phi(g(reference))``;
the network ``Phi`` and its checkpoint format are in :mod:`isa_demo.models.masked_ti`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..models.masked_ti import Phi, load_phi, shipped_checkpoint
from .base import PROMPT, PseudoTokenMethod


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
            self.phi, self.meta = load_phi(checkpoint or shipped_checkpoint(self.default_checkpoint), vl)
        self.phi.requires_grad_(False)
        method = self.meta.get("method")
        if method in ("masked-ti", "single-token"):
            self.name = method
            # an ablation checkpoint ("masked-ti-tau0.2") is named after its file, so that result
            # tables keep the variants apart
            stem = Path(str(checkpoint)).stem if checkpoint else ""
            if stem.startswith(method + "-"):
                self.name = stem

    # the two stages, separately timed by the app and the efficiency benchmark
    def encode_reference(self, images) -> torch.Tensor:
        """Query image encoder: the frozen VL image tower and Phi -> pseudo words ``(B, 1, d_w)``."""
        g = self.vl.encode_image_tensor(self.vl.images_to_tensor(images))
        return self.phi(g)[:, None]

    def _encode(self, images, modifiers):
        return self.compose(self.encode_reference(images), modifiers)

    @torch.no_grad()
    def explain(self, image, modifier: str) -> dict:
        phi_vec = self.encode_reference([image])[0, 0]
        return {"pseudo_words": self.vl.nearest_words(phi_vec[None]),
                "prompt": self.shown_prompt(modifier)}

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
