"""ISA (METHOD.md 3): light query encoder -> pseudo sentence S; ``a photo of S that {modifier}``."""
from __future__ import annotations

from ..models import QueryEncoder, shipped_checkpoint
from ..settings import LIGHTEST_BACKBONE
from .base import PROMPT, PseudoTokenMethod, Reference
from .variant import isa_method_name


class ISA(PseudoTokenMethod):
    word_symbol = "S"  # the pseudo sentence

    def __init__(self, vl, backbone: str = LIGHTEST_BACKBONE, checkpoint=None, prompt: str = PROMPT, **_):
        super().__init__(vl, prompt)
        path = checkpoint or shipped_checkpoint(backbone, vl.name)
        self.encoder = QueryEncoder.load(path, vl, backbone=None if checkpoint else backbone)
        self.backbone = self.encoder.cfg.backbone
        self.name = isa_method_name(self.backbone)

    @property
    def num_words(self) -> int:
        return int(self.encoder.cfg.num_tokens)

    def encode_reference(self, images) -> Reference:
        """Query image encoder (backbone + token learner): pseudo sentence and attention maps, together."""
        sentences, maps = self.encoder(self.encoder.preprocess(images))
        return Reference(words=sentences, attention=maps)

    def identity(self) -> dict:
        return {**super().identity(), "backbone": self.backbone, "num_tokens": self.encoder.cfg.num_tokens}
