"""Galleries beyond one process: the Ray engine, indexes built shard by shard (IVF-PQ, on-disk
inverted lists), the Milvus backend. One local Ray session serves every Ray test of the module."""
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from isa_demo.index import GalleryError, GalleryIndex

pytest.importorskip("ray")


def _img(seed, w=40, h=30):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("scale") / "images"
    (d / "sub").mkdir(parents=True)
    for i in range(24):
        _img(i).save(d / ("sub" if i % 3 == 0 else ".") / f"{i:03d}.png")
    (d / "truncated.png").write_bytes((d / "001.png").read_bytes()[:40])
    (d / "zero.jpg").write_bytes(b"")
    (d / "notes.txt").write_text("not an image")
    shutil.copy(d / "002.png", d / "sub" / "copy.png")
    return d


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray for the module (a start costs seconds); the engine uses it as it finds it."""
    import ray

    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


def _same_index(a: GalleryIndex, b: GalleryIndex):
    assert [r["path"] for r in a.records] == [r["path"] for r in b.records]
    assert [r["sha256"] for r in a.records] == [r["sha256"] for r in b.records]
    assert [(s["path"], s["reason"]) for s in a.skipped] == [(s["path"], s["reason"]) for s in b.skipped]
    np.testing.assert_allclose(a.index.reconstruct_n(0, len(a)), b.index.reconstruct_n(0, len(b)), atol=1e-5)


def test_ray_build_equals_single_process_build(images, tmp_path, tiny_vl, ray_session):
    single = GalleryIndex.build(images, tmp_path / "single", tiny_vl)
    distributed = GalleryIndex.build_ray(images, tmp_path / "ray", tiny_vl, workers=2, batch_size=4, shard_files=7)
    _same_index(single, distributed)
    loaded = GalleryIndex.load(tmp_path / "ray", expected_identity=tiny_vl.identity())
    _same_index(single, loaded)
    assert loaded.meta["sources"][0]["added"] == len(single) and len(single.skipped) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ray", "single"]  # the shards are gone
    # the Ray-built index is an ordinary one: `index add` extends it
    extra = tmp_path / "extra"
    extra.mkdir()
    _img(99).save(extra / "new.png")
    assert len(loaded.add(extra, tiny_vl).records) == 1 and len(GalleryIndex.load(tmp_path / "ray")) == len(single) + 1


def test_a_worker_killed_mid_build_is_retried(images, tmp_path, tiny_vl, ray_session):
    from isa_demo.index.distributed import ImageEncoder

    marker = tmp_path / "kill-once"
    marker.write_text("")

    class DiesOnce(ImageEncoder):  # defined here: travels to the workers by value
        def __call__(self, x):
            if os.path.exists(marker):
                os.unlink(marker)
                os._exit(1)  # the worker process dies mid-batch
            return super().__call__(x)

    enc = DiesOnce(tiny_vl)
    enc.marker = str(marker)
    g = GalleryIndex.build_ray(images, tmp_path / "ray", enc, workers=1, batch_size=4, shard_files=7)
    assert not marker.exists()  # it did die once
    _same_index(GalleryIndex.build(images, tmp_path / "single", tiny_vl), g)


def test_a_failing_run_keeps_its_shards_and_resumes(images, tmp_path, tiny_vl, ray_session, monkeypatch):
    from isa_demo.index import distributed
    from isa_demo.index.distributed import ImageEncoder

    monkeypatch.setattr(distributed, "RETRIES", 1)

    class AlwaysDies(ImageEncoder):
        def __call__(self, x):
            os._exit(1)

    out = tmp_path / "ray"
    with pytest.raises(GalleryError, match="Ray workers failed.*rerun the same command to resume"):
        GalleryIndex.build_ray(images, out, AlwaysDies(tiny_vl), workers=1, batch_size=4, shard_files=7)
    assert not out.exists() and (tmp_path / ".ray.shards" / "plan.json").exists()
    g = GalleryIndex.build_ray(images, out, tiny_vl, workers=1, batch_size=4, shard_files=7)
    assert len(g) == len(GalleryIndex.build(images, tmp_path / "single", tiny_vl))


def test_cli_ray_build_and_an_address_that_does_not_answer(images, tmp_path, tiny_vl, ray_session, capsys):
    from safetensors.torch import save_file

    from isa_demo.cli import main
    from isa_demo.index.distributed import check_address

    ckpt = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_vl.model.state_dict().items()}, str(ckpt),
              metadata={"model_name": "isa-test-tiny"})
    model = ["--model", "isa-test-tiny", "--pretrained", str(ckpt), "--device", "cpu"]
    out = tmp_path / "idx"
    bad = ["index", "build", "--images", str(images), "--out", str(out), *model, "--engine", "ray"]
    assert main([*bad, "--ray-address", "127.0.0.1:9"]) == 2
    assert "no Ray cluster answers at 127.0.0.1:9" in capsys.readouterr().err and not out.exists()
    assert main([*bad, "--ray-workers", "1", "--factory", "IVF4,Flat"]) == 0
    assert "indexed 24 image(s) of 27" in capsys.readouterr().out
    assert main(["index", "info", "--index", str(out)]) == 0 and "IVF4,Flat" in capsys.readouterr().out
    with pytest.raises(GalleryError, match="not host:port"):
        check_address("nonsense")


# ---------------------------------------------------------------------- indexes built shard by shard
def _shards_of(tmp_path, x, shard_files=700):
    """Synthetic vectors as embedding shards (one fake file per vector)."""
    from isa_demo.index.shards import ShardSet

    files = [tmp_path / f"{i:05d}.png" for i in range(len(x))]
    ident = {"name": "synthetic", "pretrained": None, "checkpoint_sha256": "abc", "embed_dim": x.shape[1]}
    shards = ShardSet.open(tmp_path / "shards", files, ident, x.shape[1], shard_files)
    for k in range(len(shards)):
        r = shards.range(k)
        shards.write(k, [{"sha256": f"{i:064x}", "bytes": 1, "width": 1, "height": 1} for i in r], x[r.start:r.stop])
    return shards, ident


def _clustered(n=3000, d=32, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((30, d))
    x = centers[rng.integers(0, 30, n)] + 0.5 * rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("factory, on_disk", [("IVF32,PQ8x4", False), ("IVF32,PQ8x4,Refine(SQ8)", False),
                                              ("IVF32,Flat", True)])
def test_index_filled_shard_by_shard(tmp_path, factory, on_disk):
    x = _clustered()
    shards, ident = _shards_of(tmp_path, x)
    out = tmp_path / "idx"
    g = GalleryIndex.from_shards(out, shards, ident, factory, on_disk=on_disk, train_size=2000, target_recall=0.9)
    assert len(g) == len(x) and g.meta["recall_queries"] == 500
    h = GalleryIndex.load(out, expected_identity=ident)
    assert h.meta["search_params"] == g.meta["search_params"] and 0 < h.meta["recall_at_10"] <= 1
    if "PQ" not in factory or "Refine" in factory:  # PQ codes alone cap recall (measured, not promised)
        assert h.meta["recall_at_10"] >= 0.85
    assert (h.search(x[:50], 1)[1][:, 0] == np.arange(50)).mean() >= (0.8 if h.meta["recall_at_10"] >= 0.85 else 0.3)
    if on_disk:
        assert (out / "index.ivfdata").exists() and h.meta["on_disk"] == "index.ivfdata"
        assert not list(tmp_path.glob("*.block*")) and not list(tmp_path.glob(".idx.*"))
        with pytest.raises(GalleryError, match="on disk"):
            h.add(tmp_path, None)
    if "Refine" in factory:
        assert "k_factor_rf" in h.meta["search_params"]


def test_exact_search_over_chunks_equals_one_array():
    from isa_demo.index import ann

    x, q = _clustered(2000), _clustered(50, seed=1)
    s, i = ann.chunked_knn(q, [x[:333], x[333:1500], x[1500:]], 10)
    import faiss

    s2, i2 = faiss.knn(q, x, 10, metric=faiss.METRIC_INNER_PRODUCT)
    assert (i == i2).all() and np.allclose(s, s2, atol=1e-5)
    a, b = ann.sample_rows([x[:333], x[333:]], len(x), [100, 50], seed=0)
    assert a.shape == (100, 32) and b.shape == (50, 32)
    rows = {r.tobytes() for r in x}
    assert all(r.tobytes() in rows for r in np.concatenate([a, b]))
    assert len({r.tobytes() for r in a}) == 100  # without replacement


# ---------------------------------------------------------------------- the Milvus backend
class _OtherModel:
    def __init__(self, vl):
        self.vl = vl

    def identity(self):
        return {**self.vl.identity(), "name": "ViT-B-32", "checkpoint_sha256": "open_clip:ViT-B-32/laion2b"}

    def __getattr__(self, name):
        return getattr(self.vl, name)


@pytest.fixture(scope="module")
def milvus_uri(tmp_path_factory):
    pytest.importorskip("pymilvus")
    pytest.importorskip("milvus_lite")
    return str(tmp_path_factory.mktemp("milvus") / "gallery.db")


def test_milvus_gallery_serves_the_same_top10_as_faiss_exact(small_world, tiny_vl, tmp_path, milvus_uri):
    from isa_demo.index import default_gallery, open_gallery
    from isa_demo.index.milvus import from_index
    from isa_demo.methods import create_method
    from isa_demo.world import World

    g = default_gallery(tiny_vl, world_dir=small_world, size="small", index_dir=tmp_path / "world-test")
    from_index(g, milvus_uri, "world")
    m = open_gallery(backend="milvus", uri=milvus_uri, collection="world", expected_identity=tiny_vl.identity())
    assert len(m) == len(g) and m.identity == g.identity and "milvus-lite" in m.engine
    w = World(small_world)
    method = create_method("sum", tiny_vl)
    recs = w.records("test")
    refs = [w.image_path(r) for r in recs[:40]]
    q = method.compose(method.encode_reference([Image.open(p) for p in refs]), ["make it red"] * len(refs))
    q = q.detach().numpy()
    sf, idf = g.search(q, 10)
    sm, idm = m.search(q, 10)
    assert (idf == idm).all() and np.allclose(sf, sm, atol=1e-4)
    assert [m.path_of(i) for i in idm[0]] == [g.path_of(i) for i in idf[0]]
    assert m.ids_with_content(g.records[3]["sha256"]) == [3]
    assert m.image_roots() == g.image_roots()


def test_milvus_build_from_images_and_bad_input(images, tiny_vl, tmp_path, milvus_uri, capsys):
    from isa_demo.index import GalleryIdentityError, milvus, open_gallery

    single = GalleryIndex.build(images, tmp_path / "single", tiny_vl)
    m = milvus.build(images, milvus_uri, tiny_vl, "photos")
    assert len(m) == len(single) and [str(m.path_of(i)) for i in range(len(m))] == \
        [str(single.path_of(i).resolve()) for i in range(len(single))]
    with pytest.raises(GalleryError, match="already holds collection photos.*--force"):
        milvus.build(images, milvus_uri, tiny_vl, "photos")
    with pytest.raises(GalleryIdentityError, match="built with isa-test-tiny .* query model is ViT-B-32"):
        open_gallery(backend="milvus", uri=milvus_uri, collection="photos",
                     expected_identity=_OtherModel(tiny_vl).identity())
    with pytest.raises(GalleryError, match="no such collection"):
        open_gallery(backend="milvus", uri=milvus_uri, collection="nothing")
    with pytest.raises(GalleryError, match="no Milvus server answers at http://127.0.0.1:9"):
        open_gallery(backend="milvus", uri="http://127.0.0.1:9")

    # a build that dies half way leaves the previous collection as it was, and nothing else
    def crash(*a, **k):
        raise KeyboardInterrupt

    client = milvus.connect(milvus_uri)
    orig = type(client).insert
    try:
        type(client).insert = lambda self, name, rows, *a, **k: (crash() if len(rows) and rows[0]["id"] > 0
                                                                  else orig(self, name, rows, *a, **k))
        milvus.INSERT_BATCH, old_batch = 5, milvus.INSERT_BATCH
        with pytest.raises(KeyboardInterrupt):
            milvus.build(images, milvus_uri, tiny_vl, "photos", overwrite=True)
    finally:
        type(client).insert = orig
        milvus.INSERT_BATCH = old_batch
    assert len(open_gallery(backend="milvus", uri=milvus_uri, collection="photos")) == len(single)
    assert not milvus.connect(milvus_uri).has_collection("photos" + milvus.BUILDING)

    from isa_demo.cli import main

    assert main(["index", "info", "--backend", "milvus", "--uri", milvus_uri, "--collection", "photos"]) == 0
    assert f"images     {len(single)}" in capsys.readouterr().out


def test_app_serves_from_milvus(small_world, tiny_vl, tmp_path, milvus_uri):
    from helpers import write_fake_checkpoints
    from isa_demo.app.service import DemoService
    from isa_demo.index import default_gallery, open_gallery
    from isa_demo.index.milvus import from_index
    from isa_demo.world import World

    g = default_gallery(tiny_vl, world_dir=small_world, size="small", index_dir=tmp_path / "world-test")
    from_index(g, milvus_uri, "app", overwrite=True)
    m = open_gallery(backend="milvus", uri=milvus_uri, collection="app", expected_identity=tiny_vl.identity())
    w = World(small_world)
    s = DemoService(tiny_vl, m, w, variants=write_fake_checkpoints(tiny_vl, tmp_path / "ck"), results_dir=tmp_path)
    ref = g.path_of(5)
    r = s.compose(str(ref), "make it red", "sum", k=5)
    assert len(r.hits) == 5 and 5 not in r.ids and "Milvus" in r.timing_note
    assert any(str(ref).startswith(p) for p in s.allowed_paths())
    assert s.describe()["gallery_size"] == len(g)


def test_load_service_with_the_milvus_backend(small_world, tiny_vl, tmp_path, milvus_uri):
    from isa_demo.app.service import load_service
    from isa_demo.index import default_gallery
    from isa_demo.index.milvus import from_index

    g = default_gallery(tiny_vl, world_dir=small_world, size="small", index_dir=tmp_path / "world-test")
    from_index(g, milvus_uri, "served", overwrite=True)
    s = load_service("isa-test-tiny", None, world_dir=small_world, results_dir=tmp_path, device="cpu",
                     backend="milvus", uri=milvus_uri, collection="served")
    assert len(s.gallery) == len(g) and "Milvus collection served" in s.gallery_label


def test_missing_extra_is_a_clear_error(monkeypatch, images, tmp_path, capsys):
    import sys

    from isa_demo.cli import main
    from isa_demo.common import MissingExtraError, require_extra

    with pytest.raises(MissingExtraError, match="pip install -r requirements-scale.txt"):
        require_extra("no_such_module_for_isa_demo", "a feature")
    monkeypatch.setitem(sys.modules, "ray.data", None)
    monkeypatch.setitem(sys.modules, "pymilvus", None)
    args = ["index", "build", "--images", str(images), "--model", "isa-test-tiny", "--pretrained", "none"]
    assert main([*args, "--out", str(tmp_path / "i"), "--engine", "ray"]) == 2
    assert "the Ray engine (--engine ray) needs ray" in capsys.readouterr().err
    assert main([*args, "--backend", "milvus", "--uri", str(tmp_path / "g.db")]) == 2
    assert "the Milvus backend (--backend milvus) needs pymilvus" in capsys.readouterr().err
    assert not (tmp_path / "i").exists() and not (tmp_path / "g.db").exists()


def test_bench_scale_at_a_tiny_scale(tmp_path, milvus_uri):
    import pandas as pd

    from isa_demo.bench.scale import bench_scale

    out = tmp_path / "scale.csv"
    bench_scale(["ivfpq", "milvus"], vectors=3000, factory="IVF{nlist},PQ16x4,Refine(SQ8)", clusters=20,
                chunk=1000, train_size=3000, queries=50, latency_calls=5, milvus_vectors=1500, out=out,
                log=lambda *a: None)
    df = pd.read_csv(out)
    row = df[df.part == "ivfpq"].iloc[0]
    assert row["n"] == 3000 and row["index_bytes"] > 0 and row["peak_rss_bytes"] > 0 and 0 < row["recall@10"] <= 1
    assert "k_factor_rf" in row["search_params"]
    assert set(df[df.part == "milvus"].system) == {"faiss", "milvus-lite"}
    assert (df[df.part == "milvus"]["recall@10"] > 0.5).all()
    sweep = pd.read_csv(tmp_path / "scale_sweep.csv")  # every setting the ivfpq tuning tried
    assert row["search_params"] in set(sweep.params) and {"recall", "batch_ms_per_query"} <= set(sweep.columns)
    # running one part again replaces its rows and keeps the others'
    bench_scale(["ivfpq"], vectors=3000, factory="IVF{nlist},PQ16x4,Refine(SQ8)", clusters=20, chunk=1000,
                train_size=3000, queries=50, latency_calls=5, out=out, log=lambda *a: None)
    again = pd.read_csv(out)
    assert again.part.tolist() == ["ivfpq"] + ["milvus"] * 4


def test_tune_fastest_picks_the_fastest_setting_reaching_the_target():
    import faiss

    from isa_demo.bench.index import Mixture
    from isa_demo.index import ann

    mix = Mixture(32, clusters=20, seed=0)
    x, q = mix.sample(4000, seed=1), mix.sample(200, seed=2)
    truth = faiss.knn(q, x, 10, metric=faiss.METRIC_INNER_PRODUCT)[1]
    index = ann.new_index(32, "IVF64,PQ8x4,Refine(SQ8)")
    ann.train_and_add(index, x)
    params, recall, tried = ann.tune_fastest(index, q, truth, 0.9, q[:20], k_factors=(16, 4))
    candidates = [r for r in tried if r.get("candidate")]
    assert recall >= 0.9 and candidates and all(r["recall"] >= 0.9 for r in candidates)
    assert params == min(candidates, key=lambda r: r["b1_p50_ms"])["params"]
    assert {r["params"].split(",")[1] for r in tried} <= {"k_factor_rf=16", "k_factor_rf=4"}
    # each k_factor's sweep stops at the first nprobe reaching the target (then tries halfway back)
    for kf in ("k_factor_rf=16", "k_factor_rf=4"):
        rows = [r for r in tried if r["params"].endswith(kf)]
        assert all(r["recall"] < 0.9 for r in rows[:-2])
    # unreachable: the best recall tried, no candidate
    params, recall, tried = ann.tune_fastest(index, q, truth, 1.01, q[:5], k_factors=(2,))
    assert recall == max(r["recall"] for r in tried) and not any(r.get("candidate") for r in tried)
    # nothing to tune on an exact index
    flat = ann.new_index(32, "Flat")
    flat.add(x)
    assert ann.tune_fastest(flat, q, truth, 0.9, q[:5]) == ("", 1.0, [])


def test_cpu_busy_share():
    """``bench scale``'s ray rows: the share of the cores busy over a stretch of work, in [0, 1]."""
    import math

    from isa_demo.bench.scale import busy_since, cpu_jiffies

    start = cpu_jiffies()
    sum(i * i for i in range(300_000))
    busy = busy_since(start)
    assert math.isnan(busy_since(None))
    assert math.isnan(busy) or 0.0 <= busy <= 1.0  # NaN where /proc/stat is missing
