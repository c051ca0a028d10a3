"""The demo's default gallery: the built-in world's test images, indexed with the VL model.

``default_gallery(vl)`` renders the world's test split if needed (deterministic, ~15 s), then
loads the shipped index from ``galleries/world-test/`` when it was made by the same model from
the same images (checked by model identity and content hashes), or builds and writes it.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable

import numpy as np

from ..common import file_sha256
from ..settings import BUILTIN_PRETRAINED, BUILTIN_VL, DEFAULT_INDEX_DIR, GALLERIES_DIR, WORLD_DIR
from ..world import World, build_world
from .encode import GalleryError, Progress, encode_tensor
from .gallery import META, GalleryIndex

INDEX_DIR = DEFAULT_INDEX_DIR
SPOT_CHECKS = 64  # images whose content hash is compared with the index on load


def index_dir_for(model: str, pretrained: str) -> Path:
    """Where the world-test index of a VL model lives: the shipped ``galleries/world-test/`` for the
    default built-in model, ``galleries/world-test--MODEL-WEIGHTS/`` for any other (never the
    shipped one)."""
    import re

    if model == BUILTIN_VL and pretrained == BUILTIN_PRETRAINED:
        return Path(INDEX_DIR)
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", f"{model}-{Path(pretrained).stem}").strip("-")
    return GALLERIES_DIR / f"world-test--{name}"


def default_gallery(vl, progress: Callable | None = None, *, world_dir: str | os.PathLike = WORLD_DIR,
                    split: str = "test", size: str = "full", seed: int = 0,
                    index_dir: str | os.PathLike = INDEX_DIR, batch_size: int = 256) -> GalleryIndex:
    """The world's ``split`` images as a :class:`GalleryIndex` for ``vl`` (id i = world record i).

    ``progress``: optional callable ``fn(fraction, desc=...)`` (e.g. ``gr.Progress()``); tqdm otherwise.
    """
    if progress is not None:
        progress(0.0, desc=f"preparing the built-in world's {split} images")
    build_world(world_dir, seed=seed, size=size, splits=(split,))
    world = World(world_dir)
    index_dir = Path(index_dir)
    if (index_dir / META).exists():
        try:
            g = GalleryIndex.load(index_dir, expected_identity=vl.identity())
            problem = _mismatch(g, world, split)
            if problem is None:
                return g
        except GalleryError as e:
            problem = str(e)
        print(f"rebuilding the default gallery {index_dir}: {problem}", file=sys.stderr)
    return build_world_gallery(vl, world, split, index_dir, batch_size=batch_size, progress=progress)


def build_world_gallery(vl, world: World, split: str, out: str | os.PathLike, batch_size: int = 256,
                        progress: Callable | None = None) -> GalleryIndex:
    """Index a world split with the fast path (cached uint8 array -> model input, no PIL per file)."""
    records = world.records(split)
    if progress is not None:
        progress(0.0, desc=f"loading the world's {split} images")
    arr = world.image_array(split, vl.image_size, progress=progress is None)
    bar = Progress(len(records), f"encode world {split}", progress)
    feats = []
    try:
        for i in range(0, len(records), batch_size):
            feats.append(encode_tensor(vl, vl.uint8_to_tensor(np.array(arr[i:i + batch_size]))))
            bar.update(len(feats[-1]))
    finally:
        bar.close()
    size = int(world.meta["image_size"])
    rows = []
    for rec in records:
        file = world.image_path(rec)
        rows.append({"file": file, "sha256": file_sha256(file), "bytes": file.stat().st_size, "width": size,
                     "height": size})
    g = GalleryIndex.from_features(out, np.concatenate(feats), rows, vl.identity(),
                                   extra_meta={"world": _world_key(world, split)})
    g.meta["sources"].append({"images": os.path.relpath(world.root / "images" / split, out), "date": g.meta["created"],
                              "files": len(rows), "added": len(rows), "skipped": 0, "already_indexed": 0})
    g.save(overwrite=True)
    return g


def _world_key(world: World, split: str) -> dict:
    return {"seed": world.meta["seed"], "size": world.meta["size"], "split": split,
            "image_size": world.meta["image_size"]}


def _mismatch(g: GalleryIndex, world: World, split: str) -> str | None:
    """Why ``g`` is not the index of this world split (None when it is)."""
    if g.meta.get("world") != _world_key(world, split):
        return f"it indexes world {g.meta.get('world')}, not {_world_key(world, split)}"
    records = world.records(split)
    if len(g) != len(records):
        return f"it holds {len(g)} images, the world's {split} split {len(records)}"
    for i in np.linspace(0, len(records) - 1, min(SPOT_CHECKS, len(records))).astype(int):
        file = world.image_path(records[i])
        if g.path_of(i).resolve() != file.resolve():
            return f"entry {i} is {g.path_of(i)}, expected {file}"
        if file_sha256(file) != g.records[i]["sha256"]:
            return f"{file} differs from the indexed image (a different renderer or Pillow version?)"
    return None
