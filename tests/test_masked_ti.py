"""Masked image-text pair textual inversion: nouns, CAM masking, training round trip, method, sheet."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from isa_demo.training.nouns import cam_prompt, extract_nouns, mask_caption, pick_noun


# ----------------------------------------------------------------------------- nouns
@pytest.mark.parametrize("caption,heads", [
    ("a large red circle at the top left and a small blue star in the centre on a grey background",
     ["circle", "star"]),
    ("a grey background with a small cyan cross at the bottom", ["cross"]),
    ("a photo of a large pink heart on the right, the background is black", ["heart"]),
    ("A man riding a wave on top of a surfboard.", ["man", "wave", "surfboard"]),
    ("A bunch of bananas hangs from a post in a covered area.", ["bananas", "post"]),
    ("A little boy standing on a field with a kite over his head.", ["boy", "field", "kite", "head"]),
    ("A tennis player wearing all white", ["player"]),
    ("a big clock sits on the side of a building", ["clock", "building"]),
    ("Two buses and a taxi go down a street,", ["buses", "taxi", "street"]),
    ("A dog sitting on a bed covered with clothing, blankets and other items.",
     ["dog", "bed", "clothing", "blankets"]),
    ("", []),
    ("!!! ...", []),
])
def test_extract_nouns(caption, heads):
    assert [c.head for c in extract_nouns(caption)] == heads


def test_noun_phrases_mask_and_prompt():
    cap = "a large red circle at the top left and a small blue star in the centre on a grey background"
    chunks = extract_nouns(cap)
    assert [c.phrase for c in chunks] == ["large red circle", "small blue star"]
    assert mask_caption(cap, chunks[1]) == ("a large red circle at the top left and a [MASK] in the centre "
                                            "on a grey background")
    assert mask_caption(cap, chunks[0], whole_phrase=False).startswith("a large red [MASK] at")
    assert cam_prompt(chunks[0]) == "a photo of a large red circle"
    assert cam_prompt(chunks[0], "noun") == "a photo of a circle"
    assert cam_prompt("apple") == "a photo of an apple"
    assert cam_prompt(extract_nouns("two red buses")[0]) == "a photo of red buses"
    with pytest.raises(ValueError):
        cam_prompt(chunks[0], "verb")
    rng = np.random.default_rng(0)
    assert pick_noun(cap, rng, allowed={"star"}).head == "star"
    assert pick_noun("on the left", rng) is None


def test_world_captions_yield_exactly_their_shapes():
    from isa_demo.world import caption, random_scene

    rng = np.random.default_rng(1)
    for _ in range(300):
        scene = random_scene(rng)
        got = sorted(c.head for c in extract_nouns(caption(scene, rng)))
        assert got == sorted(o["shape"] for o in scene["objects"])


# ----------------------------------------------------------------------------- Phi, CAM, masking
def test_phi_shapes(tiny_vl):
    from isa_demo.models.masked_ti import Phi

    phi = Phi.for_vl(tiny_vl)
    assert phi.config["hidden"] == 4 * tiny_vl.word_dim
    linears = [m for m in phi.net if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 3 and linears[0].in_features == tiny_vl.embed_dim
    assert phi(torch.randn(5, tiny_vl.embed_dim)).shape == (5, tiny_vl.word_dim)


def _images(world, n, size):
    return np.array(world.image_array("train", size, progress=False)[:n])


def test_cam_shape_and_range(tiny_vl, small_world):
    from isa_demo.training.cam import compute_cams, upsample_cam
    from isa_demo.world import World

    w = World(small_world)
    imgs = _images(w, 4, tiny_vl.image_size)
    cams = compute_cams(tiny_vl, imgs, ["circle", "star", "heart", "square"])
    gh, gw = tiny_vl.model.visual.grid_size
    assert cams.shape == (4, gh, gw)
    assert float(cams.min()) >= 0 and float(cams.max()) <= 1
    assert torch.isclose(cams.flatten(1).max(1).values, torch.ones(4)).all()  # min-max normalized
    up = upsample_cam(cams, 48)
    assert up.shape == (4, 48, 48) and float(up.min()) >= 0 and float(up.max()) <= 1


@pytest.mark.parametrize("mode", ["layercam", "gradcam", "gradxact"])
def test_cam_modes_and_baseline(tiny_vl_custom, small_world, mode):
    from isa_demo.training.cam import compute_cams
    from isa_demo.world import World

    imgs = _images(World(small_world), 3, tiny_vl_custom.image_size)
    chunks = [extract_nouns(c)[0] for c in ("a red star", "two small hearts", "a cross")]
    for baseline, cam_text in (("a photo", "phrase"), (None, "noun")):
        cams = compute_cams(tiny_vl_custom, imgs, chunks, mode, baseline, cam_text)
        assert cams.shape[0] == 3 and torch.isfinite(cams).all()
        assert float(cams.min()) >= 0 and float(cams.max()) <= 1
    with pytest.raises(ValueError):
        compute_cams(tiny_vl_custom, imgs, ["star"] * 3, "attention")


def test_cam_localization_metrics(tiny_vl, small_world):
    from isa_demo.bench.masking import cam_localization
    from isa_demo.world import World

    out = cam_localization(tiny_vl, World(small_world), "train", n=12, tau=0.3)
    assert out["images"] == 12
    for k in ("pointing", "pointing_any", "masked_fraction", "cell_coverage", "outside_masked"):
        assert 0.0 <= out[k] <= 1.0
    assert out["pointing_any"] >= out["pointing"]


def test_higher_tau_masks_fewer_pixels(tiny_vl, small_world):
    from isa_demo.training.cam import compute_cams, mask_images, upsample_cam
    from isa_demo.world import World

    imgs = _images(World(small_world), 6, tiny_vl.image_size)
    up = upsample_cam(compute_cams(tiny_vl, imgs, ["star"] * 6), imgs.shape[1:3])
    fractions = []
    for tau in (0.0, 0.2, 0.3, 0.4, 0.99):
        masked, masks = mask_images(imgs, up, tau, "grey")
        assert masked.shape == imgs.shape and masked.dtype == np.uint8
        assert (masked[masks] == 128).all() and (masked[~masks] == imgs[~masks]).all()
        fractions.append(masks.mean())
    assert all(a >= b for a, b in zip(fractions, fractions[1:]))
    assert fractions[0] > fractions[-1]
    # the median fill is the background colour of a world-like image, whatever the mask covers
    one = np.zeros((1, 4, 4, 3), np.uint8)
    one[0, :1] = 200
    cam = np.zeros((1, 4, 4))
    cam[0, :3] = 1.0
    masked, _ = mask_images(one, cam, 0.5, "median")
    assert (masked == 0).all()
    masked, _ = mask_images(one, cam, 0.5, "mean")
    assert (masked[0, :3] == 50).all()
    with pytest.raises(ValueError):
        mask_images(one, cam, 0.5, "blue")


def test_query_texts():
    from isa_demo.training.masked_ti import query_text

    chunk = extract_nouns("a small green star at the top left")[0]
    obj = {"shape": "star", "colour": "green", "size": "small", "cell": 0}
    assert query_text(chunk, "scene", obj) == "add a small green star at the top left"
    assert query_text(chunk, "phrase") == "add a small green star"
    assert query_text(chunk, "noun") == "add a star"
    assert query_text(extract_nouns("an old elephant")[0], "phrase") == "add an old elephant"


# ----------------------------------------------------------------------------- training round trip
@pytest.fixture(scope="module")
def trained(tiny_vl, small_world, tmp_path_factory):
    from isa_demo.training.masked_ti import train_masked_ti

    d = tmp_path_factory.mktemp("mti")
    path = train_masked_ti(str(small_world), tau=0.3, steps=3, images=48, batch_size=16, vl=tiny_vl,
                           out=d / "masked-ti.safetensors", state_path=d / "m.state.pt", progress=False)
    return path, d


def test_train_export_metadata(trained, tiny_vl):
    from isa_demo.common import read_metadata

    path, d = trained
    meta = read_metadata(path)
    assert meta["method"] == "masked-ti" and json.loads(meta["tau"]) == 0.3 and json.loads(meta["w_qt"]) == 1.0
    assert json.loads(meta["steps"]) == 3 and json.loads(meta["world_seed"]) == 0 and meta["date"]
    assert json.loads(meta["vl"]) == json.loads(json.dumps(tiny_vl.identity(), sort_keys=True))
    assert 0 < json.loads(meta["masked_fraction_mean"]) < 1
    assert (d / "m.state.pt").exists()


def test_resume_is_a_no_op_when_done(trained, tiny_vl, small_world):
    from isa_demo.training.masked_ti import train_masked_ti

    path, d = trained
    train_masked_ti(str(small_world), tau=0.3, steps=3, images=48, batch_size=16, vl=tiny_vl,
                    out=d / "again.safetensors", state_path=d / "m.state.pt", progress=False)
    from safetensors.torch import load_file

    a, b = load_file(str(path)), load_file(str(d / "again.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(RuntimeError, match="another configuration"):
        train_masked_ti(str(small_world), tau=0.2, steps=3, images=48, batch_size=16, vl=tiny_vl,
                        out=d / "x.safetensors", state_path=d / "m.state.pt", progress=False)


def test_reload_and_method_interface(trained, tiny_vl, small_world):
    from isa_demo.methods import create_method
    from isa_demo.world import World

    path, _ = trained
    m = create_method("masked-ti", tiny_vl, checkpoint=str(path))
    assert m.name == "masked-ti"
    recs = World(small_world).records("test")[:3]
    imgs = [Image.open(World(small_world).image_path(r)).convert("RGB") for r in recs]
    q = m.encode_queries(imgs, ["make the circle red", "add a star", "remove the star"])
    assert q.shape == (3, tiny_vl.embed_dim)
    assert torch.allclose(q.norm(dim=-1), torch.ones(3), atol=1e-5)
    # different modifiers / images give different queries
    q2 = m.encode_queries(imgs[:1] * 2, ["make the circle red", "add a star"])
    assert not torch.allclose(q2[0], q2[1])
    ex = m.explain(imgs[0], "make it red")
    assert len(ex["pseudo_words"]) == 1 and len(ex["pseudo_words"][0]) == 3
    assert ex["prompt"] == "a photo of * that make it red"
    assert m.identity()["tau"] == 0.3


def test_refuses_other_vl(trained, tiny_vl_custom):
    from isa_demo.errors import CheckpointError
    from isa_demo.methods.masked_ti import MaskedTI

    path, _ = trained
    with pytest.raises(CheckpointError, match="isa-test-tiny-custom") as e:
        MaskedTI(tiny_vl_custom, checkpoint=path)
    assert "expected" in str(e.value) and "found" in str(e.value)
    with pytest.raises(CheckpointError, match="not found"):
        MaskedTI(tiny_vl_custom, checkpoint=path.parent / "missing.safetensors")


def test_single_token_training(tiny_vl, small_world, tmp_path):
    from isa_demo.common import read_metadata
    from isa_demo.methods import create_method
    from isa_demo.training.masked_ti import default_name, train_masked_ti

    assert default_name(0.3, 0.0, 1.0, "scene") == "single-token"
    assert default_name(0.2, 1.0, 1.0, "scene") == "masked-ti-tau0.2"
    path = train_masked_ti(str(small_world), w_qt=0.0, steps=2, images=32, batch_size=8, vl=tiny_vl,
                           out=tmp_path / "st.safetensors", state_path=tmp_path / "st.pt", progress=False)
    assert read_metadata(path)["method"] == "single-token"
    m = create_method("single-token", tiny_vl, checkpoint=str(path))
    assert m.name == "single-token"
    q = m.encode_queries([np.zeros((40, 40, 3), np.uint8)], ["add a star"])
    assert q.shape == (1, tiny_vl.embed_dim)


def test_shipped_variants_and_variant_names(trained, tiny_vl, tmp_path, monkeypatch):
    import shutil

    from isa_demo.methods import masked_ti, shipped_variants
    from isa_demo.models import masked_ti as checkpoints

    for v in shipped_variants():
        assert {"method", "backbone", "checkpoint"} <= set(v)
    path, _ = trained
    ckdir = tmp_path / "assets" / "checkpoints" / "masked-ti"
    ckdir.mkdir(parents=True)
    shutil.copy(path, ckdir / "masked-ti.safetensors")
    shutil.copy(path, ckdir / "masked-ti-tau0.25.safetensors")
    (ckdir / "broken.safetensors").write_text("not a checkpoint")
    monkeypatch.setattr(checkpoints, "ROOT", tmp_path)
    monkeypatch.setattr(checkpoints, "checkpoint_dir", lambda kind, vl_name=None: ckdir)
    variants = checkpoints.shipped_variants()
    assert variants == [{"method": "masked-ti", "backbone": None, "checkpoint": None},
                        {"method": "masked-ti", "backbone": None,
                         "checkpoint": "assets/checkpoints/masked-ti/masked-ti-tau0.25.safetensors"}]
    assert masked_ti.MaskedTI(tiny_vl).name == "masked-ti"  # the default checkpoint
    assert masked_ti.MaskedTI(tiny_vl, checkpoint=variants[1]["checkpoint"]).name == "masked-ti-tau0.25"


# ----------------------------------------------------------------------------- visual check
def test_masking_sheet_command(small_world, tmp_path):
    from isa_demo.cli import main

    img_dir = tmp_path / "photos"
    img_dir.mkdir()
    Image.new("RGB", (64, 48), (10, 200, 30)).save(img_dir / "a.jpg")
    Image.new("RGB", (50, 70), (200, 20, 30)).save(img_dir / "b.png")
    caps = {"images": [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.png"},
                       {"id": 3, "file_name": "missing.jpg"}],
            "annotations": [{"image_id": 1, "id": 1, "caption": "A dog sitting on a green lawn."},
                            {"image_id": 2, "id": 2, "caption": "A red bus on a street"},
                            {"image_id": 3, "id": 3, "caption": "A cat."}]}
    (tmp_path / "caps.json").write_text(json.dumps(caps))
    out = tmp_path / "sheet.png"
    rc = main(["masking-sheet", "--world", str(small_world), "--n", "3", "--vl-model", "isa-test-tiny",
               "--vl-pretrained", "none", "--device", "cpu", "--coco-captions", str(tmp_path / "caps.json"),
               "--coco-images", str(img_dir), "--out", str(out)])
    assert rc == 0 and out.exists()
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[1] > 3 * 160
