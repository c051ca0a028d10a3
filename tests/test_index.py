"""Gallery index: build / load / add / search, bad files, atomic writes, the default gallery, CLI."""
import json
import shutil
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from isa_demo.index import GalleryError, GalleryIdentityError, GalleryIndex, default_gallery
from isa_demo.index import gallery as gallery_mod


def _png_bomb(path, w=50_000, h=50_000):
    """A PNG whose header claims w x h pixels (a decompression bomb; no pixel data needed)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def _img(seed, w=40, h=24):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8))


@pytest.fixture()
def folder(tmp_path):
    """Good images of every indexed type (EXIF-rotated JPEG, animated GIF, nested, upper-case
    extension) plus every kind of bad file."""
    d = tmp_path / "images"
    (d / "sub").mkdir(parents=True)
    _img(0).save(d / "a.png")
    _img(1).save(d / "b.webp")
    _img(2).save(d / "c.bmp")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees -> displayed 24 x 40
    _img(3).save(d / "rotated.jpg", exif=exif)
    _img(4).save(d / "sub" / "anim.gif", save_all=True, append_images=[_img(5)], duration=100)
    _img(6).save(d / "sub" / "UPPER.JPEG")
    shutil.copy(d / "a.png", d / "sub" / "copy-of-a.png")
    # bad files
    _img(7, 64, 64).save(d / "full.png")
    data = (d / "full.png").read_bytes()
    (d / "full.png").unlink()
    (d / "truncated.png").write_bytes(data[: len(data) // 2])
    (d / "zero.jpg").write_bytes(b"")
    _png_bomb(d / "bomb.png")
    (d / "text-named.jpg").write_text("this is not a JPEG")
    (d / "notes.txt").write_text("not an image")
    (d / "gone.png").symlink_to(d / "does-not-exist.png")
    (d / ".hidden.png").write_bytes(b"ignored")
    return d


GOOD = {"a.png", "b.webp", "c.bmp", "rotated.jpg", "sub/anim.gif", "sub/UPPER.JPEG"}
BAD = {"sub/copy-of-a.png": "same content", "truncated.png": "truncated", "zero.jpg": "empty file",
       "bomb.png": "too large", "text-named.jpg": "not a readable image", "notes.txt": "not an image file type",
       "gone.png": "cannot read"}


def _rel(g, i, folder):
    return g.path_of(i).relative_to(folder).as_posix()


def test_build_indexes_good_files_and_reports_bad_ones(folder, tmp_path, tiny_vl):
    out = tmp_path / "idx"
    g = GalleryIndex.build(folder, out, tiny_vl, workers=0)
    assert {_rel(g, i, folder) for i in range(len(g))} == GOOD
    reasons = {s["path"].split("images/", 1)[1]: s["reason"] for s in g.skipped}
    assert set(reasons) == set(BAD)
    for name, word in BAD.items():
        assert word in reasons[name], (name, reasons[name])

    by_name = {_rel(g, i, folder): r for i, r in enumerate(g.records)}
    assert (by_name["rotated.jpg"]["width"], by_name["rotated.jpg"]["height"]) == (24, 40)  # EXIF honoured
    assert by_name["a.png"]["bytes"] == (folder / "a.png").stat().st_size and len(by_name["a.png"]["sha256"]) == 64

    h = GalleryIndex.load(out, expected_identity=tiny_vl.identity())
    assert len(h) == len(GOOD) and h.meta["exact"] and h.meta["recall_at_10"] == 1.0
    assert json.loads((out / "skipped.json").read_text()) == h.skipped
    # every image finds itself first
    q = tiny_vl.encode_images([h.path_of(i) for i in range(len(h))])
    scores, ids = h.search(q, k=3)
    assert ids[:, 0].tolist() == list(range(len(h))) and np.allclose(scores[:, 0], 1.0, atol=1e-4)


def test_search_accepts_torch_numpy_and_single_vectors(folder, tmp_path, tiny_vl):
    g = GalleryIndex.build(folder, tmp_path / "idx", tiny_vl)
    q = tiny_vl.encode_images([folder / "a.png"])
    s1, i1 = g.search(q * 3.0, k=100)  # not normalized, k larger than the gallery
    s2, i2 = g.search(q[0].numpy(), k=100)
    assert i1.shape == (1, len(GOOD)) and (i1 == i2).all() and np.allclose(s1, s2, atol=1e-5)
    with pytest.raises(ValueError, match="32-d features"):
        g.search(torch.zeros(2, 7))


def test_empty_folders_and_folders_without_usable_images(tmp_path, tiny_vl):
    (tmp_path / "empty").mkdir()
    with pytest.raises(GalleryError, match="folder is empty"):
        GalleryIndex.build(tmp_path / "empty", tmp_path / "i1", tiny_vl)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "readme.md").write_text("x")
    with pytest.raises(GalleryError, match="none of an indexed type"):
        GalleryIndex.build(tmp_path / "docs", tmp_path / "i2", tiny_vl)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"")
    with pytest.raises(GalleryError, match="none of the 1 image files .* empty file"):
        GalleryIndex.build(tmp_path / "bad", tmp_path / "i3", tiny_vl)
    with pytest.raises(GalleryError, match="image folder not found"):
        GalleryIndex.build(tmp_path / "missing", tmp_path / "i4", tiny_vl)
    assert not any((tmp_path / n).exists() for n in ("i1", "i2", "i3", "i4"))


class _OtherModel:
    """Stands for a different VL model: same tensors, another identity."""

    def __init__(self, vl):
        self.vl = vl

    def identity(self):
        return {**self.vl.identity(), "name": "ViT-B-32", "pretrained": "laion2b_s34b_b79k",
                "checkpoint_sha256": "open_clip:ViT-B-32/laion2b_s34b_b79k"}

    def __getattr__(self, name):
        return getattr(self.vl, name)


def test_load_and_add_refuse_another_model(folder, tmp_path, tiny_vl):
    out = tmp_path / "idx"
    GalleryIndex.build(folder, out, tiny_vl)
    other = _OtherModel(tiny_vl)
    with pytest.raises(GalleryIdentityError, match="built with isa-test-tiny .* query model is ViT-B-32"):
        GalleryIndex.load(out, expected_identity=other.identity())
    with pytest.raises(GalleryIdentityError, match="laion2b_s34b_b79k"):
        GalleryIndex.load(out).add(folder, other)
    with pytest.raises(GalleryError, match="not a gallery index|no such directory"):
        GalleryIndex.load(tmp_path / "nowhere")


def test_add_skips_content_already_indexed(folder, tmp_path, tiny_vl):
    first = tmp_path / "first"
    first.mkdir()
    for name in ("a.png", "b.webp"):
        shutil.copy(folder / name, first / name)
    out = tmp_path / "idx"
    GalleryIndex.build(first, out, tiny_vl, factory="HNSW32")
    g = GalleryIndex.load(out, expected_identity=tiny_vl.identity())
    enc = g.add(folder, tiny_vl)
    assert enc.known == 3 and len(enc.records) == len(GOOD) - 2  # a.png, b.webp and the copy of a.png
    h = GalleryIndex.load(out)
    assert len(h) == len(GOOD) and len(h.meta["sources"]) == 2 and h.meta["updated"] >= h.meta["created"]
    assert len({r["sha256"] for r in h.records}) == len(h)
    assert h.meta["search_params"].startswith("efSearch=") and 0.0 < h.meta["recall_at_10"] <= 1.0
    assert len(h.skipped) == len(BAD) - 1  # the bad files of the second folder (its copy is "known")
    again = h.add(folder, tiny_vl)
    assert len(again.records) == 0 and again.known == len(GOOD) + 1


def test_interrupted_writes_leave_no_half_index(folder, tmp_path, tiny_vl, monkeypatch):
    out = tmp_path / "idx"

    def crash(*a, **k):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(gallery_mod.faiss, "write_index", crash)
        with pytest.raises(KeyboardInterrupt):
            GalleryIndex.build(folder, out, tiny_vl)
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["images"]  # no temp dir left

    small = tmp_path / "small"
    small.mkdir()
    shutil.copy(folder / "a.png", small / "a.png")
    GalleryIndex.build(small, out, tiny_vl)
    g = GalleryIndex.load(out)
    with monkeypatch.context() as m:
        m.setattr(gallery_mod.faiss, "write_index", crash)
        with pytest.raises(KeyboardInterrupt):
            g.add(folder, tiny_vl)
    assert len(GalleryIndex.load(out)) == 1  # the previous version, intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx", "images", "small"]


def test_refuses_to_replace_what_is_not_asked(folder, tmp_path, tiny_vl):
    out = tmp_path / "idx"
    GalleryIndex.build(folder, out, tiny_vl)
    with pytest.raises(GalleryError, match="already holds a gallery index.*--force"):
        GalleryIndex.build(folder, out, tiny_vl)
    assert len(GalleryIndex.build(folder, out, tiny_vl, overwrite=True)) == len(GOOD)
    with pytest.raises(GalleryError, match="not a gallery index; refusing"):
        GalleryIndex.build(folder, folder / "sub", tiny_vl, overwrite=True)  # never deletes a photo folder
    assert (folder / "sub" / "anim.gif").exists()


def _clustered(n=3000, d=32, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((30, d))
    x = centers[rng.integers(0, 30, n)] + 0.5 * rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("factory, param", [("HNSW32", "efSearch"), ("IVF32,Flat", "nprobe")])
def test_approximate_index_tuned_to_target_recall(tmp_path, factory, param):
    x = _clustered()
    ident = {"name": "synthetic", "pretrained": None, "checkpoint_sha256": "abc", "embed_dim": 32}
    recs = [{"path": f"{i}.png", "sha256": str(i), "bytes": 1, "width": 1, "height": 1} for i in range(len(x))]
    g = GalleryIndex.from_features(tmp_path / "idx", x, recs, ident, factory, target_recall=0.95)
    g.save()
    h = GalleryIndex.load(tmp_path / "idx", expected_identity=ident)
    assert h.meta["search_params"].startswith(param) and h.meta["recall_at_10"] >= 0.95
    assert h.meta["recall_queries"] == 500 and not h.meta["exact"]
    assert (h.search(x[:50], 1)[1][:, 0] == np.arange(50)).mean() >= 0.9
    fixed = GalleryIndex.from_features(tmp_path / "i2", x, recs, ident, factory, search_params=f"{param}=1")
    assert fixed.meta["search_params"] == f"{param}=1" and fixed.meta["recall_queries"] == 1000


def test_bad_factories_fail_clearly(folder, tmp_path, tiny_vl):
    with pytest.raises(GalleryError, match="needs at least 1024 vectors"):
        GalleryIndex.build(folder, tmp_path / "i", tiny_vl, factory="IVF1024,Flat")
    with pytest.raises(GalleryError, match="could not parse index string Nonsense"):
        GalleryIndex.build(folder, tmp_path / "i", tiny_vl, factory="Nonsense")
    assert not (tmp_path / "i").exists()


def test_default_gallery_builds_once_then_loads(small_world, tiny_vl, tmp_path, monkeypatch):
    from isa_demo.index import default as default_mod
    from isa_demo.world import World

    calls = []
    kw = dict(world_dir=small_world, size="small", index_dir=tmp_path / "world-test")
    g = default_gallery(tiny_vl, progress=lambda frac, desc=None: calls.append((frac, desc)), **kw)
    recs = World(small_world).records("test")
    assert len(g) == len(recs) and calls[-1][0] == 1.0
    assert all(g.path_of(i).resolve() == (small_world / r["file"]).resolve() for i, r in enumerate(recs))
    # the fast path gives the same features as the file path (PIL per image)
    q = tiny_vl.encode_images([g.path_of(i) for i in range(8)])
    assert g.search(q, 1)[1][:, 0].tolist() == list(range(8))

    built = default_mod.build_world_gallery
    monkeypatch.setattr(default_mod, "build_world_gallery", lambda *a, **k: pytest.fail("rebuilt a matching index"))
    assert default_gallery(tiny_vl, **kw).meta["created"] == g.meta["created"]

    rebuilt = []
    monkeypatch.setattr(default_mod, "build_world_gallery", lambda *a, **k: rebuilt.append(1) or built(*a, **k))
    default_gallery(_OtherModel(tiny_vl), **kw)  # another model: rebuilt for it
    assert rebuilt and GalleryIndex.load(kw["index_dir"]).identity["name"] == "ViT-B-32"
    default_gallery(tiny_vl, **kw)
    manifest = kw["index_dir"] / "manifest.jsonl"
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    rows[0]["sha256"] = "0" * 64  # as if the shipped index came from other renders
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    rebuilt.clear()
    assert len(default_gallery(tiny_vl, **kw)) == len(recs) and rebuilt


# ---------------------------------------------------------------------- CLI
def _cli(argv):
    from isa_demo.cli import main

    return main(["index", *argv])


def test_cli_build_add_info(folder, tmp_path, tiny_vl, capsys):
    from safetensors.torch import save_file

    ckpt = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_vl.model.state_dict().items()}, str(ckpt),
              metadata={"model_name": "isa-test-tiny"})
    first = tmp_path / "first"
    first.mkdir()
    shutil.copy(folder / "a.png", first / "a.png")
    out = tmp_path / "idx"
    model = ["--model", "isa-test-tiny", "--pretrained", str(ckpt), "--device", "cpu"]
    assert _cli(["build", "--images", str(first), "--out", str(out), *model, "--workers", "1"]) == 0
    assert "indexed 1 image(s) of 1" in capsys.readouterr().out

    assert _cli(["add", "--index", str(out), "--images", str(folder), "--workers", "0"]) == 2
    assert "pass its path with --pretrained" in capsys.readouterr().err
    assert _cli(["add", "--index", str(out), "--images", str(folder), *model, "--workers", "0"]) == 0
    text = capsys.readouterr().out
    assert f"added {len(GOOD) - 1} image(s)" in text and "2 already indexed" in text and "bomb.png" in text

    assert _cli(["info", "--index", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"images     {len(GOOD)}" in text and "isa-test-tiny (pretrained=tiny.safetensors" in text

    assert _cli(["build", "--images", str(tmp_path / "nope"), "--out", str(tmp_path / "x"), *model]) == 2
    assert "image folder not found" in capsys.readouterr().err


def test_cli_registers_index_commands():
    from isa_demo.bench.cli import BENCHMARKS
    from isa_demo.cli import GROUPS

    assert GROUPS["index"][1] == "isa_demo.index.cli"
    assert GROUPS["bench"][1] == "isa_demo.bench.cli" and "index" in BENCHMARKS
