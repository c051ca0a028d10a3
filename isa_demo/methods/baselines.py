"""Training-free baselines (METHOD.md 5): image only, text only, and their sum."""
from __future__ import annotations

import torch.nn.functional as F

from .base import IMAGE_STAGE, TEXT_STAGE, Method, Reference


def vl_image_reference(vl, images) -> Reference:
    """The frozen VL image tower's features of the references (the gallery's own encoder)."""
    return Reference(features=vl.encode_image_tensor(vl.images_to_tensor(images)))


class ImageOnly(Method):
    name = "image-only"
    uses_text = False
    timing_stages = (IMAGE_STAGE,)

    def encode_reference(self, images) -> Reference:
        return vl_image_reference(self.vl, images)

    def _compose(self, ref, modifiers):
        return ref.features


class TextOnly(Method):
    name = "text-only"
    uses_image = False
    timing_stages = (TEXT_STAGE,)

    def encode_reference(self, images) -> Reference:
        return Reference()

    def _compose(self, ref, modifiers):
        return self.vl.encode_text_tokens(self.vl.tokenize(modifiers))


class Sum(Method):
    name = "sum"
    # the two VL towers side by side, reported as one cost (``query_encoders_ms`` in the app)
    timing_stages = ("query_encoders",)

    def encode_reference(self, images) -> Reference:
        return vl_image_reference(self.vl, images)

    def _compose(self, ref, modifiers):
        return F.normalize(ref.features + self.vl.encode_text_tokens(self.vl.tokenize(modifiers)), dim=-1)
