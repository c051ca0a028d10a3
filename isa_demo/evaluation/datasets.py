"""Benchmark loaders: CIRR, FashionIQ, CIRCO in their official layouts, and the built-in world.

Every loader returns a :class:`Benchmark`: the gallery (ids and image paths, in index order)
and the composed queries, each with its reference, modifier text(s) and, where the split is
labelled, its ground truth. Missing images are reported (count and first few), never a crash:
the annotations load without images, and the runner refuses to encode what is not there.

Layouts (``root`` is the dataset's top folder)::

    CIRR       root/cirr/captions/cap.rc2.{split}.json     split: val, test1
               root/cirr/image_splits/split.rc2.{split}.json   paths (./dev/...) relative to
               root/cirr/img_raw/ when it exists (official), else to root (SEARLE, the world)
    FashionIQ  root/captions/cap.{cat}.{split}.json        cat: dress, shirt, toptee; split: val
               root/image_splits/split.{cat}.{split}.json
               root/images/{asin}.png (or .jpg)
    CIRCO      root/annotations/{split}.json               split: val, test
               root/COCO2017_unlabeled/annotations/image_info_unlabeled2017.json  (the gallery)
               root/COCO2017_unlabeled/unlabeled2017/{id:012d}.jpg
    world      a built world (see ``isa_demo.world.build``): the CIRR layout under root/cirr with
               paths relative to root, the CIRCO layout under root/circo, scenes/{split}.jsonl

CIRR and CIRCO also accept ``root`` pointing at the folder that holds ``captions/`` or
``annotations/`` directly.

The hit rule. Real CIRR counts a hit only for ``target_hard`` (the official rule). Its
``target_soft`` is not a scene-level ground truth: on the real val file (4,181 queries), 42
queries list ``target_soft`` entries at 1.0 that differ from ``target_hard``, and in all 42 the
hard target is not even among them. The world's ``target_soft`` instead holds every gallery image
with the target's exact scene graph at 1.0 (renders of one scene are indistinguishable), so the
world counts a hit for any of them. Both go through one code path: ``Query.ground_truth`` is
``(target_hard,)`` for real CIRR and ``(target_hard, *other soft==1.0 images)`` for the world.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ..errors import UserError

DATASETS = ("world", "cirr", "fashioniq", "circo")
FASHIONIQ_CATEGORIES = ("dress", "shirt", "toptee")
PROTOCOLS = {"world": "world", "cirr": "cirr", "fashioniq": "fashioniq", "circo": "circo"}
MISSING_SHOWN = 5


class DatasetError(UserError, RuntimeError):
    """An annotation file is absent or malformed; the message names the file."""


@dataclass(frozen=True)
class Query:
    """One composed query.

    ``modifiers``: one text (CIRR, CIRCO, world) or the two FashionIQ captions in file order.
    ``ground_truth``: gallery ids counted as a hit; empty on unlabelled (test) splits.
    ``members``: the CIRR subset (``img_set.members``, reference included as in the file).
    """

    id: str
    reference: str
    modifiers: tuple[str, ...]
    target_hard: str | None = None
    ground_truth: tuple[str, ...] = ()
    members: tuple[str, ...] = ()
    mod_type: str | None = None
    target_caption: str | None = None
    category: str | None = None
    reference_caption: str | None = None

    @property
    def mod_family(self) -> str | None:
        """``mod_type`` before ``':'`` ('colour', 'add', 'pair' ...)."""
        return self.mod_type.split(":")[0] if self.mod_type else None


@dataclass
class Benchmark:
    """A gallery and its queries under one evaluation protocol."""

    name: str  # 'cirr', 'circo', 'world', 'fashioniq-dress' ...
    split: str
    protocol: str  # 'cirr' | 'fashioniq' | 'circo' | 'world'
    root: Path
    gallery: list[str]  # image ids, in index order
    paths: dict[str, Path]  # image id -> file, for every gallery and reference image
    queries: list[Query]
    missing: list[str] = field(default_factory=list)  # ids whose image file is absent
    notes: list[str] = field(default_factory=list)

    def __post_init__(self):
        self.index = {g: i for i, g in enumerate(self.gallery)}
        if len(self.index) != len(self.gallery):
            raise DatasetError(f"{self.name} {self.split}: the gallery lists an image id twice")

    @property
    def labelled(self) -> bool:
        return any(q.ground_truth for q in self.queries)

    @property
    def category(self) -> str | None:
        return self.queries[0].category if self.queries else None

    def limit(self, n: int | None) -> "Benchmark":
        """The same gallery with only the first ``n`` queries (quick runs)."""
        if n is None or n >= len(self.queries):
            return self
        return Benchmark(self.name, self.split, self.protocol, self.root, self.gallery, self.paths,
                         self.queries[:n], self.missing, self.notes + [f"limited to the first {n} queries"])

    def missing_summary(self) -> str | None:
        """``None`` when every image is present, else one line: count, first few ids, where."""
        if not self.missing:
            return None
        total = len(set(self.gallery) | {q.reference for q in self.queries})
        first = ", ".join(self.missing[:MISSING_SHOWN])
        example = self.paths.get(self.missing[0])
        return (f"{self.name} {self.split}: {len(self.missing)} of {total} images are missing (first: {first}; "
                f"expected e.g. {example})")

    def summary(self) -> str:
        line = f"{self.name} {self.split}: {len(self.queries)} queries, gallery of {len(self.gallery)} images"
        line += "" if self.labelled else " (unlabelled: submission files only)"
        return line


# ---------------------------------------------------------------------------------------- helpers
def _read_json(path: Path):
    if not path.exists():
        raise DatasetError(f"annotation file not found: {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path} is not valid JSON: {e}") from None


def _field(rec: dict, key: str, path: Path, i: int):
    try:
        return rec[key]
    except (KeyError, TypeError):
        raise DatasetError(f"{path}: entry {i} has no {key!r} field") from None


def _missing(ids: Sequence[str], paths: dict[str, Path]) -> list[str]:
    return [i for i in ids if not paths[i].exists()]


def _all_ids(gallery: Sequence[str], queries: Sequence[Query]) -> list[str]:
    seen = dict.fromkeys(gallery)
    for q in queries:
        seen.setdefault(q.reference)
    return list(seen)


def _annotation_dir(root: Path, sub: str, marker: str) -> Path:
    """``root/sub`` when it holds ``marker``, else ``root`` itself when it does."""
    if (root / sub / marker).is_dir():
        return root / sub
    if (root / marker).is_dir():
        return root
    raise DatasetError(f"{root}: no {sub}/{marker}/ (nor {marker}/) folder; is this the dataset's root?")


# ---------------------------------------------------------------------------------------- CIRR
def load_cirr(root: str | os.PathLike, split: str = "val", image_root: str | os.PathLike | None = None,
              scene_level: bool = False) -> Benchmark:
    """CIRR (``val`` or ``test1``; ``test`` means ``test1``). Image paths in the split file
    (``./dev/...``) are relative to ``image_root``; by default the official ``cirr/img_raw/``
    when present, else the folder holding ``cirr/`` (the SEARLE / CLIP4Cir arrangement and the
    world's).

    ``scene_level``: count every ``target_soft == 1.0`` image as a hit (the world's rule; see
    the module doc). Off for real CIRR, where only ``target_hard`` counts.
    """
    root = Path(root)
    ann = _annotation_dir(root, "cirr", "captions")
    if split == "test" and not (ann / "captions" / "cap.rc2.test.json").exists():
        split = "test1"
    if image_root is None:
        image_root = ann / "img_raw" if (ann / "img_raw").is_dir() else ann.parent
    img_root = Path(image_root)
    cap_path = ann / "captions" / f"cap.rc2.{split}.json"
    split_path = ann / "image_splits" / f"split.rc2.{split}.json"
    caps, names = _read_json(cap_path), _read_json(split_path)
    if not isinstance(names, dict):
        raise DatasetError(f"{split_path}: expected an object {{image id: relative path}}")
    paths = {n: img_root / p for n, p in names.items()}
    queries = []
    for i, rec in enumerate(caps):
        ref = _field(rec, "reference", cap_path, i)
        hard = rec.get("target_hard")
        gt: tuple[str, ...] = ()
        if hard:
            gt = (hard,)
            if scene_level:
                gt += tuple(k for k, v in rec.get("target_soft", {}).items() if v == 1.0 and k != hard)
        members = tuple(_field(rec, "img_set", cap_path, i).get("members", ()))
        for img in (ref, *gt, *members):
            if img not in paths:
                raise DatasetError(f"{cap_path}: entry {i} names image {img!r}, absent from {split_path}")
        queries.append(Query(id=str(_field(rec, "pairid", cap_path, i)), reference=ref,
                             modifiers=(_field(rec, "caption", cap_path, i),), target_hard=hard, ground_truth=gt,
                             members=members, mod_type=rec.get("mod_type")))
    gallery = list(names)
    return Benchmark("cirr", split, "cirr", root, gallery, paths, queries, _missing(gallery, paths))


# ---------------------------------------------------------------------------------------- FashionIQ
def _fiq_path(images: Path, asin: str) -> Path:
    png = images / f"{asin}.png"
    if png.exists():
        return png
    jpg = images / f"{asin}.jpg"
    return jpg if jpg.exists() else png


def load_fashioniq(root: str | os.PathLike, category: str, split: str = "val") -> Benchmark:
    """One FashionIQ category. Gallery: the images of ``split.{cat}.{split}.json``; the reference
    stays in the gallery (official protocol)."""
    if category not in FASHIONIQ_CATEGORIES:
        raise DatasetError(f"unknown FashionIQ category {category!r}; choose from {FASHIONIQ_CATEGORIES}")
    root = Path(root)
    cap_path = root / "captions" / f"cap.{category}.{split}.json"
    split_path = root / "image_splits" / f"split.{category}.{split}.json"
    caps, gallery = _read_json(cap_path), _read_json(split_path)
    if not isinstance(gallery, list):
        raise DatasetError(f"{split_path}: expected a list of image ids")
    images = root / "images"
    paths = {a: _fiq_path(images, a) for a in gallery}
    queries = []
    for i, rec in enumerate(caps):
        ref = _field(rec, "candidate", cap_path, i)
        mods = tuple(_field(rec, "captions", cap_path, i))
        if len(mods) != 2:
            raise DatasetError(f"{cap_path}: entry {i} has {len(mods)} captions, expected 2")
        target = rec.get("target")
        paths.setdefault(ref, _fiq_path(images, ref))
        queries.append(Query(id=str(i), reference=ref, modifiers=mods, target_hard=target,
                             ground_truth=(target,) if target else (), category=category))
    notes = []
    members = set(gallery)
    outside = sum(1 for q in queries if q.target_hard and q.target_hard not in members)
    if outside:
        notes.append(f"{outside} targets are not in the gallery (always counted as misses)")
    return Benchmark(f"fashioniq-{category}", split, "fashioniq", root, list(gallery), paths, queries,
                     _missing(_all_ids(gallery, queries), paths), notes)


# ---------------------------------------------------------------------------------------- CIRCO
def circo_image_path(root: Path, image_id: int | str) -> Path:
    return root / "COCO2017_unlabeled" / "unlabeled2017" / f"{int(image_id):012d}.jpg"


def load_circo(root: str | os.PathLike, split: str = "val") -> Benchmark:
    """CIRCO (``val`` or ``test``). Gallery: the COCO 2017 unlabeled images listed in
    ``image_info_unlabeled2017.json`` (the official gallery). Without that file: the
    ``unlabeled2017/`` folder's images; without either: only the images the annotations name,
    which is not the official gallery (noted in ``Benchmark.notes``)."""
    root = Path(root)
    ann = _annotation_dir(root, "circo", "annotations")
    data_root = ann
    ann_path = ann / "annotations" / f"{split}.json"
    recs = _read_json(ann_path)
    queries = []
    for i, rec in enumerate(recs):
        gts = tuple(str(g) for g in rec.get("gt_img_ids", ()))
        target = rec.get("target_img_id")
        queries.append(Query(id=str(_field(rec, "id", ann_path, i)),
                             reference=str(_field(rec, "reference_img_id", ann_path, i)),
                             modifiers=(_field(rec, "relative_caption", ann_path, i),),
                             target_hard=str(target) if target is not None else None, ground_truth=gts))
    notes = []
    info = data_root / "COCO2017_unlabeled" / "annotations" / "image_info_unlabeled2017.json"
    folder = data_root / "COCO2017_unlabeled" / "unlabeled2017"
    if info.exists():
        images = _read_json(info).get("images", [])
        gallery = [str(im["id"]) for im in images]
        paths = {str(im["id"]): folder / im["file_name"] for im in images}
    else:
        if folder.is_dir():
            files = sorted(p for p in folder.iterdir() if p.suffix == ".jpg" and p.stem.isdigit())
            gallery = [str(int(p.stem)) for p in files]
            notes.append(f"{info} not found: gallery = the {len(gallery)} images in {folder}")
        else:
            gallery = list(dict.fromkeys([g for q in queries for g in (q.reference, *q.ground_truth)]))
            notes.append(f"{info} not found: gallery limited to the {len(gallery)} images the annotations name "
                         "(the official gallery is the 123,403 COCO 2017 unlabeled images)")
        paths = {g: circo_image_path(data_root, g) for g in gallery}
    for q in queries:
        paths.setdefault(q.reference, circo_image_path(data_root, q.reference))
    return Benchmark("circo", split, "circo", root, gallery, paths, queries,
                     _missing(_all_ids(gallery, queries), paths), notes)


# ---------------------------------------------------------------------------------------- world
def world_image_name(split: str, image_id: int) -> str:
    return f"{split}-{int(image_id):06d}"


def load_world(root: str | os.PathLike, split: str = "test") -> Benchmark:
    """A built world through the CIRR loader with the scene-level hit rule, plus modification
    types, target and reference captions (``scenes/{split}.jsonl``) and a check that the CIRCO export names
    the same ground truths."""
    root = Path(root)
    if not (root / "world.json").exists():
        raise DatasetError(f"{root} is not a built world (no world.json); run `python -m isa_demo world build`")
    bench = load_cirr(root, split, scene_level=True)
    scenes_path = root / "scenes" / f"{split}.jsonl"
    if not scenes_path.exists():
        raise DatasetError(f"world scene records not found: {scenes_path}")
    with open(scenes_path) as f:
        captions = {rec["name"]: rec["caption"] for rec in map(json.loads, f)}
    queries = [Query(q.id, q.reference, q.modifiers, q.target_hard, q.ground_truth, q.members, q.mod_type,
                     captions.get(q.target_hard), reference_caption=captions.get(q.reference)) for q in bench.queries]
    circo_path = root / "circo" / "annotations" / f"{split}.json"
    if circo_path.exists():
        by_id = {str(r["id"]): r for r in _read_json(circo_path)}
        for q in queries:
            rec = by_id.get(q.id)
            if rec is None:
                raise DatasetError(f"{circo_path}: no query {q.id} (present in the CIRR export)")
            gts = {world_image_name(split, g) for g in rec["gt_img_ids"]}
            if gts != set(q.ground_truth) or world_image_name(split, rec["reference_img_id"]) != q.reference:
                raise DatasetError(f"{root}: CIRR and CIRCO exports disagree on query {q.id}; rebuild the world")
    return Benchmark("world", bench.split, "world", root, bench.gallery, bench.paths, queries, bench.missing,
                     bench.notes)


# ---------------------------------------------------------------------------------------- entry
def load_benchmarks(dataset: str, root: str | os.PathLike, split: str,
                    categories: Sequence[str] | None = None, image_root: str | os.PathLike | None = None
                    ) -> list[Benchmark]:
    """The benchmark(s) of ``dataset``: one for world/cirr/circo, one per category for FashionIQ."""
    if dataset == "world":
        return [load_world(root, split)]
    if dataset == "cirr":
        return [load_cirr(root, split, image_root=image_root)]
    if dataset == "circo":
        if split not in ("val", "test"):
            raise DatasetError(f"CIRCO splits are val and test, not {split!r}")
        return [load_circo(root, split)]
    if dataset == "fashioniq":
        if split != "val":
            raise DatasetError("FashionIQ is evaluated on val (its test split has no targets and no server)")
        return [load_fashioniq(root, c, split) for c in (categories or FASHIONIQ_CATEGORIES)]
    raise DatasetError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
