"""Training on real data (`train isa|masked-ti --data`): a generated folder, CSV and WebDataset of
images with captions, bad input skipped and listed, the feature cache reused, the trained models
evaluated through the Method interface, a folder indexed with the same VL model, and one compose
served by the app's service."""
import json

import pytest
import torch

from helpers import TINY_BACKBONE, photo, write_shards
from isa_demo.cli import main
from isa_demo.training.data import DataError, DataSpec, open_source
from isa_demo.training.isa import train_isa
from isa_demo.training.masked_ti import train_masked_ti
from isa_demo.training.nouns import caption_problem
from isa_demo.training.vl import export_safetensors


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """A folder of 24 images (two sub-folders), a CSV over them with bad rows, and three WebDataset
    shards, the last cut short."""
    root = tmp_path_factory.mktemp("photos")
    rows = []
    for i in range(24):
        data, caption = photo(i)
        path = root / "imgs" / ("a" if i % 2 else "b") / f"{i:03d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        rows.append((str(path.relative_to(root)), caption))
    (root / "imgs" / "broken.jpg").write_bytes(b"not a jpeg at all")
    (root / "imgs" / "notes.txt").write_text("not an image")
    bad = [("imgs/missing.jpg", "a red circle"), ("imgs/broken.jpg", "a blue square"), ("imgs/a/001.jpg", "")]
    rows[2] = (rows[2][0], "Ein roter Kreis liegt auf dem Tisch")  # another language: its only caption
    rows[4] = (rows[4][0], "")  # empty
    import pandas as pd

    pd.DataFrame(rows + bad, columns=["filepath", "title"]).to_csv(root / "train.csv", index=False)
    coco = {"images": [{"id": i, "file_name": name.removeprefix("imgs/")} for i, (name, _) in enumerate(rows)]
                       + [{"id": 99, "file_name": "gone.jpg"}],
            "annotations": [{"id": 1000 + i, "image_id": i, "caption": cap} for i, (_, cap) in enumerate(rows)]
                           + [{"id": 2000, "image_id": 99, "caption": "a dog"}]}
    (root / "captions.json").write_text(json.dumps(coco))
    shards = write_shards(root / "shards", 3, 8)
    last = shards / "00002.tar"
    last.write_bytes(last.read_bytes()[:int(last.stat().st_size * 0.55)])  # cut short mid-way
    return root


@pytest.fixture(scope="module")
def vl_ckpt(tmp_path_factory, tiny_vl):
    path = tmp_path_factory.mktemp("vl") / "tiny.safetensors"
    export_safetensors(tiny_vl.model, path, "isa-test-tiny", {})
    return str(path)


@pytest.fixture(scope="module")
def vl(vl_ckpt):
    from isa_demo.vl import load_vl

    return load_vl("isa-test-tiny", vl_ckpt, device="cpu")


def test_sources_list_and_skip(photos):
    folder = open_source(str(photos / "imgs"))
    assert folder.kind == "folder" and folder.files == 25  # broken.jpg is listed, decoded later
    assert any("notes.txt" in str(s["path"]) for s in folder.skipped)
    table = open_source(str(photos / "train.csv"))
    assert table.kind == "table" and table.files == 25
    assert [s["reason"] for s in table.skipped] == ["file not found (row 26 of %s)" % (photos / "train.csv")]
    one = next(it for part in table.parts for it in part if it.key.endswith("001.jpg"))
    assert set(one.captions) == {"a blue circle on a grey table", ""}  # two rows, one file
    shards = open_source(str(photos / "shards" / "{00000..00003}.tar"))
    assert shards.streaming and shards.files == 3 and shards.skipped[0]["reason"] == "shard not found"
    assert open_source(str(photos / "imgs"), limit=5).files == 5
    assert open_source(str(photos / "imgs")).sha256 != open_source(str(photos / "imgs"), limit=5).sha256
    empty = photos / "empty"
    (empty / "sub").mkdir(parents=True, exist_ok=True)
    (empty / "sub" / "readme.md").write_text("x")
    with pytest.raises(DataError, match="no usable image in .*readme.md: not an image file type"):
        open_source(str(empty))
    with pytest.raises(DataError, match="no image column 'path'"):
        open_source(str(photos / "train.csv"), csv_img_key="path")
    with pytest.raises(DataError, match="--coco-images DIR"):
        open_source(str(photos / "captions.json"))
    coco = open_source(str(photos / "captions.json"), images=str(photos / "imgs"))
    assert coco.kind == "coco" and coco.files == 24 and "gone.jpg" in coco.skipped[0]["path"]


@pytest.mark.parametrize("caption,ok", [("a dog on a sofa", True), ("", False), ("Ein Hund läuft auf der Wiese", False),
                                        ("一只猫坐在沙发上", False), ("dog", True), ("!!!", False)])
def test_caption_language(caption, ok):
    assert (caption_problem(caption) is None) == ok


def test_isa_on_folder_csv_and_shards(photos, vl, vl_ckpt, tmp_path):
    """Train ISA for a few steps on each kind of source; bad files skipped and listed; the feature
    cache is filled once and reused; the encoder answers through the Method interface."""
    from isa_demo.methods import create_method
    from isa_demo.training import featcache

    cache = tmp_path / "cache"
    kw = dict(steps=2, batch_size=6, num_tokens=2, image_size=32, device="cpu", vl_name="isa-test-tiny",
              vl_pretrained=vl_ckpt, save_every=1)
    outs = {}
    for name, src in [("folder", photos / "imgs"), ("csv", photos / "train.csv"),
                      ("wds", photos / "shards" / "{00000..00002}.tar")]:
        out = tmp_path / f"{name}.safetensors"
        outs[name] = train_isa("unused", TINY_BACKBONE, out=str(out), state_path=str(tmp_path / f"{name}.state"),
                               data=DataSpec(str(src), cache=str(cache)), **kw)
        meta = create_method("isa", vl, checkpoint=str(out)).encoder.meta
        recorded = json.loads(meta["data"])
        assert recorded["source"] == str(src) and len(recorded["sha256"]) == 64
        skipped = json.loads(out.with_suffix(".skipped.json").read_text())
        reasons = " | ".join(f"{s['path']}: {s['reason']}" for s in skipped)
        if name == "folder":
            assert int(meta["train_images"]) == 24 and "broken.jpg: not a readable image" in reasons
        elif name == "csv":
            assert int(meta["train_images"]) == 24 and "missing.jpg: file not found" in reasons
        else:
            assert 16 <= int(meta["train_images"]) < 24 and "shard cut short" in reasons
    parts = list((cache / featcache.vl_key(vl) / "global").glob("*.pt"))
    assert len(parts) == 2 + 3  # folder, table (other captions: another part), three shards
    # a rerun: every feature comes from the cache
    again = train_isa("unused", TINY_BACKBONE, out=str(tmp_path / "again.safetensors"),
                      state_path=str(tmp_path / "again.state"), data=DataSpec(str(photos / "imgs"), cache=str(cache)),
                      **kw)
    from isa_demo.common import read_metadata

    assert int(read_metadata(again)["encoded_images"]) == 0
    method = create_method("isa", vl, checkpoint=str(outs["wds"]))
    q = method.encode_queries([photos / "imgs" / "a" / "001.jpg"] * 2, ["make it blue", "add a square"])
    assert q.shape == (2, vl.embed_dim) and not torch.allclose(q[0], q[1])
    # resuming with another data source is refused, naming both
    with pytest.raises(DataError, match=r"holds a run on folder .*imgs.*but this run reads table .*train.csv"):
        train_isa("unused", TINY_BACKBONE, out=str(tmp_path / "x.safetensors"),
                  state_path=str(tmp_path / "folder.state"), data=DataSpec(str(photos / "train.csv"), cache=str(cache)),
                  **{**kw, "steps": 3})


def test_masked_ti_on_captions_index_and_app(photos, vl, vl_ckpt, tmp_path, monkeypatch):
    """The masked-pair method on the CSV's and the shards' captions (bad captions skipped and
    listed), evaluated through the Method interface; a folder indexed with the same VL model, and
    one compose served by the app's service with the trained models found for that VL model."""
    from isa_demo.app.service import load_service
    from isa_demo.index import GalleryIndex
    from isa_demo.methods import create_method, trained_variants
    from isa_demo.training import state

    runs = tmp_path / "runs"
    monkeypatch.setattr(state, "RUNS_DIR", runs)
    monkeypatch.setattr("isa_demo.settings.RUNS_DIR", runs)
    for src in (photos / "train.csv", photos / "shards" / "{00000..00002}.tar"):
        out = train_masked_ti("unused", steps=2, batch_size=6, vl=vl, progress=False, save_every=1,
                              data=DataSpec(str(src), cache=str(tmp_path / "cache")),
                              out=str(tmp_path / "m.safetensors"), state_path=str(tmp_path / f"{src.stem}.state"))
        m = create_method("masked-ti", vl, checkpoint=str(out))
        assert m.identity()["query_text"] == "phrase"
        q = m.encode_queries([photos / "imgs" / "a" / "001.jpg"], ["add a square"])
        assert q.shape == (1, vl.embed_dim)
    skipped = json.loads((tmp_path / "m.skipped.json").read_text())  # the shards' run
    assert any("shard cut short" in s["reason"] for s in skipped)
    # the CLI: the CSV's captions, the default output under runs/, bad captions listed
    rc = main(["train", "masked-ti", "--data", str(photos / "train.csv"), "--cache", str(tmp_path / "cache"),
               "--vl-model", "isa-test-tiny", "--vl-pretrained", vl_ckpt, "--steps", "2", "--batch-size", "6",
               "--device", "cpu", "--workers", "0"])
    assert rc == 0
    out = runs / "masked-ti" / "masked-ti-phrase--isa-test-tiny.safetensors"
    reasons = " | ".join(s["reason"] for s in json.loads(out.with_suffix(".skipped.json").read_text()))
    assert "empty caption" in reasons and "caption not in English" in reasons and "file not found" in reasons
    rc = main(["train", "isa", "--backbone", TINY_BACKBONE, "--data", str(photos / "imgs"), "--cache",
               str(tmp_path / "cache"), "--vl-model", "isa-test-tiny", "--vl-pretrained", vl_ckpt, "--steps", "2",
               "--batch-size", "6", "-L", "2", "--image-size", "32", "--device", "cpu", "--workers", "1"])
    assert rc == 0
    assert {v["method"] for v in trained_variants("isa-test-tiny")} == {"isa", "masked-ti"}
    GalleryIndex.build(photos / "imgs", tmp_path / "index", vl)
    s = load_service("isa-test-tiny", vl_ckpt, str(tmp_path / "index"), world_dir=None, results_dir=tmp_path)
    choices = s.catalogue.method_choices()
    assert "isa" in choices and "masked-ti [masked-ti-phrase--isa-test-tiny]" in choices
    backbone = s.catalogue.backbone_choices("isa")[0]  # the backbone and the checkpoint's name
    assert backbone == f"{TINY_BACKBONE} [{TINY_BACKBONE}_L2_none_2--isa-test-tiny]"
    r = s.compose(str(photos / "imgs" / "a" / "001.jpg"), "make the circle blue", "isa", backbone, k=3)
    assert len(r.ids) == 3 and all(h.path.startswith(str(photos / "imgs")) for h in r.hits)


def test_offline_tag_says_what_and_how(tmp_path, monkeypatch, capsys):
    """A pretrained tag whose weights are not cached, with the hub out of reach: one message that
    names the tag, where it looked and how to pass a file, never an open_clip traceback."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    rc = main(["index", "build", "--images", str(tmp_path), "--out", str(tmp_path / "i"), "--vl-model", "ViT-B-32",
               "--vl-pretrained", "laion2b_s34b_b79k", "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert "'laion2b_s34b_b79k' are not in the local cache and HF_HUB_OFFLINE is set" in err
    assert "laion/CLIP-ViT-B-32-laion2B-s34B-b79K" in err and str(tmp_path / "hub") in err
    assert "--vl-pretrained /path/to/" in err
    assert main(["train", "isa", "--backbone", TINY_BACKBONE, "--data", str(tmp_path), "--vl-model", "ViT-B-32",
                 "--vl-pretrained", "laion2b_s34b_b79k", "--device", "cpu"]) == 2
    assert "not in the local cache" in capsys.readouterr().err
    assert main(["train", "isa", "--backbone", TINY_BACKBONE, "--vl-model", "ViT-B-32", "--vl-pretrained",
                 "laion2b_nope"]) == 2
    assert "known tags: openai" in capsys.readouterr().err
