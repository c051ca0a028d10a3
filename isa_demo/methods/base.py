"""The one interface every CIR method answers through, in two declared stages.

Given reference images and modifier texts, a method returns query features in the gallery's
space (L2-normalized rows, comparable by inner product with ``vl.encode_images`` features).
Evaluation, the index and the app use only this interface::

    ref = method.encode_reference(images)        # the query image encoder, run once: a Reference
    q = method.compose(ref, modifiers)           # the text side: (B, D), L2-normalized
    why = method.explain_reference(ref, modifier, index)   # pseudo words, attention: no new forward pass
    q = method.encode_queries(images, modifiers) # the two stages above, batched (evaluation's entry)

``encode_queries`` is ``compose(encode_reference(...))`` and nothing else, so the staged path the
app times and the batched path the benchmarks run are the same code.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from ..common import load_image
from ..errors import QueryError
from ..vl.model import VLModel

PROMPT = "a photo of * that {modifier}"
MAX_MODIFIER_CHARS = 1000

IMAGE_STAGE, TEXT_STAGE = "query_image_encoder", "text_encoder"


def clean_modifier(text: str | None) -> str:
    text = " ".join((text or "").split())
    if not text:
        raise QueryError("the modifier text is empty: type what should change, e.g. 'make the circle red'")
    return text[:MAX_MODIFIER_CHARS]


@dataclass
class Reference:
    """What :meth:`Method.encode_reference` computed for ``B`` reference images: all that
    composition and explanation need, so that neither runs the query image encoder again.

    ``words``: pseudo words ``(B, L, d_w)`` (pseudo-token methods); ``attention``: the token
    learner's spatial maps ``(B, L, h, w)`` (ISA); ``features``: VL image features ``(B, D)``
    (the image-using baselines). A text-only method's reference is empty.
    """

    words: torch.Tensor | None = None
    attention: torch.Tensor | None = None
    features: torch.Tensor | None = None

    def __len__(self) -> int:
        for t in (self.words, self.features, self.attention):
            if t is not None:
                return int(t.shape[0])
        return 0

    @property
    def empty(self) -> bool:
        return self.words is None and self.features is None and self.attention is None


class Method(ABC):
    """A composed-retrieval method. Subclasses set ``name`` and implement the two stages,
    :meth:`encode_reference` and :meth:`_compose`; :meth:`compose` normalizes.

    Declared, not probed:

    - ``uses_image`` / ``uses_text``: which inputs the query reads (the other may be None / empty).
    - ``num_words``: pseudo words the reference becomes (0: the method has none, and no prompt).
    - ``timing_stages``: the names under which the app reports the two stages' wall clock: two
      names, ``encode_reference`` then ``compose``; one name, both stages together.
    - ``backbone``: the query image encoder's backbone, for result tables (None: the VL tower or none).
    """

    name: str = "method"
    uses_image = True
    uses_text = True
    num_words = 0
    timing_stages: tuple[str, ...] = (IMAGE_STAGE, TEXT_STAGE)
    backbone: str | None = None

    def __init__(self, vl: VLModel):
        self.vl = vl

    @property
    def device(self) -> str:
        return self.vl.device

    # ------------------------------------------------------------------ the two stages
    @abstractmethod
    def encode_reference(self, images: Sequence[Any] | None) -> Reference:
        """The query image encoder on decoded images (PIL, paths or arrays; None for text-only)."""

    @abstractmethod
    def _compose(self, ref: Reference, modifiers: list[str]) -> torch.Tensor:
        """Query features ``(B, D)``, not yet normalized, from a reference and cleaned modifiers."""

    def compose(self, ref: Reference, modifiers: Sequence[str]) -> torch.Tensor:
        """Query features ``(B, D)``, L2-normalized float, from :meth:`encode_reference`'s output."""
        if not ref.empty and len(ref) != len(modifiers):
            raise QueryError(f"{len(ref)} references for {len(modifiers)} modifiers")
        return F.normalize(self._compose(ref, list(modifiers)).float(), dim=-1)

    def explain_reference(self, ref: Reference, modifier: str, index: int = 0) -> dict:
        """Why query ``index`` of ``ref`` looks the way it does, from ``ref`` alone. Keys (all
        optional): ``pseudo_words`` (per pseudo word, a list of (word, cosine) nearest vocabulary
        tokens), ``attention`` (``(L, h, w)`` numpy array of the token learner's spatial maps),
        ``prompt`` (the composed prompt)."""
        return {}

    # ------------------------------------------------------------------ conveniences over the stages
    def encode_queries(self, images: Sequence[Any] | None, modifiers: Sequence[str],
                       batch_size: int = 64) -> torch.Tensor:
        """Query features ``(B, D)``, L2-normalized, for reference images and modifier texts.

        ``images``: PIL images, paths or arrays (ignored by text-only methods, may be None there).
        """
        n_images = None if images is None else len(images)
        if n_images != len(modifiers) and (self.uses_image or n_images is not None):
            raise QueryError(f"{n_images or 0} images for {len(modifiers)} modifiers")
        mods = [clean_modifier(m) if self.uses_text else (m or "") for m in modifiers]
        outs = []
        with torch.no_grad():
            for i in range(0, len(mods), batch_size):
                imgs = [load_image(x) for x in images[i:i + batch_size]] if self.uses_image else None
                outs.append(self.compose(self.encode_reference(imgs), mods[i:i + batch_size]))
        return torch.cat(outs) if outs else torch.empty(0, self.vl.embed_dim)

    @torch.no_grad()
    def explain(self, image: Any, modifier: str) -> dict:
        """:meth:`explain_reference` for one image (encodes it; the app reuses its own reference)."""
        return self.explain_reference(self.encode_reference([load_image(image)] if self.uses_image else None),
                                      modifier)

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
    """A method whose query is the VL text tower on ``prompt`` with pseudo words injected at ``*``.

    Subclasses produce ``Reference.words`` (and ISA its ``attention``); composition and the
    explanation are the same for all of them. ``word_symbol`` stands for the pseudo words in the
    prompt shown to the user."""

    num_words = 1
    word_symbol = "*"

    def __init__(self, vl: VLModel, prompt: str = PROMPT):
        super().__init__(vl)
        self.prompt = check_prompt(prompt)
        if not bool((vl.tokenize([prompt.format(modifier="x")]) == vl.placeholder_id).any()):
            raise QueryError(f"the tokenizer does not read the '*' of {prompt!r} as a word of its own; "
                             "put spaces around it")

    def _compose(self, ref: Reference, modifiers: list[str]) -> torch.Tensor:
        """Text encoder: the frozen VL text tower on the prompt with ``ref.words`` ``(B, L, d_w)`` at ``*``."""
        return self.vl.encode_with_pseudo_tokens([self.prompt.format(modifier=m) for m in modifiers], ref.words)

    def explain_reference(self, ref: Reference, modifier: str, index: int = 0) -> dict:
        out = {"pseudo_words": self.vl.nearest_words(ref.words[index])}
        if ref.attention is not None:
            out["attention"] = ref.attention[index].float().cpu().numpy()
        out["prompt"] = self.shown_prompt(modifier)
        return out

    def shown_prompt(self, modifier: str) -> str:
        """The prompt as shown to the user: ``word_symbol`` in the pseudo words' slot only (a ``*``
        the user typed in the modifier stays a ``*``)."""
        return self.prompt.replace("*", self.word_symbol).format(modifier=clean_modifier(modifier))

    def identity(self) -> dict:
        out = super().identity()
        if self.prompt != PROMPT:
            out["prompt"] = self.prompt
        return out
