"""Training-free baselines (METHOD.md 5): image only, text only, and their sum."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Method


class ImageOnly(Method):
    name = "image-only"
    uses_text = False

    def _encode(self, images, modifiers):
        return self.vl.encode_image_tensor(self.vl.images_to_tensor(images))


class TextOnly(Method):
    name = "text-only"
    uses_image = False

    def _encode(self, images, modifiers):
        return self.vl.encode_text_tokens(self.vl.tokenize(modifiers))


class Sum(Method):
    name = "sum"

    def _encode(self, images, modifiers):
        g = self.vl.encode_image_tensor(self.vl.images_to_tensor(images))
        t = self.vl.encode_text_tokens(self.vl.tokenize(modifiers))
        return F.normalize(g + t, dim=-1)


def caption_oracle(vl, target_captions: list[str]) -> torch.Tensor:
    """The ceiling, not a method: the target's ground-truth caption through the text tower."""
    with torch.no_grad():
        return vl.encode_texts(target_captions)
