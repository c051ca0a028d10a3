"""What the demo offers: the variants (method, backbone, checkpoint) a VL model can serve, the
choices the UI shows for them, and the methods themselves, loaded on first use.

Variants are :class:`isa_demo.methods.Variant` values throughout; the UI's two strings (a method
choice and, for ISA, a backbone choice) are derived from them and resolved back by lookup, never
by parsing.
"""
from __future__ import annotations

import json
import logging
import threading
from typing import Callable, Sequence

from ..methods import Method, QueryError, Variant, create_method
from ..settings import LIGHTEST_BACKBONE
from ..vl.model import identity_mismatch
from .inputs import InputError

BASELINES = ("image-only", "text-only", "sum")  # training-free: always offered

log = logging.getLogger("isa_demo.app")


def build_variants(raw: Sequence[dict | Variant]) -> list[Variant]:
    """The variants to offer, one per UI choice, from ``create_method`` argument dicts (or
    variants): the baselines first, then the others in order; a later variant with the same
    choice as an earlier one is dropped."""
    out: list[Variant] = []
    seen: set[tuple[str, str | None]] = set()
    for v in map(Variant.of, raw):
        if v.choice not in seen:
            seen.add(v.choice)
            out.append(v)
    for i, m in enumerate(BASELINES):
        if Variant(m).choice not in seen:
            out.insert(i, Variant(m))
            seen.add(Variant(m).choice)
    return out


def incompatibility(v: Variant, vl) -> str | None:
    """Why a variant's checkpoint cannot serve this VL model (None when it can or is unknown)."""
    try:
        path = v.checkpoint_file(vl.name)
    except Exception:
        return None
    if path is None:
        return None
    if not path.exists():
        return f"its checkpoint ({path.name}) is missing"
    try:
        from ..common import read_metadata

        saved = json.loads(read_metadata(path).get("vl", "{}"))
    except Exception:
        return None
    return identity_mismatch(saved, vl.identity(), made="trained for") if saved else None


def _shown(text: str, limit: int = 60) -> str:
    """A name the user sent, quoted and cut to ``limit`` characters (a message never echoes 100 kB)."""
    return repr(text if len(text) <= limit else text[:limit] + "…")


class Catalogue:
    """The variants offered for ``vl`` (``variants``), the ones it cannot serve and why
    (``unavailable``), and their loaded methods (cached; loading is thread-safe)."""

    def __init__(self, vl, variants: Sequence[dict | Variant] | None = None, method_factory: Callable | None = None):
        from ..methods import shipped_variants, trained_variants

        self.vl = vl
        self._create = method_factory or create_method
        self.variants: list[Variant] = []
        self.unavailable: dict[Variant, str] = {}
        if variants is None:  # the shipped ones, then those trained here for this VL model (train isa --data ...)
            variants = shipped_variants(vl.name) + trained_variants(vl.name)
        for v in build_variants(variants):
            why = incompatibility(v, vl)
            if why:
                self.unavailable[v] = why
            else:
                self.variants.append(v)
        self._methods: dict[Variant, Method] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ choices
    def method_choices(self) -> list[str]:
        return list(dict.fromkeys(v.label for v in self.variants))

    def backbone_choices(self, method: str | None = "isa") -> list[str]:
        return [v.backbone_label for v in self.variants if v.label == (method or "isa") and v.backbone_label]

    def all_backbones(self) -> list[str]:
        return self.backbone_choices("isa")

    def default_method(self) -> str:
        choices = self.method_choices()
        return "isa" if "isa" in choices else ("sum" if "sum" in choices else choices[0])

    def default_backbone(self) -> str | None:
        bbs = self.all_backbones()
        return LIGHTEST_BACKBONE if LIGHTEST_BACKBONE in bbs else (bbs[0] if bbs else None)

    def resolve(self, method: str | None, backbone: str | None = None) -> Variant:
        """The variant for a (method, backbone) choice; ``backbone`` is ignored by non-ISA methods."""
        if method is not None and not isinstance(method, str):
            raise InputError(f"the method must be a name, one of {', '.join(self.method_choices())}; "
                             f"got a {type(method).__name__}")
        if backbone is not None and not isinstance(backbone, str):
            raise InputError(f"the backbone must be a name or null; got a {type(backbone).__name__}")
        method = (method or "").strip()
        if not method:
            raise InputError(f"no method chosen; choose one of {', '.join(self.method_choices())}")
        cands = [v for v in self.variants if v.label == method]
        missing = {v.backbone_label: why for v, why in self.unavailable.items() if v.label == method}
        if not cands:
            if missing:
                why = missing.get(backbone) or next(iter(missing.values()))
                raise InputError(f"method {_shown(method)} is not available with this VL model: {why}")
            raise InputError(f"unknown method {_shown(method)}; choose one of {', '.join(self.method_choices())}")
        if len(cands) == 1 and not cands[0].backbone_label:
            return cands[0]
        want = backbone or self.default_backbone()
        for v in cands:
            if v.backbone_label == want:
                return v
        if want in missing:
            raise InputError(f"{method} {want} is not available with this VL model: {missing[want]}")
        raise InputError(f"no shipped {method} model with backbone {_shown(want)}; choose one of "
                         f"{', '.join(v.backbone_label or '' for v in cands)}")

    def highlighted_backbone(self, method: str | None, backbone: str | None) -> str | None:
        """The backbone of an ISA choice (for the efficiency plot), None for anything else."""
        try:
            v = self.resolve(method, backbone)
        except InputError:
            return None
        return v.backbone if v.is_isa else None

    # ------------------------------------------------------------------ loading
    def is_loaded(self, v: Variant) -> bool:
        return v in self._methods

    def get_method(self, v: Variant) -> Method:
        """The loaded method for a variant (created once, then cached; thread-safe)."""
        m = self._methods.get(v)
        if m is not None:
            return m
        with self._lock:  # one load at a time: loads are rare, and concurrent first imports of the
            if v not in self._methods:  # same modules can see half-initialized modules
                try:
                    self._methods[v] = self._create(v.method, self.vl, **v.create_kwargs())
                except (QueryError, InputError) as e:
                    raise InputError(str(e)) from None
                except Exception as e:  # missing / incompatible checkpoint ...: the details are the operator's
                    log.error("could not load %s: %s", v.display, e, exc_info=True)
                    raise InputError(f"{v.display} could not be loaded on the server (its checkpoint is missing "
                                     "or damaged); choose another method") from None
            return self._methods[v]

    def warm_up(self, variants: Sequence[Variant] | None = None) -> None:
        """Load methods ahead of the first query (the default one unless told)."""
        for v in variants or [self.resolve(self.default_method(), self.default_backbone())]:
            try:
                self.get_method(v)
            except InputError:
                pass

    def describe_unavailable(self) -> dict[str, str]:
        """``{variant display: why}`` for the variants this VL model cannot serve."""
        return {v.display: why for v, why in self.unavailable.items()}
