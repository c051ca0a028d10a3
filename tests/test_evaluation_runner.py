"""The runner end to end: small world + tiny random-weight VL, and tiny generated CIRR /
FashionIQ / CIRCO layouts with real (tiny) images."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from isa_demo.cli import main
from isa_demo.evaluation import metrics as M
from isa_demo.evaluation import results
from isa_demo.evaluation import runner as R
from isa_demo.evaluation.datasets import load_world
from isa_demo.methods import create_method, shipped_variants

VL_ARGS = ["--vl-model", "isa-test-tiny", "--vl-pretrained", "none", "--quiet"]


def _png(path, seed):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(path)


@pytest.fixture(scope="module")
def fake_sets(tmp_path_factory):
    """CIRR (val + test1), FashionIQ dress, CIRCO (val + test) with 60 tiny images each."""
    root = tmp_path_factory.mktemp("sets")
    n = 60
    for split, prefix in (("val", "dev"), ("test1", "test1")):
        names = [f"{prefix}-{i}-0-img0" for i in range(n)]
        for i, name in enumerate(names):
            _png(root / "cirr_root" / prefix / f"{name}.png", i)
        ann = root / "cirr_root" / "cirr"
        (ann / "image_splits").mkdir(parents=True, exist_ok=True)
        (ann / "captions").mkdir(parents=True, exist_ok=True)
        (ann / "image_splits" / f"split.rc2.{split}.json").write_text(
            json.dumps({m: f"./{prefix}/{m}.png" for m in names}))
        caps = []
        for q in range(4):
            rec = {"pairid": 100 + q, "reference": names[q], "caption": "" if q == 3 else f"make it {q}",
                   "img_set": {"id": q, "members": names[q:q + 6]}}
            if split == "val":
                rec.update(target_hard=names[q + 1], target_soft={names[q + 1]: 1.0})
            caps.append(rec)
        (ann / "captions" / f"cap.rc2.{split}.json").write_text(json.dumps(caps))
    fiq = root / "fiq"
    asins = [f"B{i:03d}" for i in range(12)]
    for i, a in enumerate(asins):
        _png(fiq / "images" / f"{a}.jpg", 100 + i)
    (fiq / "image_splits").mkdir()
    (fiq / "captions").mkdir()
    (fiq / "image_splits" / "split.dress.val.json").write_text(json.dumps(asins))
    (fiq / "captions" / "cap.dress.val.json").write_text(json.dumps(
        [{"candidate": asins[i], "target": asins[i + 1], "captions": ["is red.", "has sleeves?"]} for i in range(3)]))
    circo = root / "circo"
    ids = list(range(1000, 1000 + n))
    for i in ids:
        _png(circo / "COCO2017_unlabeled" / "unlabeled2017" / f"{i:012d}.jpg", i)
    info = circo / "COCO2017_unlabeled" / "annotations" / "image_info_unlabeled2017.json"
    info.parent.mkdir(parents=True)
    info.write_text(json.dumps({"images": [{"id": i, "file_name": f"{i:012d}.jpg"} for i in ids]}))
    (circo / "annotations").mkdir()
    (circo / "annotations" / "val.json").write_text(json.dumps(
        [{"id": q, "reference_img_id": ids[q], "target_img_id": ids[q + 1], "gt_img_ids": [ids[q + 1], ids[q + 2]],
          "relative_caption": "is bigger", "shared_concept": ""} for q in range(3)]))
    (circo / "annotations" / "test.json").write_text(json.dumps(
        [{"id": q, "reference_img_id": ids[q], "relative_caption": "is bigger", "shared_concept": ""}
         for q in range(3)]))
    return root


def test_world_end_to_end_matches_direct_metrics(small_world, tiny_vl, tmp_path):
    method = create_method("sum", tiny_vl)
    rep = R.evaluate("world", small_world, "test", method, out=tmp_path / "res", limit=30, cache_dir=tmp_path,
                     progress=False)
    for k in ("R@1", "R@5", "R@10", "R@50", "Rs@1", "Rs@2", "Rs@3", "mAP@5", "mAP@10", "mAP@25", "mAP@50"):
        assert 0.0 <= rep.metrics[k] <= 100.0
    assert {k for k in rep.metrics if k.startswith("R@1/")} >= {"R@1/colour", "R@1/add", "R@1/remove"}
    # the chunked runner agrees with the whole-matrix metric functions
    bench = load_world(small_world, "test").limit(30)
    gf = R.gallery_features(bench, tiny_vl, cache_dir=tmp_path, progress=False)
    qf = R.query_features(bench, method, progress=False)
    scores = qf @ gf.T
    idx = bench.index
    gts = [[idx[g] for g in q.ground_truth] for q in bench.queries]
    refs = [idx[q.reference] for q in bench.queries]
    direct = M.cirr_metrics(scores, refs, gts, [[idx[m] for m in q.members] for q in bench.queries])
    direct.update(M.circo_metrics(scores, gts, exclude=refs))  # the world: one ranking, reference removed
    assert {k: rep.metrics[k] for k in direct} == pytest.approx(direct)
    # the per-query table at its stable path
    path = results.per_query_path(tmp_path / "res", "world", "test", "sum")
    assert path.name == "world_test_sum.parquet" and rep.files["per-query table"] == str(path)
    df = results.read_per_query(path)
    assert len(df) == 30 and list(df.columns) == ["query_id", "category", "mod_type", "mod_family", "reference",
                                                  "modifier", "target_hard", "targets", "rank", "subset_rank",
                                                  "topk_ids", "topk_scores"]
    assert all(len(t) == 10 for t in df["topk_ids"])
    assert all(ref not in top for ref, top in zip(df["reference"], df["topk_ids"]))  # reference removed
    assert np.mean(df["rank"] <= 1) * 100 == pytest.approx(rep.metrics["R@1"])
    assert json.loads((tmp_path / "res" / "metrics" / "world_test_sum.json").read_text())["limit"] == 30


def test_gallery_cache_is_reused_and_keyed_by_weights(small_world, tiny_vl, tiny_vl_custom, tmp_path, monkeypatch):
    bench = load_world(small_world, "test")
    first = R.gallery_features(bench, tiny_vl, cache_dir=tmp_path, progress=False)
    assert len(list(tmp_path.glob("gallery_world_test_*.pt"))) == 1

    def boom(*a, **k):
        raise AssertionError("should have come from the cache")

    monkeypatch.setattr(R, "_encode_world_gallery", boom)
    assert torch.equal(R.gallery_features(bench, tiny_vl, cache_dir=tmp_path, progress=False), first)
    with pytest.raises(AssertionError, match="cache"):  # another model is another cache entry
        R.gallery_features(bench, tiny_vl_custom, cache_dir=tmp_path, progress=False)


def test_caption_oracle_world_only(small_world, tiny_vl, tmp_path, fake_sets):
    oracle = R.build_method(R.ORACLE, tiny_vl)
    rep = R.evaluate("world", small_world, "test", oracle, out=None, limit=8, cache_dir=tmp_path, progress=False)
    assert rep.method == "caption-oracle" and "R@1" in rep.metrics
    with pytest.raises(R.EvalError, match="only the built-in world"):
        R.evaluate("cirr", fake_sets / "cirr_root", "val", oracle, out=None, cache_dir=tmp_path, progress=False)


def test_inversion_oracle_composes_the_reference_caption_with_the_modifier(small_world, tiny_vl):
    q = load_world(small_world, "test").queries[0]
    oracle = R.build_method("inversion-oracle", tiny_vl)
    assert oracle.name == "inversion-oracle"
    scenes = [json.loads(line) for line in (small_world / "scenes" / "test.jsonl").read_text().splitlines()]
    caption = next(s["caption"] for s in scenes if s["name"] == q.reference)
    assert oracle.texts([q]) == [f"a photo of {caption} that {q.modifiers[0]}"]
    assert R.build_method("caption-oracle", tiny_vl).texts([q]) == [q.target_caption]


def test_cirr_val_and_test1_submission(fake_sets, tiny_vl, tmp_path):
    method = create_method("image-only", tiny_vl)
    rep = R.evaluate("cirr", fake_sets / "cirr_root", "val", method, out=tmp_path, cache_dir=tmp_path,
                     progress=False)
    assert set(rep.metrics) == {"R@1", "R@5", "R@10", "R@50", "Rs@1", "Rs@2", "Rs@3"}
    assert "1 queries have an empty modifier" in " ".join(rep.notes)
    rep = R.evaluate("cirr", fake_sets / "cirr_root", "test1", method, out=tmp_path, cache_dir=tmp_path,
                     progress=False)
    assert rep.metrics == {} and rep.table["rank"].isna().all()
    main_sub = json.loads(open(rep.files["submission"]).read())
    subset = json.loads(open(rep.files["subset submission"]).read())
    assert (main_sub["version"], main_sub["metric"], subset["metric"]) == ("rc2", "recall", "recall_subset")
    assert set(main_sub) - {"version", "metric"} == {"100", "101", "102", "103"}
    assert len(main_sub["100"]) == 50 and "test1-0-0-img0" not in main_sub["100"]  # reference removed
    assert len(subset["100"]) == 3 and set(subset["100"]) <= {f"test1-{i}-0-img0" for i in range(1, 6)}


def test_fashioniq_two_caption_orders_averaged(fake_sets, tiny_vl, tmp_path):
    method = create_method("text-only", tiny_vl)
    rep = R.evaluate("fashioniq", fake_sets / "fiq", "val", method, categories=["dress"], out=tmp_path,
                     cache_dir=tmp_path, progress=False)
    assert set(rep.metrics) == {"dress/R@10", "dress/R@50", "mean/R@10", "mean/R@50", "average"}
    assert rep.table["category"].tolist() == ["dress"] * 3
    assert R.fashioniq_modifiers("is red.", " has sleeves?") == ("is red and has sleeves", "has sleeves and is red")
    bench = R.load_benchmarks("fashioniq", fake_sets / "fiq", "val", categories=["dress"])[0]
    q = R.query_features(bench, method, progress=False)[0]
    a, b = tiny_vl.encode_texts(["is red and has sleeves", "has sleeves and is red"])
    assert torch.allclose(q, F.normalize((a + b) / 2, dim=-1), atol=1e-5)


def test_circo_val_and_test_submission(fake_sets, tiny_vl, tmp_path):
    method = create_method("sum", tiny_vl)
    rep = R.evaluate("circo", fake_sets / "circo", "val", method, out=tmp_path, cache_dir=tmp_path, progress=False)
    assert set(rep.metrics) == {"mAP@5", "mAP@10", "mAP@25", "mAP@50"}
    rep = R.evaluate("circo", fake_sets / "circo", "test", method, out=tmp_path, cache_dir=tmp_path, progress=False)
    sub = json.loads(open(rep.files["submission"]).read())
    assert sorted(sub) == ["0", "1", "2"] and all(len(v) == 50 and len(set(v)) == 50 for v in sub.values())
    assert all(isinstance(x, int) for x in sub["0"])


def test_missing_images_refused_with_summary(tiny_vl, tmp_path):
    from pathlib import Path

    fix = Path(__file__).parent / "fixtures" / "eval"
    with pytest.raises(R.EvalError, match="6 of 6 images are missing"):
        R.evaluate("cirr", fix, "val", create_method("sum", tiny_vl), out=None, cache_dir=tmp_path, progress=False)


def test_cli_eval_world(small_world, tmp_path, capsys):
    rc = main(["eval", "--dataset", "world", "--root", str(small_world), "--method", "sum", "--limit", "10",
               "--out", str(tmp_path), "--cache-dir", str(tmp_path), *VL_ARGS])
    out = capsys.readouterr().out
    assert rc == 0 and "world test  method=sum" in out and "R@1 by modification type" in out
    assert (tmp_path / "per_query" / "world_test_sum.parquet").exists()
    rc = main(["eval", "--dataset", "world", "--root", str(small_world), "--method", "nope", *VL_ARGS])
    assert rc == 2 and "unknown method" in capsys.readouterr().err
    rc = main(["eval", "--dataset", "world", "--root", str(tmp_path / "none"), "--method", "sum", *VL_ARGS])
    assert rc == 2 and "not a built world" in capsys.readouterr().err


BASELINES = [{"method": m, "backbone": None, "checkpoint": None} for m in ("image-only", "text-only", "sum")]


def test_shipped_variants_start_with_the_baselines():
    variants = shipped_variants()
    assert variants[:3] == BASELINES
    assert all(set(v) == {"method", "backbone", "checkpoint"} for v in variants)


def test_bench_accuracy(small_world, tmp_path, capsys, monkeypatch):
    import isa_demo.methods

    # trained variants need the built-in VL; with the tiny random one the baselines are the set
    monkeypatch.setattr(isa_demo.methods, "shipped_variants", lambda vl_name=None: BASELINES)
    rc = main(["bench", "accuracy", "--world", str(small_world), "--limit", "10", "--out", str(tmp_path),
               "--cache-dir", str(tmp_path), *VL_ARGS])
    assert rc == 0
    import pandas as pd

    df = pd.read_csv(tmp_path / "accuracy.csv")
    assert df["method"].tolist() == ["image-only", "text-only", "sum", "caption-oracle", "inversion-oracle"]
    assert {"R@1", "Rs@1", "mAP@10", "R@1_of_oracle", "mAP@10_of_oracle", "command", "machine", "date"} <= set(df)
    oracle = df[df["method"] == "caption-oracle"].iloc[0]
    if oracle["R@1"] > 0:
        assert oracle["R@1_of_oracle"] == pytest.approx(1.0)
    assert "bench accuracy" in df["command"].iloc[0]
    side = json.loads((tmp_path / "accuracy.json").read_text())
    assert side["machine"]["cpu"] and side["date"] and side["skipped"] == []
    assert len(list((tmp_path / "per_query").glob("world_test_*.parquet"))) == 5
    assert "wrote" in capsys.readouterr().out


def test_bench_accuracy_reports_unbuildable_variants(small_world, tiny_vl, tmp_path):
    from isa_demo.bench.accuracy import bench_accuracy

    df, record = bench_accuracy(small_world, tiny_vl, out=tmp_path, limit=5, progress=False, cache_dir=tmp_path,
                                variants=[BASELINES[0], {"method": "no-such-method", "backbone": "x",
                                                         "checkpoint": None}])
    assert df["method"].tolist() == ["image-only", "caption-oracle", "inversion-oracle"]
    assert record["skipped"][0]["method"] == "no-such-method" and "unknown method" in record["skipped"][0]["error"]


def test_prompt_applies_only_to_pseudo_token_methods(tiny_vl):
    with pytest.raises(R.EvalError, match="--prompt applies to isa, isa-symmetric, masked-ti, single-token"):
        R.build_method("image-only", tiny_vl, prompt="a photo of *")


@pytest.mark.parametrize("protocol,expected_ap10", [("world", 1.0), ("circo", 0.5)])
def test_one_ranking_for_every_metric(tmp_path, protocol, expected_ap10):
    """The world scores Recall@K and mAP@K on the same ranking, the reference removed; CIRCO's
    official mAP keeps it. Gallery scores: reference 0.9 > target 0.8 > others."""
    from isa_demo.evaluation.datasets import Benchmark, Query

    gallery = ["ref", "tgt", "a", "b", "c"]
    q = Query("q0", "ref", ("make it so",), target_hard="tgt", ground_truth=("tgt",))
    bench = Benchmark(protocol, "test", protocol, tmp_path, gallery, {}, [q])
    gf = torch.eye(5)
    qf = torch.tensor([[0.9, 0.8, 0.1, 0.05, 0.0]])
    scored = R.score(bench, qf, gf)
    assert scored.ap[10][0] == pytest.approx(expected_ap10)
    if protocol == "world":
        assert scored.rank[0] == 1
        metrics = R.summarize(bench, scored)
        assert metrics["R@1"] == 100.0 and metrics["mAP@10"] == 100.0
