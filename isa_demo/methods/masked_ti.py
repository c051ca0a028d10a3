"""Masked image-text pair textual inversion (METHOD.md 4, seed 002) and its single-token baseline.

``Phi`` maps the frozen VL image feature ``g(x)`` (normalized, ``embed_dim``) to one pseudo word
(``word_dim``): a 3-layer MLP ``embed_dim -> 4 d_w -> 4 d_w -> d_w`` with GELU and dropout (the
paper's 768-3072-768 for ViT-L/14, whose ``d_w`` is 768; scaled with the VL model's widths). A
query is ``normalize(E_T("a photo of * that {modifier}"))`` with ``* = Phi(g(reference))``.

Two methods share the code and differ only in training (``isa_demo/training/masked_ti.py``):
``masked-ti`` (query-target loss on CAM-masked images + original loss) and ``single-token``
(original loss only: the plain Pic2Word/SEARLE-style single-token inversion).

Checkpoints are fp16 safetensors with a metadata record (method, tau, loss weights, VL identity,
world seed, steps, date); loading refuses a checkpoint trained for another VL model and names
what it expected and what it found.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from ..common import atomic_path, read_metadata
from .base import PROMPT, PseudoTokenMethod

FORMAT = "isa-demo-masked-ti"
ROOT = Path(__file__).resolve().parents[2]
CHECKPOINT_DIR = ROOT / "assets" / "checkpoints" / "masked-ti"
ORIGINAL_PROMPT = "a photo of *"
VL_KEYS = ("name", "checkpoint_sha256", "embed_dim")


class CheckpointError(ValueError):
    pass


def shipped_checkpoint(name: str) -> Path:
    """``assets/checkpoints/masked-ti/{name}.safetensors``."""
    return CHECKPOINT_DIR / f"{name}.safetensors"


class Phi(nn.Module):
    """3-layer MLP: image feature ``(B, embed_dim)`` -> one pseudo word ``(B, word_dim)``."""

    def __init__(self, embed_dim: int, word_dim: int, hidden: int | None = None, dropout: float = 0.1):
        super().__init__()
        hidden = hidden or 4 * word_dim
        self.config = {"embed_dim": int(embed_dim), "word_dim": int(word_dim), "hidden": int(hidden),
                       "dropout": float(dropout)}
        self.net = nn.Sequential(
            nn.Linear(embed_dim, hidden), nn.GELU(), nn.Dropout(dropout),
            nn.Linear(hidden, hidden), nn.GELU(), nn.Dropout(dropout),
            nn.Linear(hidden, word_dim),
        )

    def forward(self, g: torch.Tensor) -> torch.Tensor:
        return self.net(g)

    @classmethod
    def for_vl(cls, vl, dropout: float = 0.1) -> "Phi":
        return cls(vl.embed_dim, vl.word_dim, dropout=dropout)


def save_phi(path: str | os.PathLike, phi: Phi, vl_identity: dict, facts: dict) -> Path:
    """Write ``phi`` as fp16 safetensors with the metadata record (atomically)."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().half().contiguous() for k, v in phi.state_dict().items()}
    meta = {"format": FORMAT, "config": json.dumps(phi.config), "vl": json.dumps(vl_identity, sort_keys=True),
            **{k: v if isinstance(v, str) else json.dumps(v) for k, v in facts.items()}}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=meta)
    return Path(path)


def load_phi(path: str | os.PathLike, vl, device: str | None = None) -> tuple[Phi, dict]:
    """Load a checkpoint for ``vl``; refuse one trained for another VL model (names both)."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.exists() and not path.is_absolute() and (ROOT / path).exists():
        path = ROOT / path  # repo-relative, as shipped_variants() names them
    if not path.exists():
        raise CheckpointError(f"masked-ti checkpoint not found: {path}; train one with "
                              f"`python -m isa_demo train masked-ti` (see --help)")
    meta = read_metadata(path)
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an isa-demo masked-ti / single-token checkpoint")
    saved = json.loads(meta["vl"])
    want = vl.identity()
    if any(saved.get(k) != want.get(k) for k in VL_KEYS):
        def show(d):
            return (f"{d.get('name')} (checkpoint_sha256 {str(d.get('checkpoint_sha256'))[:16]}, "
                    f"embed_dim {d.get('embed_dim')})")
        raise CheckpointError(f"{path.name} was trained for VL model {show(saved)}, but the loaded VL model is "
                              f"{show(want)}: expected {show(want)}, found {show(saved)}. Retrain it for this "
                              f"VL model with `python -m isa_demo train masked-ti`.")
    cfg = json.loads(meta["config"])
    if cfg["embed_dim"] != vl.embed_dim or cfg["word_dim"] != vl.word_dim:
        raise CheckpointError(f"{path.name}: Phi maps {cfg['embed_dim']} -> {cfg['word_dim']}, the VL model needs "
                              f"{vl.embed_dim} -> {vl.word_dim}")
    phi = Phi(cfg["embed_dim"], cfg["word_dim"], cfg["hidden"], cfg["dropout"])
    state = load_file(str(path))
    phi.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return phi.to(device or vl.device).eval(), meta


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


def shipped_variants() -> list[dict]:
    """The shipped masked-ti / single-token checkpoints as ``create_method`` arguments: the main
    ``masked-ti`` first, then its ablations (sorted), then ``single-token``."""
    files = sorted(CHECKPOINT_DIR.glob("*.safetensors"))
    order = {"masked-ti": 0, "single-token": 2}
    files.sort(key=lambda p: (order.get(p.stem, 1), p.stem))
    out = []
    for p in files:
        try:
            method = read_metadata(p).get("method", "masked-ti")
        except Exception:  # an unreadable file is not a shipped variant
            continue
        default = p.stem == method  # the method's own default checkpoint
        out.append({"method": method, "backbone": None,
                    "checkpoint": None if default else str(p.relative_to(ROOT))})
    return out
