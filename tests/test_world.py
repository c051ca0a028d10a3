import json

import numpy as np
import pytest

from isa_demo.world import ALL_MOD_TYPES, World, WorldError, build_world, modify, random_scene, scene_key
from isa_demo.world.build import SIZES


def test_small_world_layout(small_world):
    w = World(small_world)
    assert w.meta["complete"] and w.meta["splits_done"] == ["test", "val", "train"]
    for split in ("val", "test"):
        q = w.queries(split)
        assert len(q) == SIZES["small"][split]
        circo = json.loads((small_world / "circo" / "annotations" / f"{split}.json").read_text())
        assert len(circo) == len(q)
        names = {r["name"] for r in w.records(split)}
        split_map = json.loads((small_world / "cirr" / "image_splits" / f"split.rc2.{split}.json").read_text())
        assert set(split_map) == names
        for x in q:
            assert len(x["img_set"]["members"]) == 6
            assert x["reference"] in x["img_set"]["members"] and x["target_hard"] in x["img_set"]["members"]
            assert x["target_hard"] in x["target_soft"]
        types = {x["mod_type"].split(":")[0] for x in q}
        assert types == set(ALL_MOD_TYPES)
    assert len(w.records("train")) == SIZES["small"]["train"]
    assert (small_world / w.records("test")[0]["file"]).exists()


def test_ground_truths_are_exactly_the_same_scene(small_world):
    w = World(small_world)
    recs = {r["name"]: r for r in w.records("test")}
    circo = json.loads((small_world / "circo" / "annotations" / "test.json").read_text())
    by_id = {r["id"]: r for r in recs.values()}
    for q_cirr, q_circo in zip(w.queries("test"), circo):
        tkey = recs[q_cirr["target_hard"]]["key"]
        same = {r["id"] for r in recs.values() if r["key"] == tkey}
        assert set(q_circo["gt_img_ids"]) == same
        assert q_circo["gt_img_ids"][0] == q_circo["target_img_id"]
        assert recs[q_cirr["reference"]]["key"] != tkey
        # hard negatives: the subset's other members are not ground truths
        others = set(q_cirr["img_set"]["members"]) - {q_cirr["target_hard"]}
        assert all(recs[m]["key"] != tkey for m in others)
        assert by_id[q_circo["reference_img_id"]]["name"] == q_cirr["reference"]


def test_splits_are_disjoint(small_world):
    w = World(small_world)
    keys = {s: {r["key"] for r in w.records(s)} for s in ("train", "val", "test")}
    assert not keys["train"] & keys["test"] and not keys["train"] & keys["val"] and not keys["val"] & keys["test"]


def test_same_seed_same_bytes_and_resume(small_world, tmp_path):
    out = tmp_path / "w"
    build_world(out, seed=0, size="small", workers=1, splits=("test",))
    # simulate an interrupted build: a missing image and a stale temp file
    victim = out / "images" / "test" / "test-000003.png"
    victim.unlink()
    (out / "world.json").write_text(json.dumps({**json.loads((out / "world.json").read_text()), "complete": False}))
    build_world(out, seed=0, size="small", workers=1)
    for rel in ["images/test/test-000003.png", "images/train/train-000010.png", "cirr/captions/cap.rc2.test.json",
                "circo/annotations/val.json", "scenes/train.jsonl"]:
        assert (out / rel).read_bytes() == (small_world / rel).read_bytes(), rel


def test_refuses_foreign_directory(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(WorldError, match="not empty and is not a previous world build"):
        build_world(tmp_path, size="small")
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_refuses_other_seed(small_world):
    with pytest.raises(WorldError, match="seed=0"):
        build_world(small_world, seed=1, size="small")


def test_no_half_written_annotations(small_world):
    leftovers = [p for p in small_world.rglob("*.tmp")]
    assert leftovers == []


def test_modifications_apply_to_scene_graph():
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(400):
        scene = random_scene(rng)
        t = ALL_MOD_TYPES[int(rng.integers(len(ALL_MOD_TYPES)))]
        res = modify(scene, t, rng)
        if res is None:
            continue
        target, text, label = res
        seen.add((label.split(":")[0], text.split()[0]))
        assert scene_key(target) != scene_key(scene)
        assert len({o["cell"] for o in target["objects"]}) == len(target["objects"])
        assert len({o["shape"] for o in target["objects"]}) == len(target["objects"])
        if label == "remove":
            assert len(target["objects"]) == len(scene["objects"]) - 1
        if label == "add":
            assert len(target["objects"]) == len(scene["objects"]) + 1
    # several phrasings per type
    for t in ALL_MOD_TYPES[:-1]:
        assert len({w for lab, w in seen if lab == t}) >= 2, t


def test_world_reader_errors(tmp_path):
    with pytest.raises(WorldError, match="not a built world"):
        World(tmp_path)
