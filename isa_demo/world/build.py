"""Build the built-in world on disk (deterministic, resumable) and read it back.

Layout of a world directory::

    world.json                           build record (format, seed, size, counts, complete)
    images/{split}/{split}-{id:06d}.png  the renders
    scenes/{split}.jsonl                 one scene-graph record per image
    cirr/captions/cap.rc2.{split}.json   CIRR layout (val, test)
    cirr/image_splits/split.rc2.{split}.json
    circo/annotations/{split}.json       CIRCO layout (val, test)

Every image and annotation file is written atomically; a rerun skips the images that exist
and rewrites the annotations, so an interrupted build resumes to the same bytes.
"""
from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..common import atomic_path, write_json, write_text
from ..errors import UserError
from .render import IMAGE_SIZE, render
from .scene import ALL_MOD_TYPES, caption, modify, near_variant, random_scene, scene_key

FORMAT = "isa-demo-world"
VERSION = 1
SIZES = {
    # train: unlabeled images (+captions); val/test: number of composed queries
    "full": {"train": 50_000, "val": 500, "test": 2_000},
    "small": {"train": 600, "val": 40, "test": 80},
}
SPLITS = ("test", "val", "train")  # generation order: test first, later splits avoid its scenes
EXTRA_GT_PROB = 0.3  # chance that a target scene gets a second render in the gallery


class WorldError(UserError, RuntimeError):
    """A world directory that cannot be built or read as asked."""


def _rng(seed: int, *parts) -> np.random.Generator:
    digest = hashlib.sha256(json.dumps([seed, *parts]).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def image_name(split: str, idx: int) -> str:
    return f"{split}-{idx:06d}"


@dataclass
class SplitPlan:
    records: list[dict]  # one per image: id, name, scene, key, caption, role
    queries: list[dict]  # composed queries (val/test)


def plan_split(seed: int, split: str, n: int, taken: set[str]) -> SplitPlan:
    """Decide every scene and query of a split (no rendering). ``taken``: keys of other splits."""
    rng = _rng(seed, "plan", split)
    records: list[dict] = []
    own: set[str] = set()

    def fresh_scene(max_objects=None):
        while True:
            s = random_scene(rng) if max_objects is None else random_scene(rng, int(rng.integers(1, max_objects + 1)))
            k = scene_key(s)
            if k not in taken:
                return s, k

    def add(scene, role, query=None):
        key = scene_key(scene)
        own.add(key)
        rec = {"id": len(records), "name": image_name(split, len(records)), "scene": scene, "key": key,
               "caption": caption(scene), "role": role}
        if query is not None:
            rec["query"] = query
        records.append(rec)
        return rec

    if split == "train":
        for _ in tqdm(range(n), desc="plan train", leave=False, disable=n < 5000):
            add(fresh_scene()[0], "train")
        return SplitPlan(records, [])

    queries = []
    for q in range(n):
        mod_type = ALL_MOD_TYPES[q % len(ALL_MOD_TYPES)]
        while True:
            ref, ref_key = fresh_scene()
            res = modify(ref, mod_type, rng)
            if res is None:
                continue
            target, text, label = res
            tkey = scene_key(target)
            if tkey == ref_key or tkey in taken:
                continue
            variants = []
            for base in (ref, ref, target, target):
                v = near_variant(base, rng, {ref_key, tkey, *[scene_key(x) for x in variants]} | taken)
                if v is None:
                    break
                variants.append(v)
            if len(variants) == 4:
                break
        r = add(ref, "reference", q)
        t = add(target, "target", q)
        members = [r["name"], t["name"]] + [add(v, "variant", q)["name"] for v in variants]
        if rng.random() < EXTRA_GT_PROB:
            add(target, "target_copy", q)
        order = rng.permutation(6)
        members = [members[i] for i in order]
        queries.append({
            "pairid": q, "reference": r["name"], "target_hard": t["name"], "caption": text,
            "mod_type": label, "target_key": tkey, "reference_id": r["id"], "target_id": t["id"],
            "img_set": {"id": q, "members": members,
                        "reference_rank": int(np.where(order == 0)[0][0]),
                        "target_rank": int(np.where(order == 1)[0][0])},
        })
    # every gallery image with the target's scene graph is a ground truth
    by_key: dict[str, list[str]] = {}
    for rec in records:
        by_key.setdefault(rec["key"], []).append(rec["name"])
    ids = {rec["name"]: rec["id"] for rec in records}
    for q in queries:
        gts = [q["target_hard"]] + [x for x in by_key[q.pop("target_key")] if x != q["target_hard"]]
        q["target_soft"] = {x: 1.0 for x in gts}
        q["gt_ids"] = [ids[x] for x in gts]
    return SplitPlan(records, queries)


def _render_one(args):
    seed, split, rec, path = args
    if os.path.exists(path):
        return
    img = render(rec["scene"], _rng(seed, "render", split, rec["id"]), IMAGE_SIZE)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")


def _check_target(out: Path, seed: int, size: str) -> dict | None:
    meta_path = out / "world.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != FORMAT:
            raise WorldError(f"{out} holds a world.json that is not an isa-demo world; choose another --out")
        if (meta["seed"], meta["size"]) != (seed, size):
            raise WorldError(
                f"{out} holds a world built with seed={meta['seed']} size={meta['size']}, not seed={seed} "
                f"size={size}; delete it or choose another --out")
        return meta
    if out.exists() and any(out.iterdir()):
        raise WorldError(f"{out} is not empty and is not a previous world build; refusing to write into it")
    return None


def build_world(out: str | os.PathLike, seed: int = 0, size: str = "full", workers: int | None = None,
                splits: tuple[str, ...] = SPLITS) -> Path:
    """Render the world. ``splits`` may name a subset (the demo needs only ``test``); the
    others can be added later by a rerun, and the result is the same bytes either way."""
    if size not in SIZES:
        raise WorldError(f"unknown size {size!r}; choose one of {sorted(SIZES)}")
    unknown = set(splits) - set(SPLITS)
    if unknown:
        raise WorldError(f"unknown split(s) {sorted(unknown)}; choose from {list(SPLITS)}")
    out = Path(out)
    meta = _check_target(out, seed, size)
    done = set(meta.get("splits_done", [])) if meta else set()
    if meta and set(splits) <= done:
        print(f"{out}: world already built (seed={seed}, size={size}, splits={sorted(done)})")
        return out
    out.mkdir(parents=True, exist_ok=True)
    meta = meta or {"format": FORMAT, "version": VERSION, "seed": seed, "size": size, "image_size": IMAGE_SIZE}
    meta["complete"] = False
    write_json(out / "world.json", meta, indent=2)

    # planning is cheap and sequential (later splits avoid earlier splits' scenes)
    last = max(SPLITS.index(s) for s in splits)
    taken: set[str] = set()
    plans: dict[str, SplitPlan] = {}
    for split in SPLITS[:last + 1]:
        plans[split] = plan_split(seed, split, SIZES[size][split], taken)
        taken |= {r["key"] for r in plans[split].records}

    workers = workers or max(1, min(os.cpu_count() or 1, 8))
    for split in [s for s in SPLITS if s in splits]:
        img_dir = out / "images" / split
        img_dir.mkdir(parents=True, exist_ok=True)
        jobs = [(seed, split, rec, str(img_dir / f"{rec['name']}.png")) for rec in plans[split].records]
        todo = [j for j in jobs if not os.path.exists(j[3])]
        with ProcessPoolExecutor(workers) as pool:
            for _ in tqdm(pool.map(_render_one, todo, chunksize=64), total=len(todo),
                          desc=f"render {split}", initial=len(jobs) - len(todo)):
                pass
        _write_annotations(out, split, plans[split])
        done.add(split)

    meta["splits_done"] = sorted(done, key=SPLITS.index)
    meta["complete"] = True
    counts = meta.get("counts", {})
    counts.update({s: {"images": len(plans[s].records), "queries": len(plans[s].queries)} for s in splits})
    meta["counts"] = {s: counts[s] for s in SPLITS if s in counts}
    write_json(out / "world.json", meta, indent=2)
    return out


def _write_annotations(out: Path, split: str, plan: SplitPlan) -> None:
    lines = []
    for rec in plan.records:
        row = {"id": rec["id"], "name": rec["name"], "file": f"images/{split}/{rec['name']}.png",
               "key": rec["key"], "caption": rec["caption"], "role": rec["role"], "scene": rec["scene"]}
        if "query" in rec:
            row["query"] = rec["query"]
        lines.append(json.dumps(row, sort_keys=True))
    write_text(out / "scenes" / f"{split}.jsonl", "\n".join(lines) + "\n")
    write_json(out / "cirr" / "image_splits" / f"split.rc2.{split}.json",
               {r["name"]: f"./images/{split}/{r['name']}.png" for r in plan.records})
    if not plan.queries:
        return
    cirr = [{k: q[k] for k in ("pairid", "reference", "target_hard", "target_soft", "caption", "img_set", "mod_type")}
            for q in plan.queries]
    write_json(out / "cirr" / "captions" / f"cap.rc2.{split}.json", cirr)
    circo = [{"id": q["pairid"], "reference_img_id": q["reference_id"], "target_img_id": q["target_id"],
              "relative_caption": q["caption"], "shared_concept": "", "gt_img_ids": q["gt_ids"],
              "mod_type": q["mod_type"]} for q in plan.queries]
    write_json(out / "circo" / "annotations" / f"{split}.json", circo)


class World:
    """Read access to a built world."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        meta_path = self.root / "world.json"
        if not meta_path.exists():
            raise WorldError(f"{self.root} is not a built world (no world.json); run "
                             f"`python -m isa_demo world build --out {self.root}`")
        self.meta = json.loads(meta_path.read_text())
        if not self.meta.get("complete"):
            raise WorldError(f"{self.root}: the world build did not finish; rerun `world build` to resume it")
        self._records: dict[str, list[dict]] = {}

    def records(self, split: str) -> list[dict]:
        if split not in self.meta.get("splits_done", SPLITS):
            raise WorldError(f"{self.root}: split {split!r} was not built; rerun `world build` with it")
        if split not in self._records:
            with open(self.root / "scenes" / f"{split}.jsonl") as f:
                self._records[split] = [json.loads(line) for line in f]
        return self._records[split]

    def image_path(self, record: dict) -> Path:
        return self.root / record["file"]

    def queries(self, split: str) -> list[dict]:
        return json.loads((self.root / "cirr" / "captions" / f"cap.rc2.{split}.json").read_text())

    def image_array(self, split: str, size: int, progress: bool = True) -> np.ndarray:
        """All images of a split as uint8 ``(N, size, size, 3)``, cached under ``cache/``."""
        from PIL import Image

        cache = self.root / "cache" / f"{split}_{size}.npy"
        if cache.exists():
            return np.load(cache, mmap_mode="r")
        recs = self.records(split)
        arr = np.empty((len(recs), size, size, 3), dtype=np.uint8)
        for i, rec in enumerate(tqdm(recs, desc=f"load {split} images", disable=not progress)):
            with Image.open(self.image_path(rec)) as im:
                im = im.convert("RGB")
                if im.size != (size, size):
                    im = im.resize((size, size), Image.Resampling.BICUBIC)
                arr[i] = np.asarray(im)
        with atomic_path(cache) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, arr)
        return arr
