"""Walk an image folder and encode its images with the VL model, never aborting on a bad file.

Each file is read once: its bytes are hashed (sha256, the content identity used to skip files
already indexed) and decoded with :func:`isa_demo.common.load_image` (EXIF orientation, first
frame of animations, decompression-bomb guard). Decoding and preprocessing run in a torch
DataLoader; files that cannot be used come back with the reason instead of a tensor.
"""
from __future__ import annotations

import hashlib
import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..common import ImageError, load_image
from ..errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")


class GalleryError(UserError, RuntimeError):
    """A gallery index that cannot be built, loaded or extended as asked."""


def scan_folder(root: str | os.PathLike, exclude: Iterable[str | os.PathLike] = ()) -> tuple[list[Path], list[dict]]:
    """Image files under ``root`` (sorted, recursive; hidden files and folders ignored) and the
    other files, as ``{"path", "reason"}`` skip entries. ``exclude``: folders not to enter."""
    root = Path(root)
    if not root.exists():
        raise GalleryError(f"image folder not found: {root}")
    if not root.is_dir():
        raise GalleryError(f"{root} is not a folder of images")
    excluded = {os.path.abspath(p) for p in exclude}
    images: list[Path] = []
    skipped: list[dict] = []

    def unreadable_dir(err: OSError) -> None:
        skipped.append({"path": Path(err.filename or root), "reason": f"cannot list folder ({err.strerror or err})"})

    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable_dir):
        dirnames[:] = sorted(d for d in dirnames
                             if not d.startswith(".") and os.path.abspath(os.path.join(dirpath, d)) not in excluded)
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = Path(dirpath) / name
            suffix = path.suffix.lower()
            if suffix in IMAGE_EXTENSIONS:
                images.append(path)
            else:
                skipped.append({"path": path, "reason": f"not an image file type ({suffix or 'no extension'}; "
                                                        f"indexed types: {' '.join(IMAGE_EXTENSIONS)})"})
    return images, skipped


def read_image_file(path: Path, transform: Callable, known: set[str] | frozenset = frozenset()) -> tuple[dict, object]:
    """One file -> ``(info, tensor or None)`` by the rules of :func:`decode_bytes`. Never raises for
    a bad file (the Ray engine's workers call it too)."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        return {"reason": f"cannot read file ({e.strerror or e})"}, None
    return decode_bytes(data, transform, {}, known)


def decode_bytes(data: bytes, transform: Callable, info: dict, known: set[str] | frozenset = frozenset()):
    """One file's bytes -> ``(info, transform(image) or None)``, the skip rules of every reader
    (an index build, a training source): ``info`` gains ``sha256``/``bytes``/``width``/``height``, or
    ``reason`` when the file cannot be used, or ``known`` when its content is in ``known``."""
    if not data:
        info["reason"] = "empty file (0 bytes)"
        return info, None
    info.update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    if info["sha256"] in known:
        info["known"] = True
        return info, None
    try:
        img = load_image(io.BytesIO(data))
        info.update(width=img.width, height=img.height)
        return info, transform(img)
    except ImageError as e:
        info["reason"] = re.sub(r" ?<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "", str(e))
    except Exception as e:  # a decoder bug on a hostile file must not end the build
        info["reason"] = f"could not decode ({type(e).__name__}: {e})"
    return info, None


class ImageFiles(Dataset):
    """Item ``i``: ``(info, tensor or None)`` of :func:`read_image_file`, ``info["i"] = i``."""

    def __init__(self, paths: list[Path], transform: Callable, known_hashes: set[str] | frozenset = frozenset()):
        self.paths = paths
        self.transform = transform
        self.known = known_hashes

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        info, x = read_image_file(self.paths[i], self.transform, self.known)
        info["i"] = i
        return info, x


def _collate(items):
    tensors = [x for _, x in items if x is not None]
    return [info for info, _ in items], (torch.stack(tensors) if tensors else None)


class Progress:
    """tqdm, or a callback such as Gradio's ``gr.Progress`` called as ``fn(fraction, desc=...)``."""

    def __init__(self, total: int, desc: str, callback: Callable | None = None):
        self.total, self.desc, self.callback, self.done = max(total, 1), desc, callback, 0
        self.bar = None if callback else tqdm(total=total, desc=desc, unit="img")
        self.update(0)

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        else:
            self.callback(min(self.done / self.total, 1.0), desc=f"{self.desc} {self.done}/{self.total}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def encode_tensor(vl, x: torch.Tensor) -> np.ndarray:
    """Preprocessed batch -> normalized float32 features ``(B, D)`` (fp16 autocast on CUDA)."""
    cuda = str(vl.device).startswith("cuda")
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16, enabled=cuda):
        f = vl.encode_image_tensor(x.to(vl.device, non_blocking=True))
    return f.float().cpu().numpy()


@dataclass
class Encoded:
    features: np.ndarray  # (N, D) float32, normalized
    records: list[dict]  # per feature: file (Path), sha256, bytes, width, height
    skipped: list[dict] = field(default_factory=list)  # {"path", "reason"}
    known: int = 0  # files whose content was already indexed


def encode_files(vl, paths: list[Path], known_hashes: Iterable[str] = (), batch_size: int = 64, workers: int = 0,
                 progress: Callable | None = None, desc: str = "encode images") -> Encoded:
    """Encode image files; files already indexed (by content), duplicates within ``paths`` and
    unusable files are left out (the latter two reported in ``skipped``)."""
    known = set(known_hashes)
    loader = DataLoader(ImageFiles(paths, vl.preprocess, frozenset(known)), batch_size=batch_size,
                        num_workers=workers, collate_fn=_collate, pin_memory=str(vl.device).startswith("cuda"))
    feats: list[np.ndarray] = []
    kept = Collector()
    bar = Progress(len(paths), desc, progress)
    try:
        for infos, x in loader:
            f = encode_tensor(vl, x) if x is not None else None
            row = 0
            for info in infos:
                if has_vector(info):
                    vec, row = f[row], row + 1
                    if kept.add(paths[info["i"]], info):
                        feats.append(vec)
                else:
                    kept.add(paths[info["i"]], info)
            bar.update(len(infos))
    finally:
        bar.close()
    features = np.stack(feats).astype(np.float32) if feats else np.empty((0, vl.embed_dim), np.float32)
    return Encoded(features, kept.records, kept.skipped, kept.known)


def has_vector(info: dict) -> bool:
    """Whether :func:`read_image_file` gave this file a tensor (so the encoder gives it a vector)."""
    return not info.get("known") and "reason" not in info


class Collector:
    """Files' read results, in file order -> the records kept (the first file of each content),
    the files skipped (with the reason, duplicates included) and the count already indexed."""

    def __init__(self):
        self.records: list[dict] = []
        self.skipped: list[dict] = []
        self.known = 0
        self.first_of: dict[str, Path] = {}

    def add(self, path: Path, info: dict) -> bool:
        """Take one file's ``info``; True when its vector is kept."""
        if info.get("known"):
            self.known += 1
            return False
        if "reason" in info:
            self.skipped.append({"path": path, "reason": info["reason"]})
            return False
        sha = info["sha256"]
        if sha in self.first_of:
            self.skipped.append({"path": path, "reason": f"same content as {self.first_of[sha]}"})
            return False
        self.first_of[sha] = path
        self.records.append({"file": path, "sha256": sha, "bytes": info["bytes"], "width": info["width"],
                             "height": info["height"]})
        return True
