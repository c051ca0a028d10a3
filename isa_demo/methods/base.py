"""The one interface every CIR method answers through.

Given reference images and modifier texts, a method returns query features in the gallery's
space (L2-normalized rows, comparable by inner product with ``vl.encode_images`` features).
Evaluation, the index and the app use only this interface.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Sequence

import torch

from ..common import load_image
from ..errors import QueryError
from ..vl.model import VLModel

PROMPT = "a photo of * that {modifier}"
MAX_MODIFIER_CHARS = 1000


def clean_modifier(text: str | None) -> str:
    text = " ".join((text or "").split())
    if not text:
        raise QueryError("the modifier text is empty: type what should change, e.g. 'make the circle red'")
    return text[:MAX_MODIFIER_CHARS]


class Method(ABC):
    """A composed-retrieval method. Subclasses set ``name`` and implement ``_encode``."""

    name: str = "method"
    uses_image = True
    uses_text = True

    def __init__(self, vl: VLModel):
        self.vl = vl

    @property
    def device(self) -> str:
        return self.vl.device

    def encode_queries(self, images: Sequence[Any], modifiers: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """Query features ``(B, D)``, L2-normalized, for reference images and modifier texts.

        ``images``: PIL images, paths or arrays (ignored by text-only methods, may be None there).
        """
        if len(images) != len(modifiers):
            raise QueryError(f"{len(images)} images for {len(modifiers)} modifiers")
        mods = [clean_modifier(m) if self.uses_text else (m or "") for m in modifiers]
        outs = []
        with torch.no_grad():
            for i in range(0, len(mods), batch_size):
                imgs = [load_image(x) for x in images[i:i + batch_size]] if self.uses_image else None
                outs.append(torch.nn.functional.normalize(self._encode(imgs, mods[i:i + batch_size]).float(), dim=-1))
        return torch.cat(outs) if outs else torch.empty(0, self.vl.embed_dim)

    @abstractmethod
    def _encode(self, images, modifiers: list[str]) -> torch.Tensor:
        ...

    def explain(self, image: Any, modifier: str) -> dict:
        """Why a query looks the way it does. Keys (all optional): ``pseudo_words`` (per pseudo
        token, a list of (word, cosine) nearest vocabulary tokens), ``attention`` (``(L, h, w)``
        numpy array of the token learner's spatial maps), ``prompt`` (the composed prompt)."""
        return {}

    def identity(self) -> dict:
        return {"method": self.name, "vl": self.vl.identity()}


def check_prompt(prompt: str) -> str:
    """A composition template: exactly one ``*`` (the pseudo words) and at most one ``{modifier}``
    (a template without it drops the modifier: the inversion alone, a diagnostic)."""
    if prompt.count("*") != 1 or prompt.count("{") != prompt.count("{modifier}") or prompt.count("{modifier}") > 1:
        raise QueryError(f"prompt {prompt!r} must contain one '*' and at most one '{{modifier}}' "
                         f"(the default is {PROMPT!r})")
    return prompt


class PseudoTokenMethod(Method):
    """A method whose query is the VL text tower on ``prompt`` with pseudo words injected at ``*``."""

    def __init__(self, vl: VLModel, prompt: str = PROMPT):
        super().__init__(vl)
        self.prompt = check_prompt(prompt)
        if not bool((vl.tokenize([prompt.format(modifier="x")]) == vl.placeholder_id).any()):
            raise QueryError(f"the tokenizer does not read the '*' of {prompt!r} as a word of its own; "
                             "put spaces around it")

    def compose(self, words: torch.Tensor, modifiers: list[str]) -> torch.Tensor:
        """Text encoder: the frozen VL text tower on the prompt with ``words`` ``(B, L, d_w)`` at ``*``."""
        return self.vl.encode_with_pseudo_tokens([self.prompt.format(modifier=m) for m in modifiers], words)

    def shown_prompt(self, modifier: str) -> str:
        return self.prompt.format(modifier=clean_modifier(modifier))

    def identity(self) -> dict:
        out = super().identity()
        if self.prompt != PROMPT:
            out["prompt"] = self.prompt
        return out
