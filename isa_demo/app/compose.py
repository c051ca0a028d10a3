"""One composed query, end to end: input checks, the method's two stages, the gallery search,
and the explanation from the very same forward pass.

Timings (``ComposeResult.timings_ms``), wall clock with ``time.perf_counter`` around each stage:

- ``image_decode_ms``: reading the reference into an RGB image (:func:`isa_demo.common.load_image`).
- the method's two stages, :meth:`~isa_demo.methods.Method.encode_reference` and
  :meth:`~isa_demo.methods.Method.compose`, under the names the method declares
  (``Method.timing_stages``): ``query_image_encoder_ms`` then ``text_encoder_ms`` for ISA and the
  masked-pair methods; one name for both stages otherwise: ``query_image_encoder_ms`` for the
  image-only baseline, ``text_encoder_ms`` for text-only, ``query_encoders_ms`` for the sum.
- ``search_ms``: the inner-product search of the gallery, faiss or Milvus (plus dropping the reference).
- ``batch_wait_ms``: how long the query waited for its batch to start. Concurrent queries of one
  method are encoded and searched as one batch (:mod:`isa_demo.app.batching`); the encoder and
  search times are then the batch's, and ``timing_note`` / ``batch_size`` say so.
- ``total_ms``: the whole compose call (input checks, decode, encoders, search), not the
  explanation, which is timed as ``explain_ms`` and is extra work for the demo's side panels:
  it reads the pseudo words and attention maps the query already computed, it does not run the
  query image encoder again.
"""
from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..common import ImageError
from ..methods import QueryError
from .batching import QueryBatcher
from .catalogue import Catalogue
from .inputs import InputError, ModifierCheck, describe_image_source, is_pathlike, load_reference

MAX_K = 50
RANK_DEPTH = 1000  # how deep Compare looks for one method's results in the other's ranking

log = logging.getLogger("isa_demo.app")


@dataclass
class Hit:
    rank: int
    id: int
    score: float
    path: str
    name: str


@dataclass
class ComposeResult:
    method: str
    backbone: str | None
    modifier: str
    hits: list[Hit]
    timings_ms: dict[str, float]
    timing_note: str
    notices: list[str] = field(default_factory=list)
    explanation: dict = field(default_factory=dict)
    excluded_ids: list[int] = field(default_factory=list)
    reference: Any = None  # the decoded RGB reference (for overlays), not serialized
    query: Any = None  # the query features (1, D), not serialized: ranks beyond the top-K (compare)
    batch_size: int = 1  # how many concurrent queries were encoded and searched together with this one

    @property
    def ids(self) -> list[int]:
        return [h.id for h in self.hits]

    @property
    def scores(self) -> list[float]:
        return [h.score for h in self.hits]

    def to_json(self) -> dict:
        """What the HTTP API returns: ids, names, scores, timings, notices (no pictures)."""
        ex = self.explanation or {}
        return {"method": self.method, "backbone": self.backbone, "modifier": self.modifier,
                "ids": self.ids, "names": [h.name for h in self.hits], "scores": [round(s, 6) for s in self.scores],
                "timings_ms": {k: round(v, 3) for k, v in self.timings_ms.items()}, "timing_note": self.timing_note,
                "notices": list(self.notices), "excluded_reference_ids": list(self.excluded_ids),
                "pseudo_words": ex.get("pseudo_words"), "prompt": ex.get("prompt"), "batch_size": self.batch_size}


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000.0


def check_k(k, maximum: int = MAX_K) -> int:
    """Top-K as a whole number from 1 to ``maximum``, or :class:`InputError` saying so: the UI
    (which hands over the box's text as typed) and the HTTP API give the same answer to the same
    value; nothing is rounded or clamped behind the user's back."""
    rule = f"top-K must be a whole number from 1 to {maximum}"
    if k is None or (isinstance(k, str) and not k.strip()):
        raise InputError(f"top-K is empty: {rule.removeprefix('top-K must be ')}; type one and search again")
    value = None
    if not isinstance(k, bool):
        try:
            value = float(k.strip()) if isinstance(k, str) else float(k)
        except (TypeError, ValueError, OverflowError):
            value = None
    if value is None or not np.isfinite(value):
        raise InputError(f"{rule}; “{str(k)[:40]}” is not a number")
    if value != int(value):
        raise InputError(f"{rule}; {value:g} is not a whole number")
    if not 1 <= value <= maximum:
        raise InputError(f"{rule}; {int(value)} is {'too small' if value < 1 else 'too large'}")
    return int(value)


class Composer:
    """Composed queries over one gallery with the methods of one :class:`Catalogue`."""

    def __init__(self, vl, gallery, catalogue: Catalogue, max_batch: int = 16):
        self.vl = vl
        self.gallery = gallery
        self.catalogue = catalogue
        self.batcher = QueryBatcher(gallery.search, max_batch)
        self.modifiers = ModifierCheck(vl)

    def compose(self, image, modifier: str | None, method: str, backbone: str | None = None, k: int = 10,
                explain: bool = True, exclude_reference: bool = True) -> ComposeResult:
        """Run one composed query and search the gallery; see the module doc for the timings."""
        k = check_k(k)
        v = self.catalogue.resolve(method, backbone)
        notices: list[str] = []
        timings: dict[str, float] = {}
        t_load = time.perf_counter()
        loaded = self.catalogue.is_loaded(v)
        m = self.catalogue.get_method(v)
        if not loaded:
            notices.append(f"loaded {v.display} on first use ({_ms(t_load):.0f} ms, not counted in the timings)")
        t_start = time.perf_counter()

        img, excluded = None, []
        if m.uses_image:
            notices += describe_image_source(image) if image is not None else []
            t = time.perf_counter()
            img = load_reference(image)
            timings["image_decode_ms"] = _ms(t)
            if exclude_reference:
                excluded = self.reference_gallery_ids(image)
                if excluded:
                    notices.append("the reference is a gallery image: it is left out of its own results")
        elif image is not None:
            notices.append(f"{v.label} ignores the reference image")
        if m.uses_text:
            text, more = self.modifiers(modifier, m)
            notices += more
        else:
            text = self.modifiers.ignored(modifier)
            if text:
                notices.append(f"{v.label} ignores the modifier")

        try:
            out = self.batcher.run(v, m, img, text, k + len(excluded))
        except (QueryError, ImageError) as e:
            raise InputError(str(e)) from None
        stages = m.timing_stages
        how = ("image and text encoders timed separately (encode_reference, compose)" if len(stages) > 1 else
               "the method's encode_reference and compose timed as a whole")
        if out.batch_size > 1:
            how += (f"; run as one batch with {out.batch_size - 1} other concurrent "
                    f"quer{'y' if out.batch_size == 2 else 'ies'}: encoder and search times are the batch's")
        timings["batch_wait_ms"] = out.wait_ms
        timings.update(out.stage_ms)
        ref, q = out.ref, out.query
        hits = self.hits(out.scores, out.ids, k, exclude=excluded)
        timings["total_ms"] = _ms(t_start)

        explanation = {}
        if explain:
            t = time.perf_counter()
            try:
                with torch.inference_mode():
                    explanation = m.explain_reference(ref, text, out.index)
            except Exception as e:  # the side panel must never break a query; the log gets the details
                log.warning("explanation failed for %s: %s", v.display, e, exc_info=True)
                explanation = {"error": f"{type(e).__name__}: {e}"}
            if explanation:
                timings["explain_ms"] = _ms(t)
        return ComposeResult(v.label, v.backbone_label, text, hits, timings,
                             how + f"; search: {self.gallery.engine} over {len(self.gallery):,} images", notices,
                             explanation or {}, excluded, img, q, out.batch_size)

    def search(self, q, k: int, exclude: Sequence[int] = ()) -> list[Hit]:
        """The top ``k`` gallery hits for query features ``(1, D)``, ``exclude`` left out."""
        q = q.detach().cpu().numpy() if isinstance(q, torch.Tensor) else np.asarray(q)
        scores, ids = self.gallery.search(q, int(k) + len(exclude))
        return self.hits(scores, ids, k, exclude)

    def hits(self, scores, ids, k: int, exclude: Sequence[int] = ()) -> list[Hit]:
        """The first ``k`` results of one searched row, ``exclude`` left out."""
        drop = set(int(i) for i in exclude)
        hits = []
        for s, i in zip(np.asarray(scores)[0].tolist(), np.asarray(ids)[0].tolist()):
            if i < 0 or i in drop:
                continue
            path = self.gallery.path_of(i)
            hits.append(Hit(len(hits) + 1, int(i), float(s), str(path), Path(path).stem))
            if len(hits) == k:
                break
        return hits

    def compare(self, image, modifier, a: tuple[str, str | None], b: tuple[str, str | None], k: int = 10
                ) -> tuple[ComposeResult, ComposeResult, str]:
        """The same query through two method/backbone choices, and a one-line comparison."""
        ra = self.compose(image, modifier, a[0], a[1], k, explain=False)
        rb = self.compose(image, modifier, b[0], b[1], k, explain=False)
        shared = len(set(ra.ids) & set(rb.ids))
        summary = (f"{shared} of the top {k} are shared; total {ra.timings_ms['total_ms']:.1f} ms vs "
                   f"{rb.timings_ms['total_ms']:.1f} ms")
        return ra, rb, summary

    def cross_ranks(self, a: ComposeResult, b: ComposeResult, depth: int = RANK_DEPTH) -> dict:
        """Where each of A's results ranks under B and each of B's under A: ``{"depth", "a_in_b",
        "b_in_a"}``, one rank (1-based) per hit, None when it is below the other's first ``depth``."""
        def ranking(r: ComposeResult) -> dict[int, int]:
            if r.query is None:
                return {h.id: h.rank for h in r.hits}
            n = min(len(self.gallery), max(depth, len(r.hits)))
            return {h.id: h.rank for h in self.search(r.query, n, exclude=r.excluded_ids)}

        in_a, in_b = ranking(a), ranking(b)
        depth = min(len(self.gallery), depth)
        return {"depth": depth, "a_in_b": [in_b.get(h.id) for h in a.hits], "b_in_a": [in_a.get(h.id) for h in b.hits]}

    def reference_gallery_ids(self, image) -> list[int]:
        """Gallery ids whose file has the same bytes as the reference (a picked gallery image)."""
        if not is_pathlike(image) or not os.path.isfile(image):
            return []
        try:
            if os.path.getsize(image) > 64 * 1024 * 1024:
                return []
            with open(image, "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()
        except OSError:
            return []
        return list(self.gallery.ids_with_content(digest))
