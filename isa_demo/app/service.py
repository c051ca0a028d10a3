"""The demo's service layer: pure python, no Gradio. The UI (``ui.py``), the HTTP API and the
tests all go through :class:`DemoService`.

What it does: lists the shipped methods/backbones, loads them lazily (cached, thread-safe),
checks the user's inputs and turns every bad one into an :class:`InputError` whose message is
for the user, composes a query and searches the gallery with per-stage timings, explains a query
(pseudo words, attention maps), and reads the results tables for the efficiency plot and the
failure-case inspector.

Timings (``ComposeResult.timings_ms``), wall clock with ``time.perf_counter`` around each stage:

- ``image_decode_ms``: reading the reference into an RGB image (:func:`isa_demo.common.load_image`).
- ``query_image_encoder_ms`` / ``text_encoder_ms``: for methods that expose their two stages
  (``encode_reference`` and ``compose``: ISA and the masked-pair methods) each is timed on its
  own; the image-only baseline's whole ``encode_queries`` is its image encoder, the text-only
  baseline's its text encoder. The sum baseline cannot be split: its ``encode_queries`` is
  reported as ``query_encoders_ms``.
- ``search_ms``: the faiss inner-product search of the gallery (plus dropping the reference).
- ``total_ms``: the whole compose call (input checks, decode, encoders, search), not the
  explanation, which is timed as ``explain_ms`` and is extra work for the demo's side panels.
"""
from __future__ import annotations

import hashlib
import importlib
import os
import threading
import time
import unicodedata
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..common import ImageError, load_image, read_metadata
from ..errors import UserError
from ..methods import PROMPT, QueryError, clean_modifier, create_method
from ..methods.base import MAX_MODIFIER_CHARS
from ..settings import GALLERIES_DIR, LIGHTEST_BACKBONE, REPO, RESULTS_DIR, SYMMETRIC, WORLD_DIR, WORLD_SPLIT

ASSETS_DIR = Path(__file__).resolve().parent / "assets"
LIGHTEST = LIGHTEST_BACKBONE
MAX_K = 50
BASELINES = ("image-only", "text-only", "sum")


class InputError(UserError, ValueError):
    """A query the demo cannot run as given; the message is for the user (no stack trace)."""


# ---------------------------------------------------------------------------------------- variants
@dataclass(frozen=True)
class Variant:
    """One selectable model: ``label`` is the method choice in the UI, ``backbone_label`` the
    backbone choice (ISA only); ``method``/``backbone``/``checkpoint`` are ``create_method`` args."""

    label: str
    method: str
    backbone: str | None = None
    checkpoint: str | None = None
    backbone_label: str | None = None

    def create_kwargs(self) -> dict:
        return {k: v for k, v in (("backbone", self.backbone), ("checkpoint", self.checkpoint)) if v is not None}


def _stem(path: str | None) -> str | None:
    return Path(path).stem if path else None


def discover_variants() -> list[dict]:
    """Every shipped method/backbone (:func:`isa_demo.methods.shipped_variants`)."""
    from ..methods import shipped_variants

    return [dict(v) for v in shipped_variants()]


def build_variants(raw: Sequence[dict]) -> list[Variant]:
    """UI choices from ``create_method`` argument dicts. ISA variants (including the symmetric
    one) share the method label ``isa`` and differ by backbone; other methods with several
    checkpoints (ablations) get the checkpoint's name in their label."""
    out: list[Variant] = []
    seen: set[tuple[str, str | None]] = set()
    for v in raw:
        method, backbone, ckpt = v["method"], v.get("backbone"), v.get("checkpoint")
        if method in ("isa", "isa-symmetric"):
            b = SYMMETRIC if method == "isa-symmetric" and not backbone else (backbone or LIGHTEST)
            stem = _stem(ckpt)
            b_label = b if stem in (None, b) else f"{b} [{stem}]"
            key = ("isa", b_label)
            if key not in seen:
                seen.add(key)
                out.append(Variant("isa", method, backbone, ckpt, b_label))
            continue
        stem = _stem(ckpt)
        label = method if stem in (None, method) else f"{method} [{stem}]"
        if (label, None) not in seen:
            seen.add((label, None))
            out.append(Variant(label, method, backbone, ckpt))
    for m in BASELINES:  # training-free: always there
        if (m, None) not in seen:
            out.insert(BASELINES.index(m), Variant(m, m))
            seen.add((m, None))
    return out


def _compatible(v: Variant, vl) -> str | None:
    """Why a shipped checkpoint cannot serve this VL model (None when it can or is unknown)."""
    path = v.checkpoint
    if path is None and v.method in ("isa", "isa-symmetric"):
        try:
            from ..models import shipped_checkpoint

            path = str(shipped_checkpoint(v.backbone or (SYMMETRIC if v.method == "isa-symmetric" else LIGHTEST)))
        except Exception:
            return None
    if not path or not os.path.exists(path):
        return None if not path else f"checkpoint {path} is missing"
    try:
        import json

        saved = json.loads(read_metadata(path).get("vl", "{}"))
    except Exception:
        return None
    want = vl.identity()
    for k in ("name", "checkpoint_sha256", "embed_dim"):
        if k in saved and saved.get(k) != want.get(k):
            return f"trained for VL model {saved.get('name')}, not the loaded {want.get('name')}"
    return None


# ---------------------------------------------------------------------------------------- results
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
                "pseudo_words": ex.get("pseudo_words"), "prompt": ex.get("prompt")}


# ---------------------------------------------------------------------------------------- helpers
def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000.0


def _strip_controls(text: str) -> str:
    """Drop control characters (keep tabs/newlines for the whitespace collapse, and format
    characters such as emoji joiners)."""
    return "".join(c for c in text if c in "\t\n\r" or unicodedata.category(c) != "Cc")


def _is_pathlike(x) -> bool:
    return isinstance(x, (str, os.PathLike))


def describe_image_source(source) -> list[str]:
    """Friendly notes on what decoding will do to an unusual image (no decoding here)."""
    notes = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = source if isinstance(source, Image.Image) else (Image.open(source) if _is_pathlike(source) else None)
    except Exception:
        return notes
    if img is None:
        return notes
    try:
        if getattr(img, "is_animated", False):
            notes.append(f"animated image ({getattr(img, 'n_frames', '?')} frames): the first frame is used")
        mode = img.mode
        if mode == "CMYK":
            notes.append("CMYK image: converted to RGB")
        elif mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            notes.append(f"{'16-bit' if mode.startswith('I;16') else 'high bit-depth'} image: scaled to 8-bit RGB")
        elif mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
            notes.append("transparent image: flattened onto a white background")
        elif mode in ("L", "1"):
            notes.append("greyscale image: used as RGB")
    finally:
        if img is not source:
            img.close()
    return notes


# ---------------------------------------------------------------------------------------- service
class DemoService:
    """Everything the demo does, without any UI.

    ``gallery``: a :class:`isa_demo.index.GalleryIndex` (``search``, ``path_of``, ``records``).
    ``world``: an :class:`isa_demo.world.World` with the test split, for example references and
    the failure-case inspector (None: those parts say they are unavailable).
    """

    def __init__(self, vl, gallery, world=None, *, results_dir: str | os.PathLike = RESULTS_DIR,
                 variants: Sequence[dict] | None = None, world_split: str = WORLD_SPLIT,
                 gallery_label: str = "gallery", method_factory: Callable | None = None):
        self.vl = vl
        self.gallery = gallery
        self.world = world
        self.world_split = world_split
        self.results_dir = Path(results_dir)
        self.gallery_label = gallery_label
        self._create = method_factory or create_method
        raw = discover_variants() if variants is None else list(variants)
        self.unavailable: dict[str, str] = {}
        self.variants: list[Variant] = []
        for v in build_variants(raw):
            why = _compatible(v, vl)
            if why:
                self.unavailable[self._key(v)] = why
            else:
                self.variants.append(v)
        for mod in ("..evaluation.runner", "..bench.plots"):  # import once, here: handlers run in
            try:                                                    # threads, and a concurrent first
                importlib.import_module(mod, __package__)           # import sees half a module
            except Exception:
                pass
        self._methods: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._sha_to_ids: dict[str, list[int]] | None = None
        self._world_paths: dict[str, Path] | None = None
        self._prompt_overhead: int | None = None

    # ------------------------------------------------------------------ choices
    @staticmethod
    def _key(v: Variant) -> str:
        return f"{v.label}|{v.backbone_label or ''}"

    def method_choices(self) -> list[str]:
        out = []
        for v in self.variants:
            if v.label not in out:
                out.append(v.label)
        return out

    def backbone_choices(self, method: str | None = "isa") -> list[str]:
        return [v.backbone_label for v in self.variants if v.label == (method or "isa") and v.backbone_label]

    def all_backbones(self) -> list[str]:
        return self.backbone_choices("isa")

    def default_method(self) -> str:
        choices = self.method_choices()
        return "isa" if "isa" in choices else ("sum" if "sum" in choices else choices[0])

    def default_backbone(self) -> str | None:
        bbs = self.all_backbones()
        return LIGHTEST if LIGHTEST in bbs else (bbs[0] if bbs else None)

    def resolve(self, method: str | None, backbone: str | None = None) -> Variant:
        """The variant for a (method, backbone) choice; ``backbone`` is ignored by non-ISA methods."""
        method = (method or "").strip()
        cands = [v for v in self.variants if v.label == method]
        if not cands:
            key = f"{method}|{backbone or ''}"
            if key in self.unavailable or any(k.startswith(method + "|") for k in self.unavailable):
                why = self.unavailable.get(key) or next(w for k, w in self.unavailable.items() if k.startswith(method))
                raise InputError(f"method {method!r} is not available with this VL model: {why}")
            raise InputError(f"unknown method {method!r}; choose one of {', '.join(self.method_choices())}")
        if len(cands) == 1 and not cands[0].backbone_label:
            return cands[0]
        want = backbone or self.default_backbone()
        for v in cands:
            if v.backbone_label == want:
                return v
        if f"{method}|{want}" in self.unavailable:
            raise InputError(f"{method} {want} is not available with this VL model: "
                             f"{self.unavailable[f'{method}|{want}']}")
        raise InputError(f"no shipped {method} model with backbone {want!r}; choose one of "
                         f"{', '.join(v.backbone_label or '' for v in cands)}")

    def get_method(self, v: Variant):
        """The loaded method for a variant (created once, then cached; thread-safe)."""
        key = self._key(v)
        m = self._methods.get(key)
        if m is not None:
            return m
        with self._lock:  # one load at a time: loads are rare, and concurrent first imports of the
            if key not in self._methods:  # same modules can see half-initialized modules
                try:
                    self._methods[key] = self._create(v.method, self.vl, **v.create_kwargs())
                except (QueryError, InputError) as e:
                    raise InputError(str(e)) from None
                except Exception as e:  # missing / incompatible checkpoint ...
                    raise InputError(f"could not load {v.label}"
                                     f"{' ' + v.backbone_label if v.backbone_label else ''}: {e}") from None
            return self._methods[key]

    def warm_up(self, variants: Sequence[Variant] | None = None) -> None:
        """Load methods ahead of the first query (the default one unless told)."""
        for v in variants or [self.resolve(self.default_method(), self.default_backbone())]:
            try:
                self.get_method(v)
            except InputError:
                pass

    # ------------------------------------------------------------------ inputs
    def load_reference(self, image) -> Any:
        """The reference as an RGB PIL image, or :class:`InputError` with a message for the user."""
        if image is None or (isinstance(image, str) and not image.strip()):
            raise InputError("no reference image: upload or paste one, or pick an example image")
        try:
            with warnings.catch_warnings():  # load_image refuses such images itself, with a message
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                return load_image(image)
        except ImageError as e:
            raise InputError(f"the reference image cannot be used: {e}") from None
        except MemoryError:
            raise InputError("the reference image cannot be used: it is too large to decode") from None
        except FileNotFoundError:
            raise InputError("the reference image did not arrive (the upload is missing); upload it again") from None
        except Exception as e:  # any other decoder failure is still the file's fault
            raise InputError(f"the reference image cannot be used: not a readable image ({type(e).__name__})") from None

    def text_capacity(self, method) -> int:
        """How many modifier tokens the text tower sees for this method: the context minus
        start/end tokens, and for prompt methods minus ``a photo of * that`` and the extra
        ``L - 1`` pseudo tokens."""
        ctx = int(self.vl.context_length) - 2
        if hasattr(method, "compose"):
            if self._prompt_overhead is None:
                self._prompt_overhead = self.count_tokens(PROMPT.format(modifier="").strip())
            enc = getattr(method, "encoder", None)
            n_tokens = int(getattr(getattr(enc, "cfg", None), "num_tokens", 1) or 1)
            ctx -= self._prompt_overhead + (n_tokens - 1)
        return max(ctx, 1)

    def count_tokens(self, text: str) -> int:
        tok = self.vl.tokenizer
        if hasattr(tok, "encode"):
            try:
                return len(tok.encode(text))
            except Exception:
                pass
        ids = tok([text], context_length=4096)[0]
        return max(int((ids != 0).sum()) - 2, 0)

    def _truncated_text(self, text: str, capacity: int) -> str | None:
        tok = self.vl.tokenizer
        try:
            return tok.decode(tok.encode(text)[:capacity]).strip()
        except Exception:
            return None

    def check_modifier(self, modifier: str | None, method) -> tuple[str, list[str]]:
        """A cleaned modifier and notices, or :class:`InputError` (empty)."""
        notices = []
        if modifier is not None and not isinstance(modifier, str):
            modifier = str(modifier)
        raw = _strip_controls(modifier or "")
        try:
            text = clean_modifier(raw)
        except QueryError as e:
            raise InputError(str(e)) from None
        if len(" ".join(raw.split())) > MAX_MODIFIER_CHARS:
            notices.append(f"the modifier is longer than {MAX_MODIFIER_CHARS} characters; only the first "
                           f"{MAX_MODIFIER_CHARS} are used")
        n = self.count_tokens(text)
        cap = self.text_capacity(method)
        if n > cap:
            kept = self._truncated_text(text, cap)
            shown = f": the text encoder reads “{kept}”" if kept else ""
            notices.append(f"the modifier has {n} tokens but the text encoder has room for {cap} here (context "
                           f"{self.vl.context_length} minus the prompt and start/end tokens), so it was truncated"
                           f"{shown}")
        if any(ord(c) > 127 for c in text):
            from ..vl import BUILTIN_NAME

            why = ("the built-in model only learned the world's English vocabulary, so they probably mean little to it"
                   if self.vl.name == BUILTIN_NAME or not self.vl.pretrained else
                   "CLIP-style text towers are trained mostly on English, so expect weaker matches")
            notices.append(f"the modifier contains non-Latin characters or emoji: they are encoded (byte-level BPE), "
                           f"but {why}")
        return text, notices

    def reference_gallery_ids(self, image) -> list[int]:
        """Gallery ids whose file has the same bytes as the reference (a picked gallery image)."""
        if not _is_pathlike(image) or not os.path.isfile(image):
            return []
        if self._sha_to_ids is None:
            table: dict[str, list[int]] = {}
            for i, r in enumerate(getattr(self.gallery, "records", [])):
                if r.get("sha256"):
                    table.setdefault(r["sha256"], []).append(i)
            self._sha_to_ids = table
        if not self._sha_to_ids:
            return []
        try:
            if os.path.getsize(image) > 64 * 1024 * 1024:
                return []
            with open(image, "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()
        except OSError:
            return []
        return self._sha_to_ids.get(digest, [])

    # ------------------------------------------------------------------ compose
    def compose(self, image, modifier: str | None, method: str, backbone: str | None = None, k: int = 10,
                explain: bool = True, exclude_reference: bool = True) -> ComposeResult:
        """Run one composed query and search the gallery; see the module doc for the timings."""
        try:
            k = int(k)
        except (TypeError, ValueError):
            raise InputError(f"top-K must be a whole number, got {k!r}") from None
        if not 1 <= k <= MAX_K:
            raise InputError(f"top-K must be between 1 and {MAX_K}, got {k}")
        v = self.resolve(method, backbone)
        notices: list[str] = []
        timings: dict[str, float] = {}
        t_load = time.perf_counter()
        loaded = self._key(v) in self._methods
        m = self.get_method(v)
        if not loaded:
            notices.append(f"loaded {v.label}{' ' + v.backbone_label if v.backbone_label else ''} on first use "
                           f"({_ms(t_load):.0f} ms, not counted in the timings)")
        t_start = time.perf_counter()
        uses_image, uses_text = getattr(m, "uses_image", True), getattr(m, "uses_text", True)

        img, excluded = None, []
        if uses_image:
            notices += describe_image_source(image) if image is not None else []
            t = time.perf_counter()
            img = self.load_reference(image)
            timings["image_decode_ms"] = _ms(t)
            if exclude_reference:
                excluded = self.reference_gallery_ids(image)
                if excluded:
                    notices.append("the reference is a gallery image: it is left out of its own results")
        elif image is not None:
            notices.append(f"{v.label} ignores the reference image")
        if uses_text:
            text, more = self.check_modifier(modifier, m)
            notices += more
        else:
            text = " ".join(_strip_controls(modifier or "").split())[:MAX_MODIFIER_CHARS]
            if text:
                notices.append(f"{v.label} ignores the modifier")

        try:
            with torch.inference_mode():
                if hasattr(m, "encode_reference") and hasattr(m, "compose"):
                    t = time.perf_counter()
                    out = m.encode_reference([img])
                    pseudo = out[0] if isinstance(out, (tuple, list)) else out
                    timings["query_image_encoder_ms"] = _ms(t)
                    t = time.perf_counter()
                    q = F.normalize(m.compose(pseudo, [text]).float(), dim=-1)
                    timings["text_encoder_ms"] = _ms(t)
                    how = "image and text encoders timed separately (encode_reference, compose)"
                else:
                    t = time.perf_counter()
                    q = m.encode_queries([img], [text])
                    key = ("query_encoders_ms" if uses_image and uses_text
                           else "query_image_encoder_ms" if uses_image else "text_encoder_ms")
                    timings[key] = _ms(t)
                    how = "the method's encode_queries timed as a whole"
        except (QueryError, ImageError) as e:
            raise InputError(str(e)) from None

        t = time.perf_counter()
        hits = self.search(q, k, exclude=excluded)
        timings["search_ms"] = _ms(t)
        timings["total_ms"] = _ms(t_start)

        explanation = {}
        if explain:
            t = time.perf_counter()
            try:
                explanation = m.explain(img, text) if hasattr(m, "explain") else {}
            except Exception as e:  # the side panel must never break a query
                explanation = {"error": f"{type(e).__name__}: {e}"}
            if explanation:
                timings["explain_ms"] = _ms(t)
        return ComposeResult(v.label, v.backbone_label, text, hits, timings,
                             how + f"; search: faiss inner product over {len(self.gallery):,} images", notices,
                             explanation or {}, excluded, img)

    def search(self, q, k: int, exclude: Sequence[int] = ()) -> list[Hit]:
        q = q.detach().cpu().numpy() if isinstance(q, torch.Tensor) else np.asarray(q)
        scores, ids = self.gallery.search(q, int(k) + len(exclude))
        drop = set(int(i) for i in exclude)
        hits = []
        for s, i in zip(scores[0].tolist(), ids[0].tolist()):
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

    # ------------------------------------------------------------------ world: examples and inspector
    def world_paths(self) -> dict[str, Path]:
        if self._world_paths is None:
            self._world_paths = {}
            if self.world is not None:
                try:
                    records = self.world.records(self.world_split)
                    self._world_paths = {r["name"]: self.world.image_path(r) for r in records}
                except Exception:
                    self._world_paths = {}
        return self._world_paths

    def world_image(self, name: str) -> str | None:
        p = self.world_paths().get(str(name))
        return str(p) if p is not None else None

    def example_queries(self, n: int = 12) -> list[dict]:
        """The first query of each modification type (then more), from the world's test split."""
        if self.world is None:
            return []
        try:
            queries = self.world.queries(self.world_split)
        except Exception:
            return []
        picked, seen = [], set()
        for q in queries:  # one per modification family first
            fam = q.get("mod_type", "").split(":")[0]
            if fam not in seen:
                seen.add(fam)
                picked.append(q)
        for q in queries:
            if len(picked) >= n:
                break
            if q not in picked:
                picked.append(q)
        out = []
        for q in picked[:n]:
            path = self.world_image(q["reference"])
            if path:
                out.append({"image": path, "modifier": q["caption"], "mod_type": q.get("mod_type", ""),
                            "reference": q["reference"]})
        return out

    def per_query_table_path(self, method: str, backbone: str | None = None) -> Path:
        from ..evaluation.results import per_query_path

        v = self.resolve(method, backbone)
        name, bb = v.method, v.backbone
        if v.method == "isa-symmetric":
            bb = bb or SYMMETRIC
        try:  # the table is named by the loaded method's own name and backbone
            m = self.get_method(v)
            name, bb = getattr(m, "name", name), getattr(m, "backbone", bb)
        except InputError:
            pass
        return per_query_path(self.results_dir, "world", self.world_split, name, bb)

    def failure_table(self, method: str, backbone: str | None = None, mod_type: str | None = None,
                      sort: str = "worst first"):
        """The per-query table of the world's test split for a method, filtered and sorted.

        Returns ``(shown, full)``: the columns to display (``query_id, mod_type, modifier, rank,
        subset_rank``) and the full rows in the same order (for
        :meth:`failure_detail`); raises :class:`InputError` when the table is missing."""
        import pandas as pd

        from ..evaluation.results import read_per_query

        path = self.per_query_table_path(method, backbone)
        try:
            df = read_per_query(path)
        except FileNotFoundError:
            raise InputError(f"no per-query table for {method}{' ' + backbone if backbone and method == 'isa' else ''}"
                             f" yet ({path.relative_to(REPO) if path.is_relative_to(REPO) else path}); it is written "
                             f"by `python -m isa_demo bench accuracy`") from None
        except Exception as e:
            raise InputError(f"cannot read {path.name}: {type(e).__name__}: {e}") from None
        if mod_type and mod_type != "all":
            col = df["mod_type"].astype(str)
            df = df[(col == mod_type) | col.str.startswith(mod_type + ":")]
        rank = pd.to_numeric(df["rank"], errors="coerce")
        worst_key = rank.fillna(np.inf)
        df = df.assign(_k=worst_key).sort_values("_k", ascending=(sort != "worst first"), kind="stable")
        cols = [c for c in ("query_id", "mod_type", "modifier", "rank", "subset_rank") if c in df]
        return df.drop(columns="_k")[cols].reset_index(drop=True), df.drop(columns="_k").reset_index(drop=True)

    def mod_types(self, method: str | None = None, backbone: str | None = None) -> list[str]:
        from ..world import ALL_MOD_TYPES

        return ["all", *ALL_MOD_TYPES]

    def failure_detail(self, row: dict, k: int = 10) -> dict:
        """One row of the per-query table -> reference, modifier, ground truths and the top-K
        (with paths into the world's images and whether each is a ground truth)."""
        targets = list(row.get("targets") if row.get("targets") is not None else [])
        gts = set(map(str, targets))
        top_ids = list(row.get("topk_ids") if row.get("topk_ids") is not None else [])[:k]
        top_scores = list(row.get("topk_scores") if row.get("topk_scores") is not None else [])[:k]
        top = []
        for i, name in enumerate(top_ids):
            score = float(top_scores[i]) if i < len(top_scores) else float("nan")
            top.append({"rank": i + 1, "name": str(name), "score": score, "path": self.world_image(name),
                        "is_gt": str(name) in gts})
        import pandas as pd

        rank = row.get("rank")
        return {"query_id": row.get("query_id"), "mod_type": row.get("mod_type"), "modifier": row.get("modifier"),
                "reference": self.world_image(row.get("reference")), "reference_name": row.get("reference"),
                "targets": [{"name": str(t), "path": self.world_image(t)} for t in targets],
                "rank": None if rank is None or pd.isna(rank) else int(rank), "top": top}

    # ------------------------------------------------------------------ efficiency
    def efficiency(self, highlight: str | None = None, cost: str = "gflops", metric: str = "R@1"):
        """(plotly figure or None, table DataFrame or None, note markdown)."""
        try:
            from ..bench import plots
        except Exception as e:
            return None, None, f"_The efficiency-accuracy plot is not available ({type(e).__name__}: {e})._"
        try:
            acc, eff = plots.load_accuracy(self.results_dir), plots.load_efficiency(self.results_dir)
            joined = plots.join_accuracy_efficiency(acc, eff)
            if joined.empty:
                raise plots.ResultsMissing("no accuracy row matches an efficiency row yet")
            hl = highlight.split(" [")[0] if highlight else None
            figs = plots.accuracy_figures(self.results_dir, metric=metric, highlight=hl)
        except plots.ResultsMissing as e:
            return None, None, f"**No efficiency-accuracy plot yet**: {e}."
        except Exception as e:  # a malformed table
            return None, None, (f"**No efficiency-accuracy plot**: the results tables could not be read "
                                f"({type(e).__name__}: {e}); rerun `python -m isa_demo bench accuracy` and "
                                f"`python -m isa_demo bench efficiency`.")
        fig = figs.get(cost) or next(iter(figs.values()))
        xs = [float(x) for t in fig.data for x in (list(t.x) if t.x is not None else []) if x is not None]
        xs = [x for x in xs if np.isfinite(x) and x > 0]
        if xs:  # room on both sides for the point labels (log axis: the range is in log10 units)
            lo, hi = float(np.log10(min(xs))), float(np.log10(max(xs)))
            pad = max(0.4, 0.25 * (hi - lo))
            fig.update_xaxes(range=[lo - pad, hi + pad])
        fig.update_layout(height=460, legend={"orientation": "h", "yanchor": "top", "y": -0.22, "x": 0})
        cols = [c for c in ("method", "backbone", metric, "gflops", "cpu_ms_p50", "params") if c in joined]
        table = joined[cols].copy()
        table["backbone"] = table["backbone"].fillna("")
        if "params" in table:
            table["params"] = (table["params"] / 1e6).round(2)
        table = table.rename(columns={"params": "params M", "gflops": "GFLOPs", "cpu_ms_p50": "CPU ms"})
        table = table.sort_values(metric, ascending=False).round(3).reset_index(drop=True)
        return fig, table, f"Highlighted: **{hl}**" if hl else "Pick an ISA backbone to highlight it."

    # ------------------------------------------------------------------ serving
    def allowed_paths(self) -> list[str]:
        """Folders the web server may serve: the gallery's image folders, the world's test images
        (examples, inspector) and the app's own assets. Nothing else."""
        roots: list[str] = []
        g = self.gallery
        srcs = (getattr(g, "meta", {}) or {}).get("sources") or []
        for s in srcs:
            roots.append(os.path.normpath(os.path.join(str(g.path), s["images"])))
        if not roots and len(g):
            parents = {str(g.path_of(i).parent) for i in range(len(g))}
            roots.append(os.path.commonpath(sorted(parents)) if len(parents) > 1 else parents.pop())
        if self.world is not None:
            roots.append(str(self.world.root / "images" / self.world_split))
        if ASSETS_DIR.exists():
            roots.append(str(ASSETS_DIR))
        out = []
        for r in roots:
            r = os.path.abspath(r)
            if r not in out and os.path.isdir(r):
                out.append(r)
        return out

    def describe(self) -> dict:
        return {"vl": self.vl.identity(), "gallery": str(getattr(self.gallery, "path", "")),
                "gallery_size": len(self.gallery), "methods": self.method_choices(), "backbones": self.all_backbones(),
                "unavailable": self.unavailable, "max_k": MAX_K}


# ---------------------------------------------------------------------------------------- loading
def load_service(model: str | None = None, pretrained: str | None = "builtin", index: str | None = None,
                 world_dir: str | os.PathLike | None = WORLD_DIR, results_dir: str | os.PathLike = RESULTS_DIR,
                 device: str | None = None, progress: Callable | None = None) -> DemoService:
    """Load the VL model and the gallery (the built-in world's test split unless ``index``)."""
    from ..vl import BUILTIN_NAME, load_vl

    model = model or BUILTIN_NAME
    pretrained = None if pretrained in (None, "none", "") else pretrained
    vl = load_vl(model, pretrained, device=device)
    world = None
    if index:
        from ..index import GalleryIndex

        gallery = GalleryIndex.load(index, expected_identity=vl.identity())
        label = str(index)
    else:
        from ..index import default_gallery

        kw = {}
        if not (model == BUILTIN_NAME and pretrained == "builtin"):
            # another VL model gets its own index of the world's test images, never the shipped one
            # (random weights differ on every start: a throw-away index)
            import re
            import tempfile

            if pretrained is None:
                import atexit
                import shutil

                kw["index_dir"] = Path(tempfile.mkdtemp(prefix="isa-demo-random-gallery-"))
                atexit.register(shutil.rmtree, kw["index_dir"], ignore_errors=True)
            else:
                slug = re.sub(r"[^A-Za-z0-9._-]+", "-", f"{model}-{Path(pretrained).stem}").strip("-")
                kw["index_dir"] = GALLERIES_DIR / f"world-test--{slug}"
        gallery = default_gallery(vl, progress=progress, **kw)
        label = "the built-in world's test images"
    if world_dir is not None:
        try:
            from ..world import World

            w = World(world_dir)
            if WORLD_SPLIT in w.meta.get("splits_done", []):
                world = w
        except Exception:
            world = None
    return DemoService(vl, gallery, world, results_dir=results_dir, gallery_label=label)
