"""The masked-pair network ``Phi`` and its checkpoint format (METHOD.md 4, seed 002).

``Phi`` maps the frozen VL image feature ``g(x)`` (normalized, ``embed_dim``) to one pseudo word
(``word_dim``): a 3-layer MLP ``embed_dim -> 4 d_w -> 4 d_w -> d_w`` with GELU and dropout (the
paper's 768-3072-768 for ViT-L/14, whose ``d_w`` is 768; scaled with the VL model's widths). A
query is ``normalize(E_T("a photo of * that {modifier}"))`` with ``* = Phi(g(reference))``.

Two methods share the network and differ only in training (``isa_demo/training/masked_ti.py``):
``masked-ti`` (query-target loss on CAM-masked images + original loss) and ``single-token``
(original loss only: the plain Pic2Word/SEARLE-style single-token inversion); the methods
themselves are in ``isa_demo/methods/masked_ti.py``.

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

from ..common import load_checkpoint, read_metadata, save_checkpoint
from ..errors import CheckpointError
from ..settings import REPO as ROOT
from ..settings import checkpoint_dir
from ..vl import identity_mismatch

FORMAT = "isa-demo-masked-ti"


def shipped_checkpoint(name: str, vl_name: str | None = None) -> Path:
    """``assets/checkpoints/{VL}/masked-ti/{name}.safetensors`` (VL: the default built-in model)."""
    return checkpoint_dir("masked-ti", vl_name) / f"{name}.safetensors"


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
    state = {k: v.detach().cpu().half().contiguous() for k, v in phi.state_dict().items()}
    meta = {"format": FORMAT, "config": json.dumps(phi.config), "vl": json.dumps(vl_identity, sort_keys=True),
            **{k: v if isinstance(v, str) else json.dumps(v) for k, v in facts.items()}}
    return save_checkpoint(state, path, meta)


def load_phi(path: str | os.PathLike, vl, device: str | None = None) -> tuple[Phi, dict]:
    """Load a checkpoint for ``vl``; refuse one trained for another VL model (names both)."""
    path = Path(path)
    if not path.exists() and not path.is_absolute() and (ROOT / path).exists():
        path = ROOT / path  # repo-relative, as shipped_variants() names them
    if not path.exists():
        raise CheckpointError(f"masked-ti checkpoint not found: {path}; train one with "
                              f"`python -m isa_demo train masked-ti` (see --help)")
    state, meta = load_checkpoint(path)  # refuses a damaged file before anything is read from it
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an isa-demo masked-ti / single-token checkpoint")
    try:
        saved_vl, cfg = json.loads(meta["vl"]), json.loads(meta["config"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path.name} is damaged: its metadata cannot be read ({e})") from None
    why = identity_mismatch(saved_vl, vl.identity())
    if why:
        raise CheckpointError(f"{path.name} {why}. Retrain it for this VL model with "
                              f"`python -m isa_demo train masked-ti`.")
    if cfg["embed_dim"] != vl.embed_dim or cfg["word_dim"] != vl.word_dim:
        raise CheckpointError(f"{path.name}: Phi maps {cfg['embed_dim']} -> {cfg['word_dim']}, the VL model needs "
                              f"{vl.embed_dim} -> {vl.word_dim}")
    phi = Phi(cfg["embed_dim"], cfg["word_dim"], cfg["hidden"], cfg["dropout"])
    phi.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return phi.to(device or vl.device).eval(), meta


def shipped_variants(vl_name: str | None = None) -> list[dict]:
    """The shipped masked-ti / single-token checkpoints for a built-in VL model as ``create_method``
    arguments: the main ``masked-ti`` first, then its ablations (sorted), then ``single-token``."""
    files = sorted(checkpoint_dir("masked-ti", vl_name).glob("*.safetensors"))
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
