"""ISA query encoder = light backbone (or the frozen VL tower, "symmetric") + adaptive token learner.

Checkpoints are safetensors with a metadata record (config, VL identity, training facts); loading
checks the backbone, L and VL model against what the caller expects and names both on mismatch.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..common import WEIGHTS, load_checkpoint, load_image, pack_state, save_checkpoint, unpack_state
from ..errors import CheckpointError
from ..settings import checkpoint_dir
from ..vl.model import identity_mismatch
from .atl import AdaptiveTokenLearner
from .backbones import SYMMETRIC, create_backbone

FORMAT = "isa-demo-query-encoder"


@dataclass
class EncoderConfig:
    backbone: str
    num_tokens: int = 4
    dim: int = 256
    layers: int = 1
    image_size: int = 96
    word_dim: int = 0
    channels: int = 0
    grid: int = 4
    mean: list = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list = field(default_factory=lambda: [0.229, 0.224, 0.225])
    imagenet: bool = False
    word_norm: float = 0.0  # > 0: every pseudo word rescaled to this norm (0: free, the first release)


def shipped_checkpoint(backbone: str, vl_name: str | None = None) -> Path:
    """The shipped checkpoint of ``backbone`` for a built-in VL model (default: the default one)."""
    return checkpoint_dir("isa", vl_name) / f"{backbone}.safetensors"


class QueryEncoder(nn.Module):
    """``forward(x) -> (pseudo sentence (B, L, d_w), attention maps (B, L, h, w))``."""

    def __init__(self, cfg: EncoderConfig, vl=None, imagenet_init: bool = True):
        super().__init__()
        self.cfg = cfg
        self.vl = vl  # only used by the symmetric variant (not a submodule: never saved)
        if cfg.backbone == SYMMETRIC:
            if vl is None:
                raise ValueError("the symmetric encoder needs the VL model")
            self.backbone = None
            cfg.channels, cfg.image_size = vl.embed_dim, vl.image_size
            cfg.grid = vl.image_size // _patch(vl)
        else:
            self.backbone, info = create_backbone(cfg.backbone, imagenet=imagenet_init)
            cfg.channels, cfg.mean, cfg.std = info["channels"], info["mean"], info["std"]
            cfg.imagenet = cfg.imagenet or info["imagenet"]
            cfg.grid = max(1, cfg.image_size // 32)
        self.atl = AdaptiveTokenLearner(cfg.channels, cfg.word_dim, cfg.num_tokens, cfg.dim, cfg.layers, grid=cfg.grid,
                                        word_norm=cfg.word_norm)
        self.register_buffer("mean", torch.tensor(cfg.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.std).view(1, 3, 1, 1), persistent=False)

    # ------------------------------------------------------------------ inputs
    def preprocess(self, images) -> torch.Tensor:
        """PIL images / paths / arrays -> input batch (:meth:`transform` of each)."""
        if self.backbone is None:
            return self.vl.images_to_tensor(images)
        tf = self.transform()
        return torch.stack([tf(load_image(im)) for im in images]).to(self.mean.device)

    def transform(self):
        """One PIL image -> the backbone's input: timm's eval transform from the backbone's data
        config, at the encoder's size, with its checkpoint's mean/std. ``crop_pct`` 1 (the shorter
        side resized to the size, then the centre square: what the VL side sees of the image) and
        bicubic interpolation (what the world trainer used), so that a square image gets exactly
        what the world trainer's fast path gives it. The symmetric variant: the VL model's own."""
        if self.backbone is None:
            return self.vl.preprocess
        if getattr(self, "_transform", None) is not None:
            return self._transform
        from timm.data import create_transform, resolve_data_config

        cfg = resolve_data_config({}, model=self.backbone)
        cfg.update(input_size=(3, self.cfg.image_size, self.cfg.image_size), crop_pct=1.0, interpolation="bicubic",
                   mean=tuple(self.cfg.mean), std=tuple(self.cfg.std))
        self._transform = create_transform(**cfg, is_training=False)
        return self._transform

    def uint8_to_tensor(self, arr) -> torch.Tensor:
        if self.backbone is None:
            return self.vl.uint8_to_tensor(arr)
        dev = self.mean.device
        x = torch.as_tensor(np.asarray(arr)).to(dev).permute(0, 3, 1, 2).float().div_(255)
        if x.shape[-1] != self.cfg.image_size:
            x = F.interpolate(x, size=(self.cfg.image_size,) * 2, mode="bicubic", antialias=True).clamp_(0, 1)
        return (x - self.mean) / self.std

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if self.backbone is not None:
            return self.backbone.forward_features(x)
        with torch.no_grad():
            _, tokens = self.vl.encode_image_local(x)
        return tokens_to_map(tokens)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.atl(self.features(x))

    # ------------------------------------------------------------------ checkpoints
    def save(self, path: str | os.PathLike, vl_identity: dict, extra: dict | None = None) -> None:
        state = pack_state(self.state_dict())
        meta = {"format": FORMAT, "config": json.dumps(asdict(self.cfg)), "vl": json.dumps(vl_identity, sort_keys=True),
                "weights": WEIGHTS, **{k: str(v) for k, v in (extra or {}).items()}}
        save_checkpoint(state, path, meta)

    @classmethod
    def load(cls, path: str | os.PathLike, vl, backbone: str | None = None, num_tokens: int | None = None,
             device: str | None = None) -> "QueryEncoder":
        """Load a checkpoint for ``vl``; refuse one made for another VL model, backbone or L."""
        path = Path(path)
        if not path.exists():
            raise CheckpointError(f"query-encoder checkpoint not found: {path}")
        state, meta = load_checkpoint(path)  # refuses a damaged file before anything is read from it
        if meta.get("format") != FORMAT:
            raise CheckpointError(f"{path} is not an isa-demo query-encoder checkpoint")
        try:
            cfg = EncoderConfig(**json.loads(meta["config"]))
            saved_vl = json.loads(meta["vl"])
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{path.name} is damaged: its metadata cannot be read ({e})") from None
        if backbone is not None and cfg.backbone != backbone:
            raise CheckpointError(f"{path.name}: expected a checkpoint for backbone {backbone!r}, "
                                  f"found {cfg.backbone!r}")
        if num_tokens is not None and cfg.num_tokens != num_tokens:
            raise CheckpointError(f"{path.name}: expected L={num_tokens} pseudo tokens, found L={cfg.num_tokens}")
        why = identity_mismatch(saved_vl, vl.identity())
        if why:
            raise CheckpointError(f"{path.name} {why}; retrain it for this VL model with "
                                  f"`python -m isa_demo train isa --backbone {cfg.backbone}`")
        enc = cls(cfg, vl=vl, imagenet_init=False)
        enc.load_state_dict(unpack_state(state), strict=True)
        enc.meta = meta
        return enc.to(device or vl.device).eval()


def tokens_to_map(tokens: torch.Tensor) -> torch.Tensor:
    """``(B, K, D)`` ViT patch tokens -> ``(B, D, g, g)`` feature map."""
    B, K, D = tokens.shape
    g = int(round(K ** 0.5))
    return tokens.transpose(1, 2).reshape(B, D, g, g)


def _patch(vl) -> int:
    p = vl.model.visual.patch_size
    return int(p[0] if isinstance(p, (tuple, list)) else p)
