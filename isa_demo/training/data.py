"""Training data beyond the built-in world: ``train isa|masked-ti --data SOURCE``.

SOURCE is one of

- a folder of images, read recursively: the files ``index build`` would index, by the same rules;
- an image-caption table, open_clip style: CSV / TSV with a ``filepath`` column and, optionally, a
  ``title`` column (``--csv-img-key``, ``--csv-caption-key``, ``--csv-separator``, as open_clip's
  trainer spells them); relative paths are read from the table's folder;
- COCO's captions JSON (``--data captions_train2017.json --images train2017/``);
- WebDataset shards, as open_clip's trainer reads them: ``.tar`` files or a brace pattern
  (``shards/{00000..00099}.tar``, also ``pipe:`` / URLs); the image in ``jpg``/``jpeg``/``png``/
  ``webp``, the caption in ``txt``. Needs the ``webdataset`` package (the ``data`` extra).

A source is cut into parts: :data:`PART_SIZE` files each, one shard each for WebDataset. A part
is the unit the feature cache stores (:mod:`isa_demo.training.featcache`) and the unit ranks share
under ``torchrun``. :meth:`DataSource.describe` (kind, path or URL pattern, files, sha256 of the
file list with sizes and captions) is what a checkpoint records and what a resumed run compares.

Bad input is skipped and listed, never the end of a run: a table row whose file is missing, an
unreadable or undecodable image (the rules of :func:`isa_demo.index.encode.decode_bytes`), a
shard cut short (the samples before the cut are kept). A source with no usable image at all is an
error (:class:`DataError`).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from torch.utils.data import IterableDataset, get_worker_info

from ..errors import UserError
from ..index.encode import IMAGE_EXTENSIONS, GalleryError, decode_bytes, scan_folder

PART_SIZE = 1000
WDS_IMAGE_KEYS = tuple(e.lstrip(".") for e in IMAGE_EXTENSIONS if e not in (".bmp", ".gif"))
KINDS = ("folder", "table", "coco", "webdataset")


class DataError(UserError, ValueError):
    """A training data source that cannot be read at all (not one bad file: those are skipped)."""


@dataclass(frozen=True)
class Item:
    key: str                       # unique in the source: the path relative to its root
    path: str                      # the file
    captions: tuple[str, ...] = ()


@dataclass
class DataSource:
    kind: str                      # one of KINDS
    spec: str                      # the path or URL pattern as given
    parts: list                    # list[list[Item]] (files) or list[str] (shard URLs)
    skipped: list[dict] = field(default_factory=list)  # {"path", "reason"}: found while listing
    sha256: str = ""
    files: int = 0
    part_sha256: list[str] = field(default_factory=list)  # the content key of each part (the cache's)

    @property
    def streaming(self) -> bool:
        return self.kind == "webdataset"

    def describe(self) -> dict:
        """What a checkpoint records about its data (and a resumed run must match)."""
        return {"kind": self.kind, "source": self.spec, "files": self.files, "sha256": self.sha256}

    def part_label(self, p: int) -> str:
        return self.parts[p] if self.streaming else f"part {p} ({len(self.parts[p])} files)"


@dataclass(frozen=True)
class DataSpec:
    """``--data`` and its companions, as a trainer takes them."""

    source: str
    images: str | None = None           # the image folder of a COCO captions JSON
    csv_img_key: str = "filepath"
    csv_caption_key: str = "title"
    csv_separator: str | None = None    # default: tab for .tsv, comma otherwise
    cache: str | None = None            # feature cache folder (default RUNS_DIR/feature-cache)
    workers: int = 0                    # DataLoader decoding processes
    batch_size: int = 64                # images per VL encoding batch

    @classmethod
    def of(cls, data: "DataSpec | str | os.PathLike | None") -> "DataSpec | None":
        return data if data is None or isinstance(data, DataSpec) else cls(str(data))

    def open(self, limit: int | None = None) -> "DataSource":
        return open_source(self.source, self.images, self.csv_img_key, self.csv_caption_key, self.csv_separator,
                           limit)

    def cache_root(self) -> Path:
        from ..settings import RUNS_DIR

        return Path(self.cache) if self.cache else RUNS_DIR / "feature-cache"


def check_same_data(state_path, recorded: dict | None, current: dict | None) -> None:
    """Refuse to resume a run on other data than it started with (naming both)."""
    if (recorded or None) != (current or None):
        raise DataError(f"{state_path} holds a run on {describe_data(recorded)}, but this run reads "
                        f"{describe_data(current)}; rerun with the first data, or pass another --state / --out")


def report_skipped(skipped: list[dict], path, show: int = 10) -> None:
    """Print how many inputs were skipped (the first ``show`` with their reason) and list them all in ``path``."""
    if not skipped:
        return
    from ..common import write_json

    write_json(path, [{"path": str(s["path"]), "reason": s["reason"]} for s in skipped], indent=1)
    print(f"skipped {len(skipped)} input(s) (all listed in {path}):")
    for s in skipped[:show]:
        print(f"  {s['path']}: {s['reason']}")
    if len(skipped) > show:
        print(f"  ... and {len(skipped) - show} more")


def describe_data(d: dict | None) -> str:
    if not d:
        return "the built-in world"
    return f"{d.get('kind')} {d.get('source')} ({d.get('files')} files, list sha256 {str(d.get('sha256'))[:12]})"


def open_source(spec: str, images: str | None = None, csv_img_key: str = "filepath",
                csv_caption_key: str = "title", csv_separator: str | None = None,
                limit: int | None = None) -> DataSource:
    """The data source ``spec`` names (see the module doc); ``images``: the folder of a COCO JSON;
    ``limit``: only the first N files (of a folder, table or COCO file; all shards are read)."""
    spec = str(spec)
    low = spec.lower()
    if low.endswith(".json"):
        return _coco(spec, images, limit)
    if images:
        raise DataError(f"--coco-images is for a COCO captions JSON; {spec} is not one (.json)")
    if low.endswith((".tar", ".tar.gz", ".tgz")) or low.startswith(("pipe:", "http://", "https://")) or (
            "{" in spec and ".tar" in low):
        return _shards(spec)
    if low.endswith((".csv", ".tsv")):
        return _table(spec, csv_img_key, csv_caption_key, csv_separator, limit)
    if Path(spec).is_dir():
        return _folder(spec, limit)
    raise DataError(f"--data {spec}: not a folder of images, a .csv/.tsv table, a COCO captions .json or "
                    f"WebDataset .tar shards" + ("" if Path(spec).exists() else " (it does not exist)"))


def _digest(lines) -> str:
    h = hashlib.sha256()
    for line in lines:
        h.update(json.dumps(line).encode() + b"\n")
    return h.hexdigest()


def _from_items(kind: str, spec: str, items: list[Item], skipped: list[dict], limit: int | None) -> DataSource:
    if not items:
        listed = "; ".join(f"{s['path']}: {s['reason']}" for s in skipped[:3])
        raise DataError(f"no usable image in {spec}" + (f" ({len(skipped)} skipped: {listed} ...)" if skipped else ""))
    items = items[:limit] if limit else items
    lines = [[it.key, os.path.getsize(it.path), list(it.captions)] for it in items]
    cut = range(0, len(items), PART_SIZE)
    return DataSource(kind, spec, [items[i:i + PART_SIZE] for i in cut], skipped, _digest(lines), len(items),
                      [_digest(lines[i:i + PART_SIZE]) for i in cut])


def _folder(root: str, limit: int | None) -> DataSource:
    try:
        paths, skipped = scan_folder(root)
    except GalleryError as e:
        raise DataError(str(e)) from None
    items = [Item(str(p.relative_to(root)), str(p)) for p in paths]
    return _from_items("folder", root, items, skipped, limit)


def _gather(rows, base: Path, where: str) -> tuple[list[Item], list[dict]]:
    """``(file, caption or None, row label)`` rows -> items (a file's captions gathered), skips."""
    captions: dict[str, list[str]] = {}
    skipped = []
    for name, caption, label in rows:
        path = Path(name) if os.path.isabs(name) else base / name
        if not path.is_file():
            skipped.append({"path": str(path), "reason": f"file not found ({label} of {where})"})
            continue
        caps = captions.setdefault(str(path), [])
        if caption is not None:
            caps.append(caption)
    return [Item(os.path.relpath(p, base), p, tuple(c)) for p, c in captions.items()], skipped


def _table(path: str, img_key: str, caption_key: str, separator: str | None, limit: int | None) -> DataSource:
    import pandas as pd

    if not Path(path).is_file():
        raise DataError(f"table not found: {path}")
    sep = separator if separator is not None else ("\t" if path.lower().endswith(".tsv") else ",")
    try:
        df = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, engine="python")
    except Exception as e:
        raise DataError(f"cannot read table {path} ({type(e).__name__}: {e})") from None
    if img_key not in df.columns:
        raise DataError(f"table {path} has no image column {img_key!r} (columns: {', '.join(map(str, df.columns))}); "
                        f"name it with --csv-img-key (and check --csv-separator)")
    caps = df[caption_key] if caption_key in df.columns else [None] * len(df)
    rows = ((name, cap, f"row {i + 2}") for i, (name, cap) in enumerate(zip(df[img_key], caps)))
    items, skipped = _gather(rows, Path(path).parent, path)
    return _from_items("table", path, items, skipped, limit)


def _coco(path: str, images: str | None, limit: int | None) -> DataSource:
    if not images:
        raise DataError(f"{path} is a captions JSON: name its image folder with --coco-images DIR")
    if not Path(images).is_dir():
        raise DataError(f"image folder not found: {images}")
    try:
        data = json.loads(Path(path).read_text())
        files = {im["id"]: im["file_name"] for im in data["images"]}
        rows = [(files[a["image_id"]], a.get("caption") or "", f"annotation {a.get('id')}")
                for a in data["annotations"] if a.get("image_id") in files]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"{path} is not a COCO captions file ({type(e).__name__}: {e})") from None
    items, skipped = _gather(sorted(rows, key=lambda r: r[0]), Path(images), path)
    return _from_items("coco", path, items, skipped, limit)


def _need_webdataset():
    try:
        import webdataset  # noqa: F401
    except ImportError:
        raise DataError("reading WebDataset shards needs the webdataset package: "
                        "pip install -r requirements-data.txt") from None


def _shards(spec: str) -> DataSource:
    _need_webdataset()
    from braceexpand import braceexpand

    urls, skipped = [], []
    for url in braceexpand(spec):
        local = not re.match(r"^[a-z]+:", url)
        if local and not Path(url).is_file():
            skipped.append({"path": url, "reason": "shard not found"})
            continue
        urls.append(url)
    if not urls:
        raise DataError(f"no WebDataset shard found for {spec}")
    lines = [[url, None if re.match(r"^[a-z]+:", url) else os.path.getsize(url)] for url in urls]
    return DataSource("webdataset", spec, urls, skipped, _digest(lines), len(urls), [_digest([x]) for x in lines])


# ----------------------------------------------------------------------------- decoding
def _text(value) -> str:
    return value.decode("utf-8", errors="replace").strip() if isinstance(value, bytes) else str(value or "").strip()


def shard_samples(url: str, errors: list[str]):
    """``(key, image bytes or None, caption)`` of one WebDataset shard; a shard cut short or
    unreadable adds its error to ``errors`` and ends there (the samples before it are kept)."""
    _need_webdataset()
    from webdataset import tariterators

    def handler(exn: Exception) -> bool:
        errors.append(f"{type(exn).__name__}: {exn}")
        return False  # stop reading this shard

    for sample in tariterators.tarfile_samples([{"url": url}], handler=handler):
        data = next((sample[k] for k in WDS_IMAGE_KEYS if k in sample), None)
        yield sample["__key__"], data, _text(sample.get("txt"))


class PartReader(IterableDataset):
    """Decodes parts of a source in DataLoader workers (each worker whole parts): yields
    ``(part, infos, batch)`` batches of at most ``batch_size`` usable images (never across parts),
    then ``(part, None, skipped)`` when the part is done. ``info``: ``key``, ``captions``."""

    def __init__(self, source: DataSource, parts: list[int], transform: Callable, batch_size: int):
        self.source, self.parts, self.transform, self.batch_size = source, parts, transform, batch_size

    def _items(self, p: int, skipped: list[dict]):
        if not self.source.streaming:
            for it in self.source.parts[p]:
                info = {"key": it.key, "captions": list(it.captions)}
                try:
                    data = Path(it.path).read_bytes()
                except OSError as e:
                    skipped.append({"path": it.path, "reason": f"cannot read file ({e.strerror or e})"})
                    continue
                yield it.path, decode_bytes(data, self.transform, info)
            return
        url, errors = self.source.parts[p], []
        for key, data, caption in shard_samples(url, errors):
            info = {"key": key, "captions": [caption] if caption else []}
            if data is None:
                skipped.append({"path": f"{url}:{key}",
                                "reason": f"no image in the sample ({'/'.join(WDS_IMAGE_KEYS)})"})
                continue
            yield f"{url}:{key}", decode_bytes(data, self.transform, info)
        skipped += [{"path": url, "reason": f"shard cut short or unreadable, later samples lost ({e})"}
                    for e in errors]

    def __iter__(self):
        import torch

        w = get_worker_info()
        for p in self.parts[w.id::w.num_workers] if w is not None else self.parts:
            skipped: list[dict] = []
            batch: list = []
            for where, (info, x) in self._items(p, skipped):
                if x is None:
                    skipped.append({"path": where, "reason": info["reason"]})
                    continue
                batch.append((info, x))
                if len(batch) == self.batch_size:
                    yield p, [i for i, _ in batch], torch.stack([t for _, t in batch])
                    batch = []
            if batch:
                yield p, [i for i, _ in batch], torch.stack([t for _, t in batch])
            yield p, None, skipped
