"""Pretrained open_clip weights by tag: check the tag, and say plainly when its weights cannot be had.

open_clip fetches a tag's weights from the Hugging Face hub (or a URL) into a local cache. When
they are not cached and the hub cannot be reached (no network, ``HF_HUB_OFFLINE=1``), it raises
a chain of download errors; :func:`create_pretrained` turns that into one
:class:`isa_demo.errors.VLLoadError` naming the tag, where the weights were looked for, and how
to pass a local file instead (``--vl-pretrained /path/to/open_clip_model.safetensors``).
"""
from __future__ import annotations

import logging
import os

import open_clip

from ..errors import VLLoadError


def check_tag(name: str, tag: str) -> dict:
    """open_clip's pretrained config of ``name``/``tag``; an unknown tag lists the known ones."""
    cfg = open_clip.get_pretrained_cfg(name, tag)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(name)
        known = f"its known tags: {', '.join(tags)}" if tags else "open_clip knows no pretrained tag for it"
        raise VLLoadError(f"{tag!r} is neither a pretrained tag of open_clip model {name!r} nor an existing "
                          f"checkpoint file; {known} (or pass a checkpoint path, 'none' for random weights)")
    return cfg


def hub_repo(cfg: dict) -> tuple[str, str]:
    """``(repository, file)`` of a tag's weights on the Hugging Face hub ('' when it has none)."""
    hub = cfg.get("hf_hub", "")
    if not hub:
        return "", ""
    return (hub.rstrip("/"), "") if hub.endswith("/") else os.path.split(hub)


def where_looked(cfg: dict) -> str:
    """Where open_clip looks for a tag's weights, in words (hub repository and cache folder, or URL)."""
    if cfg.get("file"):
        return f"the file {cfg['file']}"
    repo, filename = hub_repo(cfg)
    if repo:
        from huggingface_hub import constants

        files = filename or "open_clip_model.safetensors / open_clip_pytorch_model.bin"
        return (f"Hugging Face hub repository {repo} ({files}) in the local cache "
                f"{os.path.join(constants.HF_HUB_CACHE, 'models--' + repo.replace('/', '--'))}")
    return f"{cfg.get('url')} in the local cache {os.path.expanduser('~/.cache/clip')}"


def unavailable(name: str, tag: str, cfg: dict) -> VLLoadError:
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    repo = hub_repo(cfg)[0]
    fetch = f", or `huggingface-cli download {repo}`" if repo else ""
    why = "HF_HUB_OFFLINE is set" if offline else "the hub could not be reached"
    return VLLoadError(
        f"the weights of open_clip model {name!r} with pretrained tag {tag!r} are not in the local cache and "
        f"{why}. Looked for: {where_looked(cfg)}. Download them on a machine with network access (open_clip "
        f"does it on first use{fetch}) and copy the cache here, or pass the "
        f"weights file itself: --vl-pretrained /path/to/open_clip_model.safetensors (or .bin / .pt)")


def create_pretrained(name: str, tag: str, **model_kwargs):
    """``open_clip.create_model_and_transforms(name, pretrained=tag)`` with the errors above."""
    cfg = check_tag(name, tag)
    root = logging.getLogger()
    drop = lambda record: "Failed to download" not in record.getMessage()  # noqa: E731 (said below instead)
    root.addFilter(drop)
    try:
        return open_clip.create_model_and_transforms(name, pretrained=tag, **model_kwargs)
    except (RuntimeError, FileNotFoundError, OSError) as e:
        text = str(e)
        if "Failed to download" in text or "local cache" in text or "offline" in text.lower():
            raise unavailable(name, tag, cfg) from None
        raise
    finally:
        root.removeFilter(drop)
