"""Embedding shards: what a distributed encoding writes before an index is built from it.

A shard directory holds ``plan.json`` (the file list's hash, the model identity, files per
shard) and, per shard ``k`` (files ``k*S .. (k+1)*S-1`` of the sorted file list), ``NNNNN.npy``
(the float32 vectors of the files that were read, in order) and ``NNNNN.jsonl`` (one row per
file: its path and what reading it gave: ``sha256``/``bytes``/``width``/``height``, or the
``reason`` it was skipped). Each shard is written atomically, the ``.jsonl`` last, so a shard
with its ``.jsonl`` is complete: a build that stops (killed, a worker lost for good) is resumed
by encoding only the shards still missing. The directory is removed once the index is written.

:func:`collect` reads the shards in file order with the same rules as the single-process build
(first file of each content kept, every skip reported), so an index built from shards has the
same ids as one built by :func:`isa_demo.index.encode.encode_files`.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Iterator

import numpy as np

from ..common import atomic_path
from .encode import Collector, GalleryError, has_vector

FORMAT = "isa-demo-shards"
PLAN = "plan.json"


def files_key(files: list[Path]) -> str:
    return hashlib.sha256("\n".join(os.path.abspath(f) for f in files).encode()).hexdigest()


class ShardSet:
    """The shards of one encoding of ``files`` with one model, under ``root``."""

    def __init__(self, root: str | os.PathLike, files: list[Path], shard_files: int):
        self.root = Path(root)
        self.files = files
        self.shard_files = max(1, int(shard_files))

    @classmethod
    def open(cls, root: str | os.PathLike, files: list[Path], identity: dict, dim: int,
             shard_files: int = 4096) -> "ShardSet":
        """The shards of a previous run of the same encoding (same files, model, shard size), or a
        fresh directory (anything else found there is removed: it belongs to another encoding)."""
        root = Path(root)
        plan = {"format": FORMAT, "version": 1, "files": len(files), "files_sha256": files_key(files),
                "model": identity, "dim": int(dim), "shard_files": int(shard_files)}
        if root.exists():
            try:
                same = json.loads((root / PLAN).read_text()) == plan
            except (OSError, ValueError):
                same = False
            if not same:
                if any(p for p in root.iterdir() if p.name != PLAN and not p.name.endswith((".npy", ".jsonl", ".tmp"))):
                    raise GalleryError(f"{root} holds files that are not embedding shards; remove it or choose "
                                       f"another --work folder")
                shutil.rmtree(root)
        if not root.exists():
            root.mkdir(parents=True)
            (root / PLAN).write_text(json.dumps(plan, indent=1))
        return cls(root, files, shard_files)

    def __len__(self) -> int:
        return (len(self.files) + self.shard_files - 1) // self.shard_files

    def range(self, k: int) -> range:
        return range(k * self.shard_files, min((k + 1) * self.shard_files, len(self.files)))

    def _paths(self, k: int) -> tuple[Path, Path]:
        return self.root / f"{k:05d}.npy", self.root / f"{k:05d}.jsonl"

    def done(self, k: int) -> bool:
        return self._paths(k)[1].exists()

    def missing(self) -> list[int]:
        return [k for k in range(len(self)) if not self.done(k)]

    def shard_of(self, i: int) -> int:
        return int(i) // self.shard_files

    def write(self, k: int, infos: list[dict], features: np.ndarray) -> None:
        """Shard ``k``: one info per file of its range (in order), the vectors of those with one."""
        r = self.range(k)
        if len(infos) != len(r) or sum(map(has_vector, infos)) != len(features):
            raise ValueError(f"shard {k}: {len(infos)} infos for {len(r)} files, {len(features)} vectors")
        npy, jsonl = self._paths(k)
        with atomic_path(npy) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, np.ascontiguousarray(features, dtype=np.float32))
        with atomic_path(jsonl) as tmp:
            with open(tmp, "w") as f:
                for i, info in zip(r, infos):
                    f.write(json.dumps({"path": str(self.files[i]), **info}, sort_keys=True) + "\n")

    def read_infos(self, k: int) -> list[dict]:
        with open(self._paths(k)[1]) as f:
            return [json.loads(line) for line in f if line.strip()]

    def read_vectors(self, k: int) -> np.ndarray:
        return np.load(self._paths(k)[0])

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def collect(shards: ShardSet) -> tuple[Collector, list[np.ndarray]]:
    """Every shard in file order through a :class:`Collector`; returns it and, per shard, the rows
    of its vectors that are kept (duplicates of earlier content dropped)."""
    kept = Collector()
    keep: list[np.ndarray] = []
    for k in range(len(shards)):
        rows = []
        for info in shards.read_infos(k):
            took = kept.add(Path(info["path"]), info)
            if has_vector(info):
                rows.append(took)
        keep.append(np.flatnonzero(rows))
    return kept, keep


def kept_vectors(shards: ShardSet, keep: list[np.ndarray]) -> Iterator[np.ndarray]:
    """The kept vectors, shard by shard (one shard in memory at a time)."""
    for k in range(len(shards)):
        yield shards.read_vectors(k)[keep[k]]
