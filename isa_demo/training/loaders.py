"""The light backbone's side of ISA training on a data source: its images, decoded every step.

The VL features come from the cache (:mod:`isa_demo.training.featcache`); the student sees the
images themselves, decoded in DataLoader workers with the backbone's preprocessing
(:meth:`isa_demo.models.QueryEncoder.transform`, from timm's data config). Each yields, per step,
``(rows, batch)``: the cache rows of the images in the batch and their input tensor. An image
that fails now (deleted since it was cached) is left out of its batch.

- files (folder, table, COCO): step ``s`` reads exactly the rows :func:`batch_indices` draws for
  it, so a resumed run sees the same batches;
- WebDataset shards: a stream over the shards (a seeded order per epoch, split over ranks and
  workers, shuffled in a buffer), as open_clip reads them; a resumed run continues the stream
  from a fresh epoch.
"""
from __future__ import annotations

from typing import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..index.encode import ImageFiles, decode_bytes
from .data import DataSource, shard_samples
from .distributed import SINGLE, Dist, batch_indices


def _collate_rows(items):
    rows = [info["i"] for info, x in items if x is not None]
    xs = [x for _, x in items if x is not None]
    return np.array(rows, dtype=np.int64), (torch.stack(xs) if xs else None)


def file_batches(paths: list[str], transform: Callable, start: int, steps: int, batch_size: int, seed: int,
                 d: Dist = SINGLE, workers: int = 0) -> Iterator[tuple[np.ndarray, torch.Tensor | None]]:
    from pathlib import Path

    sampler = [np.sort(batch_indices(s, batch_size, len(paths), seed, d)).tolist() for s in range(start, steps)]
    loader = DataLoader(ImageFiles([Path(p) for p in paths], transform), batch_sampler=sampler, num_workers=workers,
                        collate_fn=_collate_rows, persistent_workers=False)
    yield from loader


class ShardStream(IterableDataset):
    """Endless ``(info, tensor)`` samples of the cached shards: epoch by epoch, the shards in a
    seeded order, this rank's and this worker's share, through a shuffle buffer."""

    def __init__(self, source: DataSource, rows: dict[str, int], transform: Callable, seed: int, d: Dist,
                 buffer: int = 1000):
        self.source, self.rows, self.transform = source, rows, transform
        self.seed, self.d, self.buffer = seed, d, buffer

    def __iter__(self):
        w = get_worker_info()
        wid, nw = (w.id, w.num_workers) if w is not None else (0, 1)
        n = len(self.source.parts)
        rng = np.random.default_rng([self.seed, self.d.rank, wid])
        buf: list = []
        for epoch in range(1 << 30):
            order = np.random.default_rng([self.seed, epoch]).permutation(n)
            mine = order[self.d.rank::self.d.world][wid::nw]
            if len(mine) == 0:  # more ranks x workers than shards: share by samples instead
                mine, part_of = order, (self.d.rank * nw + wid, self.d.world * nw)
            else:
                part_of = (0, 1)
            added = 0
            for p in mine:
                errors: list[str] = []
                for j, (key, data, _) in enumerate(shard_samples(self.source.parts[p], errors)):
                    row = self.rows.get(f"{p}/{key}")
                    if row is None or data is None or j % part_of[1] != part_of[0]:
                        continue  # not cached (skipped when the cache was built), or another's share
                    info, x = decode_bytes(data, self.transform, {"i": row})
                    if x is None:
                        continue
                    buf.append((info, x))
                    added += 1
                    if len(buf) >= self.buffer:
                        yield buf.pop(int(rng.integers(len(buf))))
            if not added:  # nothing readable any more: end instead of looping forever
                return


def stream_batches(source: DataSource, keys: list[str], transform: Callable, batch_size: int, seed: int,
                   d: Dist = SINGLE, workers: int = 0) -> Iterator[tuple[np.ndarray, torch.Tensor | None]]:
    rows = {k: i for i, k in enumerate(keys)}
    loader = DataLoader(ShardStream(source, rows, transform, seed, d, buffer=max(4 * batch_size, 64)),
                        batch_size=batch_size, num_workers=workers, collate_fn=_collate_rows)
    yield from loader
