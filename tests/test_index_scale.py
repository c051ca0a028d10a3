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


def test_a_failing_run_keeps_its_shards_and_resumes(images, tmp_path, tiny_vl, ray_session):
    from isa_demo.index.distributed import ImageEncoder

    class AlwaysDies(ImageEncoder):
        def __call__(self, x):
            os._exit(1)

    out = tmp_path / "ray"
    with pytest.raises(GalleryError, match="Ray workers failed.*rerun the same command to resume"):
        GalleryIndex.build_ray(images, out, AlwaysDies(tiny_vl), workers=1, batch_size=4, shard_files=7)
    assert not out.exists() and (tmp_path / ".ray.shards" / "plan.json").exists()
    g = GalleryIndex.build_ray(images, out, tiny_vl, workers=1, batch_size=4, shard_files=7)
    assert len(g) == len(GalleryIndex.build(images, tmp_path / "single", tiny_vl))


def test_ray_address_that_does_not_answer(images, tmp_path, tiny_vl):
    from isa_demo.index.distributed import check_address

    with pytest.raises(GalleryError, match="no Ray cluster answers at 127.0.0.1:9"):
        check_address("127.0.0.1:9", timeout=1)
    with pytest.raises(GalleryError, match="not host:port"):
        check_address("nonsense")
