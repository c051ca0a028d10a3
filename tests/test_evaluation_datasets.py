"""Loaders on hand-made fixtures in the official layouts, the world export, the real annotation
files when ../shared is there, and the submission writers."""
import json
import shutil
from pathlib import Path

import pytest

from isa_demo.evaluation import DatasetError, load_benchmarks, load_circo, load_cirr, load_fashioniq, load_world
from isa_demo.evaluation.submission import (
    SubmissionError,
    circo_submission,
    cirr_submission,
    write_circo_submission,
    write_cirr_submission,
)

FIX = Path(__file__).parent / "fixtures" / "eval"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "annotations"


def test_cirr_fixture_official_hit_rule_and_missing_images():
    b = load_cirr(FIX, "val")  # root holding cirr/
    assert b.protocol == "cirr" and len(b.gallery) == 6 and len(b.queries) == 2
    q0, q1 = b.queries
    assert (q0.id, q0.reference, q0.modifiers) == ("7", "dev-0-0-img0", ("make it red",))
    assert q0.target_hard == "dev-1-0-img1"
    assert len(q0.members) == 6
    # target_soft 1.0 on another image does not make it a ground truth on real CIRR
    assert q1.ground_truth == ("dev-3-0-img1",)
    assert load_cirr(FIX, "val", scene_level=True).queries[1].ground_truth == ("dev-3-0-img1", "dev-4-0-img0")
    # images are absent: reported, not raised
    assert len(b.missing) == 6
    msg = b.missing_summary()
    assert "6 of 6 images are missing" in msg and "dev-0-0-img0" in msg
    assert b.paths["dev-0-0-img0"] == FIX / "dev" / "dev-0-0-img0.png"
    # pointing at the cirr/ folder itself works too
    assert load_cirr(FIX / "cirr", "val").gallery == b.gallery


def test_cirr_official_img_raw_layout(tmp_path):
    shutil.copytree(FIX / "cirr", tmp_path / "cirr")
    (tmp_path / "cirr" / "img_raw" / "dev").mkdir(parents=True)
    (tmp_path / "cirr" / "img_raw" / "dev" / "dev-0-0-img0.png").write_bytes(b"x")
    b = load_cirr(tmp_path, "val")
    assert b.paths["dev-0-0-img0"] == tmp_path / "cirr" / "img_raw" / "dev" / "dev-0-0-img0.png"
    assert len(b.missing) == 5


def test_cirr_test_split_is_unlabelled():
    b = load_cirr(FIX, "test")  # 'test' means test1 for real CIRR
    assert b.split == "test1" and not b.labelled
    assert b.queries[0].ground_truth == () and b.queries[0].id == "12063"
    assert "unlabelled" in b.summary()


def test_fashioniq_fixture():
    b = load_fashioniq(FIX / "fashioniq", "dress", "val")
    assert b.name == "fashioniq-dress" and b.protocol == "fashioniq"
    assert b.gallery == ["B001", "B002", "B003", "B004"]
    q = b.queries[0]
    assert q.modifiers == ("is red.", " has short sleeves?") and q.ground_truth == ("B002",) and q.category == "dress"
    assert b.paths["B001"].name == "B001.png" and len(b.missing) == 4
    with pytest.raises(DatasetError, match="val"):
        load_benchmarks("fashioniq", FIX / "fashioniq", "test")
    with pytest.raises(DatasetError, match="not found"):
        load_benchmarks("fashioniq", FIX / "fashioniq", "val")  # shirt/toptee files absent: named


def test_fashioniq_jpg_images_are_found(tmp_path):
    shutil.copytree(FIX / "fashioniq", tmp_path / "f")
    (tmp_path / "f" / "images").mkdir()
    (tmp_path / "f" / "images" / "B001.jpg").write_bytes(b"x")
    b = load_fashioniq(tmp_path / "f", "dress")
    assert b.paths["B001"].name == "B001.jpg" and "B001" not in b.missing


def test_circo_fixture_without_image_info():
    b = load_circo(FIX / "circo", "val")
    q = b.queries[0]
    assert (q.reference, q.target_hard, q.ground_truth) == ("11", "22", ("22", "33"))
    assert set(b.gallery) == {"11", "22", "33"}
    assert any("image_info_unlabeled2017.json not found" in n for n in b.notes)
    assert b.paths["22"].name == "000000000022.jpg"
    assert not load_circo(FIX / "circo", "test").labelled


def test_circo_gallery_from_image_info(tmp_path):
    shutil.copytree(FIX / "circo", tmp_path / "c")
    info = tmp_path / "c" / "COCO2017_unlabeled" / "annotations" / "image_info_unlabeled2017.json"
    info.parent.mkdir(parents=True)
    info.write_text(json.dumps({"images": [{"id": i, "file_name": f"{i:012d}.jpg"} for i in (11, 22, 33, 99)]}))
    b = load_circo(tmp_path / "c", "val")
    assert b.gallery == ["11", "22", "33", "99"] and not b.notes


def test_bad_annotation_errors_name_the_file(tmp_path):
    with pytest.raises(DatasetError, match="no cirr/captions"):
        load_cirr(tmp_path, "val")
    (tmp_path / "captions").mkdir()
    with pytest.raises(DatasetError, match="cap.rc2.val.json"):
        load_cirr(tmp_path, "val")
    with pytest.raises(DatasetError, match="unknown dataset"):
        load_benchmarks("coco", tmp_path, "val")


def test_world_loader_scene_level(small_world):
    b = load_world(small_world, "test")
    assert b.protocol == "world" and not b.missing and b.labelled
    assert all(q.target_hard == q.ground_truth[0] for q in b.queries)
    assert any(len(q.ground_truth) > 1 for q in b.queries)  # extra renders of a target scene count
    assert all(q.mod_type and q.target_caption for q in b.queries)
    assert {q.mod_family for q in b.queries} >= {"colour", "add", "remove", "pair"}
    circo = json.loads((small_world / "circo" / "annotations" / "test.json").read_text())
    assert [len(r["gt_img_ids"]) for r in circo] == [len(q.ground_truth) for q in b.queries]


# ------------------------------------------------------------------------------- real files
@pytest.mark.skipif(not SHARED.exists(), reason="the real annotation files (../shared) are not here")
def test_real_annotation_files_load():
    cirr = load_cirr(SHARED / "cirr", "val")
    assert len(cirr.queries) == 4181 and len(cirr.gallery) == 2297 and cirr.missing_summary()
    # target_soft 1.0 entries differ from target_hard on 42 real queries: hence target_hard only
    raw = json.loads((SHARED / "cirr" / "captions" / "cap.rc2.val.json").read_text())
    differ = [r for r in raw if {k for k, v in r["target_soft"].items() if v == 1.0} != {r["target_hard"]}]
    assert len(differ) == 42
    assert all(q.ground_truth == (q.target_hard,) for q in cirr.queries)
    test1 = load_cirr(SHARED / "cirr", "test1")
    assert len(test1.queries) == 4148 and not test1.labelled
    fiq = load_benchmarks("fashioniq", SHARED / "fashioniq", "val")
    assert [len(b.queries) for b in fiq] == [2017, 2038, 1961]
    assert [len(b.gallery) for b in fiq] == [3817, 6346, 5373]
    assert len(load_circo(SHARED / "circo", "val").queries) == 220
    assert len(load_circo(SHARED / "circo", "test").queries) == 800


# ------------------------------------------------------------------------------- submissions
def test_cirr_submission_format(tmp_path):
    ids = [f"img{i}" for i in range(60)]
    main, sub = cirr_submission({12063: ids}, {12063: ids[:5]})
    assert main["version"] == "rc2" and main["metric"] == "recall" and main["12063"] == ids[:50]
    assert sub["metric"] == "recall_subset" and sub["12063"] == ids[:3]
    a, b = write_cirr_submission(tmp_path / "run.json", {"1": ids}, {"1": ids[:3]})
    assert json.loads(Path(a).read_text())["1"] == ids[:50]
    assert Path(b).name == "subset_run.json" and json.loads(Path(b).read_text())["metric"] == "recall_subset"
    with pytest.raises(SubmissionError, match="50"):
        cirr_submission({"1": ids[:10]}, {"1": ids[:3]})


def test_circo_submission_format(tmp_path):
    ranked = [str(i) for i in range(70)]
    out = circo_submission({"0": ["5", "5"] + ranked, "1": ranked}, expected_ids=["0", "1"])
    assert out["0"][:3] == [5, 0, 1] and len(out["0"]) == 50 and len(set(out["0"])) == 50
    assert all(isinstance(x, int) for x in out["1"])
    with pytest.raises(SubmissionError, match="every query"):
        circo_submission({"0": ranked}, expected_ids=["0", "1"])
    path = write_circo_submission(tmp_path / "c.json", {"0": ranked})
    assert json.loads(Path(path).read_text())["0"][0] == 0
