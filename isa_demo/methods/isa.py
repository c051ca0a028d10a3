"""ISA (METHOD.md 3): light query encoder -> pseudo sentence S; ``a photo of S that {modifier}``."""
from __future__ import annotations

import torch

from ..models import SYMMETRIC, QueryEncoder, shipped_checkpoint
from ..settings import LIGHTEST_BACKBONE
from .base import PROMPT, PseudoTokenMethod


class ISA(PseudoTokenMethod):
    def __init__(self, vl, backbone: str = LIGHTEST_BACKBONE, checkpoint=None, prompt: str = PROMPT, **_):
        super().__init__(vl, prompt)
        path = checkpoint or shipped_checkpoint(backbone)
        self.encoder = QueryEncoder.load(path, vl, backbone=None if checkpoint else backbone)
        self.backbone = self.encoder.cfg.backbone
        self.name = "isa-symmetric" if self.backbone == SYMMETRIC else "isa"

    # the two stages, separately timed by the app and the efficiency benchmark
    def encode_reference(self, images) -> tuple[torch.Tensor, torch.Tensor]:
        """Query image encoder (backbone + token learner): pseudo sentence and attention maps."""
        return self.encoder(self.encoder.preprocess(images))

    def _encode(self, images, modifiers):
        sentences, _ = self.encode_reference(images)
        return self.compose(sentences, modifiers)

    @torch.no_grad()
    def explain(self, image, modifier: str) -> dict:
        sentences, maps = self.encode_reference([image])
        return {"pseudo_words": self.vl.nearest_words(sentences[0]), "attention": maps[0].cpu().numpy(),
                "prompt": self.shown_prompt(modifier).replace("*", "S")}

    def identity(self) -> dict:
        return {**super().identity(), "backbone": self.backbone, "num_tokens": self.encoder.cfg.num_tokens}
