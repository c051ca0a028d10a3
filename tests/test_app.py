"""The demo's service layer (pure python) and its HTTP API, on the tiny random model + small world."""
import io
import os
import re
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from helpers import TINY_BACKBONE
from isa_demo.app.catalogue import build_variants
from isa_demo.app.compose import MAX_K
from isa_demo.app.inputs import InputError
from isa_demo.app.service import DemoService


@pytest.fixture
def upload(tmp_path):
    """Write a PIL image (or raw bytes) the way a browser upload arrives: a file path."""
    def write(img, name="up.png", **save):
        path = tmp_path / name
        if isinstance(img, bytes):
            path.write_bytes(img)
        else:
            img.save(path, **save)
        return str(path)
    return write


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width x height`` (a decompression bomb, cheaply)."""
    buf = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = 8 + 8  # signature, then length + b"IHDR"
    data[ihdr:ihdr + 8] = struct.pack(">II", width, height)
    data[ihdr + 13:ihdr + 17] = struct.pack(">I", zlib.crc32(bytes(data[12:ihdr + 13])))
    return bytes(data)


@pytest.fixture(scope="session")
def giant_png(tmp_path_factory):
    """A real, valid 20000 x 20000 greyscale PNG (~0.5 MB on disk, 400 M pixels), written row by
    row so that making it costs no memory."""
    path = tmp_path_factory.mktemp("giant") / "giant.png"
    w = h = 20000

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    comp = zlib.compressobj(6)
    row = b"\x00" + b"\x80" * w
    idat = b"".join(comp.compress(row) for _ in range(h)) + comp.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return str(path)


# ------------------------------------------------------------------------------------ choices
def test_variants_and_choices(service):
    assert service.catalogue.method_choices() == ["image-only", "text-only", "sum", "isa", "masked-ti"]
    assert service.catalogue.all_backbones() == [TINY_BACKBONE]
    assert service.catalogue.default_method() == "isa" and service.catalogue.default_backbone() == TINY_BACKBONE
    with pytest.raises(InputError, match="unknown method 'nope'; choose one of image-only"):
        service.catalogue.resolve("nope")
    with pytest.raises(InputError, match="no shipped isa model with backbone 'resnet18'"):
        service.catalogue.resolve("isa", "resnet18")
    assert service.catalogue.resolve("sum", "ignored").method == "sum"


def test_build_variants_labels():
    vs = build_variants([
        {"method": "isa", "backbone": "resnet18", "checkpoint": "/x/resnet18.safetensors"},
        {"method": "isa-symmetric", "backbone": None, "checkpoint": "/x/symmetric.safetensors"},
        {"method": "isa", "backbone": "resnet18", "checkpoint": "/x/resnet18-L1.safetensors"},
        {"method": "masked-ti", "backbone": None, "checkpoint": "/x/masked-ti.safetensors"},
        {"method": "masked-ti", "backbone": None, "checkpoint": "/x/masked-ti-tau0.2.safetensors"},
        {"method": "single-token", "backbone": None, "checkpoint": "/x/single-token.safetensors"},
    ])
    labels = [(v.label, v.backbone_label) for v in vs]
    assert labels[:3] == [("image-only", None), ("text-only", None), ("sum", None)]  # baselines always there
    assert ("isa", "resnet18") in labels and ("isa", "symmetric") in labels
    assert ("isa", "resnet18 [resnet18-L1]") in labels
    assert ("masked-ti", None) in labels and ("masked-ti [masked-ti-tau0.2]", None) in labels
    assert ("single-token", None) in labels
    # the shape shipped_variants() gives: no checkpoint path, the symmetric variant as a backbone
    vs = build_variants([{"method": "isa", "backbone": "efficientnet_b0", "checkpoint": None},
                         {"method": "isa-symmetric", "backbone": "symmetric", "checkpoint": None}])
    isa = [(v.method, v.backbone_label, v.create_kwargs()) for v in vs if v.label == "isa"]
    assert isa == [("isa", "efficientnet_b0", {"backbone": "efficientnet_b0"}),
                   ("isa-symmetric", "symmetric", {"backbone": "symmetric"})]


def test_incompatible_checkpoint_is_not_offered(tiny_vl, service):
    from isa_demo.vl import load_vl

    other = load_vl("isa-test-tiny-custom", pretrained=None, device="cpu")
    raw = [{"method": v.method, "backbone": v.backbone, "checkpoint": v.checkpoint}
           for v in service.catalogue.variants]
    s = DemoService(other, service.gallery, None, variants=raw)
    assert "isa" not in s.catalogue.method_choices() and "masked-ti" not in s.catalogue.method_choices()
    with pytest.raises(InputError, match="not available with this VL model: trained for VL model isa-test-tiny"):
        s.catalogue.resolve("isa", TINY_BACKBONE)


# ------------------------------------------------------------------------------------ compose
@pytest.mark.parametrize("method", ["image-only", "text-only", "sum", "isa", "masked-ti"])
def test_compose_returns_ids_scores_timings(service, example, method):
    r = service.compose(example["image"], example["modifier"], method, TINY_BACKBONE, k=7)
    assert len(r.ids) == len(r.scores) == 7 == len(set(r.ids))
    assert all(a >= b - 1e-6 for a, b in zip(r.scores, r.scores[1:]))
    assert all(0 <= i < len(service.gallery) for i in r.ids)
    t = r.timings_ms
    assert {"search_ms", "total_ms"} <= set(t) and all(v >= 0 for v in t.values())
    stages = {"isa": {"query_image_encoder_ms", "text_encoder_ms"}, "masked-ti": {"query_image_encoder_ms",
              "text_encoder_ms"}, "sum": {"query_encoders_ms"}, "image-only": {"query_image_encoder_ms"},
              "text-only": {"text_encoder_ms"}}[method]
    assert stages <= set(t)
    assert t["total_ms"] >= sum(v for k, v in t.items() if k not in ("total_ms", "explain_ms")) - 1e-3
    js = r.to_json()
    assert js["ids"] == r.ids and js["names"][0].startswith("test-") and "timings_ms" in js
    if method == "isa":
        ex = r.explanation
        assert len(ex["pseudo_words"]) == 3 and ex["attention"].shape[0] == 3 and "S" in ex["prompt"]


@pytest.mark.parametrize("method", ["isa", "masked-ti"])
def test_staged_timing_path_matches_encode_queries(service, example, method):
    """The app times the two stages itself; the features must equal the method's own."""
    v = service.catalogue.resolve(method, TINY_BACKBONE)
    m = service.catalogue.get_method(v)
    q = m.encode_queries([example["image"]], ["make the circle red"])
    scores, ids = service.gallery.search(q, 5)
    r = service.compose(example["image"], "make the circle red", method, TINY_BACKBONE, k=5, exclude_reference=False)
    assert r.ids == ids[0].tolist()
    np.testing.assert_allclose(r.scores, scores[0], atol=1e-5)


@pytest.mark.parametrize("method", ["isa", "masked-ti"])
def test_explained_compose_runs_the_query_image_encoder_once(service, example, monkeypatch, method):
    """The explanation (pseudo words, attention maps) is read from the query's own reference
    encoding: one explained query, one run of the query image encoder."""
    m = service.catalogue.get_method(service.catalogue.resolve(method, TINY_BACKBONE))
    network = m.encoder if method == "isa" else m.phi  # backbone + token learner / Phi
    calls = {"encode_reference": 0, "network": 0}

    def counted(name, fn):
        def run(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return run

    monkeypatch.setattr(m, "encode_reference", counted("encode_reference", m.encode_reference))
    monkeypatch.setattr(network, "forward", counted("network", network.forward))
    r = service.compose(example["image"], "make the circle red", method, TINY_BACKBONE, k=3)
    assert r.explanation["pseudo_words"] and "explain_ms" in r.timings_ms
    assert calls == {"encode_reference": 1, "network": 1}
    if method == "isa":
        assert r.explanation["attention"].shape[0] == m.num_words


def test_gallery_reference_is_left_out(service, example):
    ref_id = next(i for i, rec in enumerate(service.gallery.records) if rec["path"].endswith(
        example["image"].split("/")[-1]))
    r = service.compose(example["image"], example["modifier"], "image-only", k=5)
    assert ref_id not in r.ids and r.excluded_ids == [ref_id]
    assert any("left out" in n for n in r.notices)
    kept = service.compose(example["image"], example["modifier"], "image-only", k=5, exclude_reference=False)
    assert ref_id in kept.ids


def test_methods_are_cached(service, example):
    v = service.catalogue.resolve("isa", TINY_BACKBONE)
    assert service.catalogue.get_method(v) is service.catalogue.get_method(v)


def test_compare(service, example):
    a, b, summary = service.compare(example["image"], example["modifier"], ("isa", TINY_BACKBONE), ("sum", None), 5)
    assert a.method == "isa" and b.method == "sum" and "of the top 5 are shared" in summary


# ------------------------------------------------------------------------------------ bad inputs
def test_no_image_and_empty_modifier(service, example):
    with pytest.raises(InputError, match="no reference image: upload or paste one"):
        service.compose(None, "make the circle red", "isa", TINY_BACKBONE)
    for text in ["", "   \n\t ", None, "\x00\x01"]:
        with pytest.raises(InputError, match="the modifier text is empty"):
            service.compose(example["image"], text, "sum")
    # methods that ignore an input say so instead of failing
    r = service.compose(None, "make the circle red", "text-only")
    assert r.ids
    r = service.compose(example["image"], "", "image-only")
    assert r.ids


@pytest.mark.parametrize("k", [0, MAX_K + 1, "ten"])
def test_bad_k(service, example, k):
    with pytest.raises(InputError, match="top-K"):
        service.compose(example["image"], "x", "sum", k=k)


BAD_K = {0: "0 is too small", -1: "-1 is too small", 10**9: "1000000000 is too large",
         "abc": "“abc” is not a number", 7.5: "7.5 is not a whole number", "": "top-K is empty", None: "top-K is empty"}


@pytest.mark.parametrize("k", list(BAD_K))
def test_bad_k_says_what_and_how(service, example, k):
    """Each bad Top-K gets its own message, and the same one from check_k wherever it is used."""
    from isa_demo.app.compose import check_k

    with pytest.raises(InputError, match="a whole number from 1 to 50") as e:
        service.compose(example["image"], "x", "sum", k=k)
    assert BAD_K[k] in str(e.value)
    with pytest.raises(InputError, match="from 1 to 10"):
        check_k(k, maximum=10)


def test_good_k_is_used_as_given(service, example):
    from isa_demo.app.compose import check_k

    assert [check_k(v) for v in (7, 7.0, "7", " 7 ", "7.0", 50, 1)] == [7, 7, 7, 7, 7, 50, 1]
    assert len(service.compose(example["image"], "x", "sum", k="7").ids) == 7


def test_unreadable_image_message_names_the_file_not_the_server(service, upload, tmp_path):
    """What the user reads: the file's own name, what is wrong and what to do; never the folder the
    server keeps uploads in, nor a Python exception class."""
    for name, data in {"zero.png": b"", "[click me](http:x).png": b"GIF89a not really"}.items():
        with pytest.raises(InputError) as e:
            service.compose(upload(data, name), "make the circle red", "sum")
        msg = str(e.value)
        assert name in msg and "upload a PNG, JPEG, GIF or WebP image" in msg
        assert str(tmp_path) not in msg and "/" not in msg.replace(name, "")
        assert not re.search(r"\b[A-Z]\w*(Error|Exception)\b", msg), msg


def test_messages_never_show_server_paths(service, tmp_path):
    with pytest.raises(InputError) as e:
        service.inspector.failure_table("isa", TINY_BACKBONE)
    assert "/" not in str(e.value).split("`")[0] and str(service.inspector.results_dir) not in str(e.value)
    empty = DemoService(service.vl, service.gallery, None, results_dir=tmp_path, variants=[])
    _, _, note = empty.inspector.efficiency(TINY_BACKBONE)
    assert str(tmp_path) not in note and "bench accuracy" in note
    from isa_demo.app.catalogue import incompatibility
    from isa_demo.methods import Variant

    why = incompatibility(Variant("isa", "resnet18", str(tmp_path / "gone" / "resnet18.safetensors")), service.vl)
    assert why == "its checkpoint (resnet18.safetensors) is missing"


def test_literal_star_stays_a_star_in_the_shown_prompt(service, example):
    r = service.compose(example["image"], "make it **bold** * red", "isa", TINY_BACKBONE, k=3)
    assert r.explanation["prompt"] == "a photo of S that make it **bold** * red"
    m = service.catalogue.get_method(service.catalogue.resolve("masked-ti"))
    assert m.shown_prompt("a * b") == m.prompt.replace("*", m.word_symbol).format(modifier="a * b")


def test_shown_prompt_is_shortened_and_says_so():
    from isa_demo.app.viz import PROMPT_SHOWN, pseudo_words_markdown

    prompt = "a photo of S that " + "make the circle red and " * 40
    md = pseudo_words_markdown([[("red", 0.5)]], prompt)
    shown = md.split("`")[1]
    assert len(shown) == PROMPT_SHOWN and shown.endswith("…") and "shortened here" in md
    assert f"{len(prompt):,} characters" in md
    assert "shortened" not in pseudo_words_markdown([[("red", 0.5)]], "a photo of S that x")


def test_user_text_is_never_markdown():
    from isa_demo.app.viz import md_escape, notice_markdown, notices_markdown

    evil = "[click me](http://x).png <b>x</b> **b** `c` $$m$$ a|b www.x.org"
    out = md_escape(evil)
    assert not re.search(r"(?<!\\)[][()<>*`$|:.]", out), out  # every markup character is backslash-escaped
    assert re.sub(r"\\(.)", r"\1", out) == evil  # and nothing else changed
    assert md_escape("line\nbreak") == "line break"
    assert "[" not in notice_markdown(evil).replace("\\[", "") and "](" not in notices_markdown([evil])


def test_methods_without_attention_say_so(service, example):
    from isa_demo.app.ui import _explain_outputs

    r = service.compose(example["image"], "make the circle red", "masked-ti", k=3)
    words, overlays, note = _explain_outputs(r, "masked-ti")
    assert overlays == [] and "masked\\-ti has no attention maps" in note and "nearest vocabulary" in words
    r = service.compose(example["image"], "make the circle red", "sum", k=3)
    words, overlays, note = _explain_outputs(r, "sum")
    assert overlays == [] and "no attention maps" in note and "no pseudo words" in words
    r = service.compose(example["image"], "make the circle red", "isa", TINY_BACKBONE, k=3)
    words, overlays, note = _explain_outputs(r, "isa")
    assert len(overlays) == 3 and note == ""


def test_animated_reference_is_shown_as_its_first_frame(service, example, upload):
    from isa_demo.app.inputs import first_frame

    base = Image.open(example["image"]).convert("RGB")
    frames = [base, base.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    path = upload(frames[0], "a.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    still, n = first_frame(path)
    assert n == 2 and still.mode == "RGB"
    from isa_demo.common import load_image

    assert np.array_equal(np.asarray(still), np.asarray(load_image(path)))  # what the search uses
    assert first_frame(example["image"]) == (None, 1) and first_frame(upload(b"nope", "x.gif")) == (None, 1)


def test_cross_ranks(service, example):
    a, b, _ = service.compare(example["image"], example["modifier"], ("isa", TINY_BACKBONE), ("sum", None), 5)
    ranks = service.cross_ranks(a, b)
    assert len(ranks["a_in_b"]) == len(a.ids) == 5 and len(ranks["b_in_a"]) == 5
    assert ranks["depth"] == min(len(service.gallery), 1000)
    for i, rid in enumerate(a.ids):
        if rid in b.ids:
            assert ranks["a_in_b"][i] == b.ids.index(rid) + 1
    deep = service.compose(example["image"], example["modifier"], "sum", k=50)
    for i, rid in enumerate(a.ids):  # beyond B's top-5: where B's own deeper search puts it
        if rid in deep.ids:
            assert ranks["a_in_b"][i] == deep.ids.index(rid) + 1


def test_rank_pairs_and_figure(service):
    from isa_demo.bench.plots import rank_change_figure

    pairs = service.inspector.rank_pairs(("sum", None), ("image-only", None), "all")
    one, _ = service.inspector.failure_table("sum", None, "all")
    assert list(pairs.columns) == ["query_id", "mod_type", "modifier", "rank_1", "rank_2"] and len(pairs) == len(one)
    colour = service.inspector.rank_pairs(("sum", None), ("image-only", None), "colour")
    assert 0 < len(colour) < len(pairs) and set(colour["mod_type"]) == {"colour"}
    fig = rank_change_figure(pairs, "sum", "image-only")
    ids = [c[0] for t in fig.data if t.customdata is not None for c in t.customdata]
    assert sorted(ids, key=int) == sorted(map(str, pairs["query_id"]), key=int)  # every query, clickable by id
    assert fig.layout.xaxis.type == "log" and "sum" in fig.layout.xaxis.title.text
    assert all("text" not in (t.mode or "") for t in fig.data)


def test_corrupt_truncated_and_non_images(service, example, upload):
    good = open(example["image"], "rb").read()
    cases = {
        "truncated.png": good[: len(good) // 3],
        "garbage.png": b"this is not an image at all",
        "empty.png": b"",
        "huge.png": _png_claiming(20000, 20000),
        "wide.png": _png_claiming(20000, 2500),  # 50 M pixels: under Pillow's bomb error, over our limit
    }
    for name, data in cases.items():
        with pytest.raises(InputError, match="the reference image cannot be used: ") as e:
            service.compose(upload(data, name), "make the circle red", "isa", TINY_BACKBONE)
        msg = str(e.value)
        assert "Traceback" not in msg and len(msg) < 300
        if name in ("huge.png", "wide.png"):
            assert "too large" in msg, msg


def test_real_20000px_image_is_refused_quickly(service, giant_png):
    import time

    t = time.perf_counter()
    with pytest.raises(InputError, match="the reference image cannot be used: image is too large"):
        service.compose(giant_png, "make the circle red", "isa", TINY_BACKBONE)
    assert time.perf_counter() - t < 5  # refused from the header, never decoded


@pytest.mark.parametrize("kind,note", [("cmyk", "CMYK"), ("16bit", "16-bit"), ("rgba", "transparent"),
                                       ("gif", "animated"), ("grey", "greyscale"), ("tiny", None)])
def test_unusual_images_work_with_a_note(service, example, upload, kind, note):
    base = Image.open(example["image"]).convert("RGB")
    if kind == "cmyk":
        path = upload(base.convert("CMYK"), "c.jpg", format="JPEG")
    elif kind == "16bit":
        arr = (np.asarray(base.convert("L"), dtype=np.uint16) * 257)
        path = upload(Image.fromarray(arr), "d.png")  # uint16 -> mode I;16
    elif kind == "rgba":
        im = base.convert("RGBA")
        im.putalpha(128)
        path = upload(im, "t.png")
    elif kind == "gif":
        frames = [base, base.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
        path = upload(frames[0], "a.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    elif kind == "grey":
        path = upload(base.convert("L"), "g.png")
    else:
        path = upload(base.resize((1, 1)), "one.png")
    r = service.compose(path, "make the circle red", "isa", TINY_BACKBONE, k=3)
    assert len(r.ids) == 3
    if note:
        assert any(note in n for n in r.notices), r.notices


def test_long_modifier_is_truncated_with_a_notice(service, example):
    long = "make the circle red and " * 40
    r = service.compose(example["image"], long, "isa", TINY_BACKBONE, k=3)
    note = next(n for n in r.notices if "truncated" in n)
    check = service.composer.modifiers
    cap = check.text_capacity(service.catalogue.get_method(service.catalogue.resolve("isa", TINY_BACKBONE)))
    # context minus SOT/EOT, the prompt "a photo of * that" and the L-1 extra pseudo tokens
    assert cap == service.vl.context_length - 2 - check.count_tokens("a photo of * that") - 2
    assert f"room for {cap}" in note and "the text encoder reads" in note
    r = service.compose(example["image"], long, "text-only", k=3)
    assert f"room for {service.vl.context_length - 2}" in next(n for n in r.notices if "truncated" in n)
    r = service.compose(example["image"], "x" * 5000, "sum", k=3)
    assert any("longer than 1000 characters" in n for n in r.notices)
    short = service.compose(example["image"], "make the circle red", "isa", TINY_BACKBONE, k=3)
    assert not any("truncated" in n for n in short.notices)


@pytest.mark.parametrize("text", ["make it 🔴🔴 red 🎈", "сделай круг красным", "把圆圈变成红色",
                                  "👍",
                                  "ﻡﺮﺤﺑﺍ‏ circle", "cafe\u0301 z\u200bero-width"])
def test_emoji_and_non_latin(service, example, text):
    for method in ("isa", "text-only", "masked-ti"):
        r = service.compose(example["image"], text, method, TINY_BACKBONE, k=3)
        assert len(r.ids) == 3
        assert any("non-Latin" in n for n in r.notices)


def test_explain_failure_does_not_break_the_query(service, example, monkeypatch):
    m = service.catalogue.get_method(service.catalogue.resolve("isa", TINY_BACKBONE))
    monkeypatch.setattr(m, "explain_reference", lambda *a: (_ for _ in ()).throw(RuntimeError("boom")))
    r = service.compose(example["image"], "make the circle red", "isa", TINY_BACKBONE, k=3)
    assert r.ids and "boom" in r.explanation["error"]


# ------------------------------------------------------------------------------------ results tabs
def test_failure_table_filter_sort_and_detail(service):
    shown, full = service.inspector.failure_table("sum", None, "all", "worst first")
    assert len(shown) == len(full) > 0
    assert list(shown.columns[:4]) == ["query_id", "mod_type", "modifier", "rank"]
    ranks = shown["rank"].astype("float").fillna(np.inf).tolist()
    assert ranks == sorted(ranks, reverse=True)
    best, _ = service.inspector.failure_table("sum", None, "all", "best first")
    assert best["rank"].astype("float").fillna(np.inf).tolist() == sorted(ranks)
    colour, _ = service.inspector.failure_table("sum", None, "colour")
    assert len(colour) and set(colour["mod_type"]) == {"colour"}
    pairs, _ = service.inspector.failure_table("sum", None, "pair")
    assert len(pairs) and all(t.startswith("pair") for t in pairs["mod_type"])
    d = service.inspector.failure_detail(full.iloc[0].to_dict(), k=5)
    assert d["reference"] and d["reference"].endswith(".png") and d["modifier"]
    assert d["targets"] and all(t["path"] for t in d["targets"])
    assert len(d["top"]) == 5 and all(t["path"] for t in d["top"])
    assert d["rank"] is None or d["rank"] >= 1
    if d["rank"] is not None and d["rank"] <= 5:
        assert d["top"][d["rank"] - 1]["is_gt"]


def test_missing_per_query_table_says_what_to_run(service):
    with pytest.raises(InputError, match="no per-query table for isa .*bench accuracy"):
        service.inspector.failure_table("isa", TINY_BACKBONE)


def test_efficiency_plot_and_table(service, tmp_path):
    fig, table, note = service.inspector.efficiency(TINY_BACKBONE, "gflops")
    assert fig is not None and TINY_BACKBONE in note
    assert any("highlighted" in (t.name or "") for t in fig.data)
    assert {"method", "backbone", "R@1", "GFLOPs", "CPU ms"} <= set(table.columns)
    fig2, _, _ = service.inspector.efficiency(None, "cpu_ms_p50")
    assert "cpu" in fig2.layout.xaxis.title.text.lower()
    for f in (fig, fig2):  # no text drawn on the plot (labels cannot pile up), human titles, a legible scale
        assert all("text" not in (t.mode or "") for t in f.data) and all(t.showlegend is not False for t in f.data)
        titles = [f.layout.title.text, f.layout.xaxis.title.text, f.layout.yaxis.title.text]
        assert not any(raw in t for t in titles for raw in ("cpu_ms_p50", "gflops")), titles
        top = max(y for t in f.data for y in t.y)
        assert f.layout.yaxis.range[1] < 60.0 and f.layout.yaxis.range[1] >= top  # the oracle (60) is said, not drawn
        assert any("caption oracle: 60.0" in a.text for a in f.layout.annotations)
    empty = DemoService(service.vl, service.gallery, None, results_dir=tmp_path, variants=[])
    fig, table, note = empty.inspector.efficiency(TINY_BACKBONE)
    assert fig is None and table is None and "bench accuracy" in note


def test_allowed_paths_are_narrow(service, small_world):
    paths = service.allowed_paths()
    assert str((small_world / "images" / "test").resolve()) in paths
    assert all("images" in p or p.endswith("assets") for p in paths)
    assert str(small_world.resolve()) not in paths and "/" not in paths


# ------------------------------------------------------------------------------------ UI pieces
def test_reference_image_component_passes_unreadable_files_on(tmp_path, monkeypatch):
    import gradio as gr
    from gradio.data_classes import ImageData

    from isa_demo.app.ui import ReferenceImage

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "uploads"))
    bad = tmp_path / "uploads" / "bad.png"
    bad.parent.mkdir()
    bad.write_bytes(b"nope")
    comp = ReferenceImage(type="filepath", image_mode=None, render=False)
    assert comp.get_block_name() == "image"
    assert comp.preprocess(ImageData(path=str(bad), orig_name="bad.png")) == str(bad)
    assert comp.preprocess(None) is None
    # a path the server never received (a request may name any path when it leaves out "meta")
    for path in ("/etc/passwd", str(bad.parent / ".." / "elsewhere.png"), __file__):
        with pytest.raises(gr.Error, match="not a file this server received"):
            comp.preprocess(ImageData(path=path, orig_name="x.png"))


def test_viz_overlays_and_tables():
    from isa_demo.app.viz import attention_overlays, colormap, pseudo_words_markdown, timings_markdown

    assert colormap(np.array([[0.0, 1.0]])).shape == (1, 2, 3)
    pics = attention_overlays(Image.new("RGB", (50, 30), "red"), np.random.rand(4, 4, 4), size=64)
    assert len(pics) == 4 and pics[0].shape == (64, 64, 3) and pics[0].dtype == np.uint8
    assert attention_overlays(Image.new("RGB", (8, 8)), np.zeros((2, 3, 3)))[0].shape == (160, 160, 3)
    md = pseudo_words_markdown([[("red|*", 0.5), ("circle", 0.4)]], "a photo of S that x")
    assert "red\\|\\*" in md and "| s1 |" in md
    assert "**total (this query)** | 3.0" in timings_markdown({"total_ms": 3.0, "search_ms": 1.0})


def test_cli_registers_app_and_bench_app():
    from isa_demo.cli import build_parser

    p = build_parser()
    args = p.parse_args(["app", "--port", "7999", "--index", "x", "--model", "m", "--pretrained", "none"])
    assert (args.port, args.index, args.vl_model, args.vl_pretrained) == (7999, "x", "m", "none")
    args = p.parse_args(["bench", "app", "--clients", "2", "--queries", "3", "--sequential", "4"])
    assert (args.clients, args.queries, args.sequential) == (2, 3, 4)


# ------------------------------------------------------------------------------------ HTTP API
@pytest.fixture(scope="module")
def served(service):
    from helpers import serve

    demo, url = serve(service)
    yield url
    demo.close()


def test_http_api_compose(served, example, upload, giant_png):
    from gradio_client import Client, handle_file

    client = Client(served, verbose=False)
    assert {"/compose", "/compare", "/variants"} <= set(client.view_api(print_info=False, return_format="dict")
                                                         ["named_endpoints"])
    info = client.predict(api_name="/variants")
    assert info["backbones"] == [TINY_BACKBONE] and "isa" in info["methods"]
    r = client.predict(handle_file(example["image"]), example["modifier"], "isa", TINY_BACKBONE, 5,
                       api_name="/compose")
    assert len(r["ids"]) == len(r["scores"]) == 5 and r["names"][0].startswith("test-")
    assert {"query_image_encoder_ms", "text_encoder_ms", "search_ms", "total_ms"} <= set(r["timings_ms"])
    both = client.predict(handle_file(example["image"]), example["modifier"], "isa", TINY_BACKBONE, "sum", None, 4,
                          api_name="/compare")
    assert len(both["a"]["ids"]) == len(both["b"]["ids"]) == 4
    # bad inputs come back as the user-facing message, not a stack trace
    with pytest.raises(Exception, match="the modifier text is empty"):
        client.predict(handle_file(example["image"]), "  ", "isa", TINY_BACKBONE, 5, api_name="/compose")
    bad = upload(open(example["image"], "rb").read()[:200], "cut.png")
    with pytest.raises(Exception, match="the reference image cannot be used: not a readable image"):
        client.predict(handle_file(bad), "make the circle red", "sum", None, 5, api_name="/compose")
    with pytest.raises(Exception, match="image is too large"):  # gradio's own decode is bypassed
        client.predict(handle_file(giant_png), "make the circle red", "sum", None, 5, api_name="/compose")
    with pytest.raises(Exception, match="no reference image"):
        client.predict(None, "make the circle red", "sum", None, 5, api_name="/compose")


def test_rest_compose_answers_as_gradio_does(served, example):
    """``POST /api/compose`` (one multipart request) gives gradio's /compose answer for the same
    query, defaults its fields like the page, and says a refused input as the page does."""
    import httpx
    from gradio_client import Client, handle_file

    ref = (os.path.basename(example["image"]), open(example["image"], "rb").read())
    fields = {"modifier": example["modifier"], "method": "isa", "backbone": TINY_BACKBONE, "k": "5"}
    r = httpx.post(served + "api/compose", data=fields, files={"image": ref}, timeout=60)
    assert r.status_code == 200, r.text
    ours = r.json()
    theirs = Client(served, verbose=False).predict(handle_file(example["image"]), example["modifier"], "isa",
                                                   TINY_BACKBONE, 5, api_name="/compose")
    assert ours["ids"] == theirs["ids"] and ours["scores"] == pytest.approx(theirs["scores"], abs=1e-6)
    assert ours["excluded_reference_ids"] == theirs["excluded_reference_ids"]  # the same bytes: the same image
    default = httpx.post(served + "api/compose", data={"modifier": example["modifier"]}, files={"image": ref},
                         timeout=60).json()
    assert len(default["ids"]) == 10 and default["method"] == theirs["method"]  # the app's default method
    refused = httpx.post(served + "api/compose", data={**fields, "k": "abc"}, files={"image": ref}, timeout=60)
    assert refused.status_code == 400
    assert refused.json() == {"error": f"top-K must be a whole number from 1 to {MAX_K}; “abc” is not a number"}


@pytest.mark.parametrize("k", list(BAD_K))
def test_http_api_top_k_like_the_page(served, example, k):
    """The API refuses a bad Top-K with the page's own message (the slider's bounds do not answer
    first), for /compose and /compare."""
    from gradio_client import Client, handle_file

    client = Client(served, verbose=False)
    with pytest.raises(Exception, match=re.escape(BAD_K[k])):
        client.predict(handle_file(example["image"]), "make the circle red", "sum", None, k, api_name="/compose")
    with pytest.raises(Exception, match=re.escape(BAD_K[k])):
        client.predict(handle_file(example["image"]), "make the circle red", "isa", TINY_BACKBONE, "sum", None, k,
                       api_name="/compare")


def test_http_api_compare_ranks(served, example):
    from gradio_client import Client, handle_file

    client = Client(served, verbose=False)
    both = client.predict(handle_file(example["image"]), example["modifier"], "isa", TINY_BACKBONE, "sum", None, 4,
                          api_name="/compare")
    ranks = both["ranks"]
    assert len(ranks["a_in_b"]) == len(ranks["b_in_a"]) == 4 and ranks["depth"] > 4
    for i, rid in enumerate(both["a"]["ids"]):
        if rid in both["b"]["ids"]:
            assert ranks["a_in_b"][i] == both["b"]["ids"].index(rid) + 1


def test_http_serves_only_allowed_files(served, example):
    import httpx

    ok = httpx.get(served + "gradio_api/file=" + example["image"])
    assert ok.status_code == 200 and ok.content[:4] == b"\x89PNG"
    for path in ("/etc/passwd", __file__):
        assert httpx.get(served + "gradio_api/file=" + path).status_code in (403, 404)


def test_bench_measure_small(served, small_world):
    from isa_demo.bench.app import measure, world_queries

    rows, meta = measure(served, world_queries(small_world, 6), clients=2, per_client=2, sequential=2, warmup=1,
                         method=None, backbone=None, k=5)
    assert meta["method"] == "isa" and meta["backbone"] == TINY_BACKBONE and not meta["errors"]
    by = {r["scenario"]: r for r in rows}
    assert set(by) == {"sequential", "sequential_gradio_client", "api_floor_gradio_client", "concurrent"}
    assert by["concurrent"]["errors"] == 0 and by["concurrent"]["queries"] == 4
    assert by["sequential"]["p99_ms"] >= by["sequential"]["p50_ms"] > 0
    assert by["sequential"]["server_total_ms_p50"] > 0  # the plain HTTP call got the JSON back


def test_bench_load_small(served, small_world, tmp_path):
    """`bench load`'s rounds against a running app: no errors, RSS and its growth, the cache size."""
    from isa_demo.bench.app import world_queries
    from isa_demo.bench.load import folder_size, run_load

    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "f").write_bytes(b"x" * 1000)
    rows, meta = run_load(served, world_queries(small_world, 8), clients=2, seconds=1.5, rounds=2, also_clients=[1],
                          pid=os.getpid(), cache_dir=tmp_path / "c")
    assert [(r["api"], r["clients"]) for r in rows] == [(api, n) for api in ("gradio", "rest") for n in (2, 2, 1)]
    assert not meta["errors"]
    assert all(r["errors"] == 0 and r["queries"] > 0 and r["p99_ms"] >= r["p50_ms"] > 0 for r in rows)
    assert rows[0]["server_rss_mb"] > 0 and rows[1]["rss_growth_pct"] == rows[1]["rss_growth_pct"]  # not NaN
    assert rows[0]["cache_files"] == 1 and folder_size(tmp_path / "c")[0] == 0.001


def test_any_index_by_path(tiny_vl, small_world, tmp_path):
    """``--index PATH``: a gallery built by `index build` from any folder, no world needed."""
    import shutil

    from isa_demo.app.service import load_service
    from isa_demo.index import GalleryIndex

    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    for i, src in enumerate(sorted((small_world / "images" / "test").glob("*.png"))[:6]):
        shutil.copy(src, folder / ("sub" if i % 2 else "") / f"img{i}.png")
    GalleryIndex.build(folder, tmp_path / "index", tiny_vl)
    s = load_service("isa-test-tiny", "none", str(tmp_path / "index"), world_dir=None, results_dir=tmp_path)
    assert len(s.gallery) == 6 and s.world is None and s.inspector.example_queries() == []
    choices = s.catalogue.method_choices()
    assert "sum" in choices and "isa" not in choices  # shipped ISA: another VL
    r = s.compose(str(folder / "img0.png"), "make the circle red", "sum", k=3)
    assert len(r.ids) == 3 and 0 not in r.ids  # the reference itself is found by content and left out
    assert all(h.path.startswith(str(folder)) for h in r.hits)
    assert s.allowed_paths() == [str(folder.resolve())]
    with pytest.raises(Exception, match="built with|not comparable"):
        from isa_demo.vl import load_vl

        DemoService(load_vl("isa-test-tiny-custom", None, device="cpu"), GalleryIndex.load(
            tmp_path / "index", expected_identity=load_vl("isa-test-tiny-custom", None, device="cpu").identity()))


def test_examples_are_a_seeded_draw_one_per_family(service):
    """The UI's examples: one query per modification family, drawn with a fixed seed (the same on
    every start, another seed gives others), never chosen by a model's results."""
    a, b = service.inspector.example_queries(8), service.inspector.example_queries(8)
    assert a == b
    families = [e["mod_type"].split(":")[0] for e in a]
    assert len(set(families)) == len(families)
    assert service.inspector.example_queries(8, seed=1) != a


# ------------------------------------------------------------------------------------ public deployment
def test_limits_are_flags_and_environment(monkeypatch):
    import argparse

    from isa_demo.app.cli import add_app_args, delete_cache_setting

    for name, value in (("MAX_QUEUE", "7"), ("MAX_FILE_SIZE", "2mb"), ("CACHE_TTL", "60"), ("MAX_BATCH", "4")):
        monkeypatch.setenv(f"ISA_DEMO_{name}", value)
    p = argparse.ArgumentParser()
    add_app_args(p)
    a = p.parse_args([])
    assert (a.max_queue, a.max_file_size, a.cache_ttl, a.max_batch, a.concurrency) == (7, "2mb", 60, 4, 16)
    assert a.threads == 1  # concurrent requests, not one operator, use the other cores
    monkeypatch.setenv("ISA_DEMO_THREADS", "0")
    q = argparse.ArgumentParser()
    add_app_args(q)
    assert q.parse_args([]).threads == 0  # 0: torch's own choice
    a = p.parse_args(["--max-queue", "3", "--cache-ttl", "0", "--max-file-size", "500kb"])
    assert (a.max_queue, a.cache_ttl, a.max_file_size) == (3, 0, "500kb")
    assert delete_cache_setting(900, 300) == (300, 900) and delete_cache_setting(60, 300) == (60, 60)
    assert delete_cache_setting(0, 300) is None


def test_api_calls_do_not_build_the_page_config(service, example):
    """Every API call is a new session: it starts without the page's configuration (gradio's
    builds it for every block, ~100 here), and a deep link still gets the configuration gradio's
    own session would give."""
    import json

    import gradio as gr
    from gradio.state_holder import SessionState
    from gradio_client import Client, handle_file

    from helpers import serve
    from isa_demo.app.widgets import LazySessionState, LazyStateHolder

    page, url = serve(service)
    try:
        Client(url, verbose=False).predict(handle_file(example["image"]), example["modifier"], "sum", None, 3,
                                           api_name="/compose")
        holder = page.server_app.state_holder
        assert isinstance(holder, LazyStateHolder) and holder is page.state_holder
        sessions = list(holder.session_data.values())
        assert sessions and all(isinstance(st, LazySessionState) and not st.config_values for st in sessions)
    finally:
        page.close()

    eager, lazy = SessionState(page), LazySessionState(page)
    ids = list(page.blocks)
    box = next(k for k in ids if isinstance(page.blocks[k], gr.Textbox))
    state = next(k for k in ids if isinstance(page.blocks[k], gr.State))
    for st in (eager, lazy):  # what events do to a session, in gradio's order
        st._update_value_in_config(box, "typed")
        st[state] = "kept"
        st._update_value_in_config(state, "kept again")
        st._update_config(ids[3])
        st._update_value_in_config(box, "typed again")

    def by_id(st):
        return {c["id"]: json.dumps(c, default=str, sort_keys=True) for c in st.components}

    assert by_id(lazy) == by_id(eager) and len(by_id(lazy)) == len(ids)


def test_queue_keeps_no_monitoring_history(service):
    """gradio's queue summarises its kept events after every event for a monitoring page this app
    does not serve: it keeps few, and summarises rarely."""
    from isa_demo.app.cli import build_demo

    queue = build_demo(service)._queue
    assert queue.ANALYTICS_MAX_EVENTS <= 100 and queue.ANAYLTICS_CACHE_FREQUENCY >= 100


def test_uploads_are_deleted_on_schedule(service, tmp_path):
    """With --cache-ttl 1 --cache-sweep 1 an upload is gone within a few seconds; the bounds the
    app was started with are the ones it serves with."""
    import time

    import httpx

    from helpers import free_port
    from isa_demo.app.cli import build_demo, launch

    demo = build_demo(service, concurrency=2, max_queue=5, delete_cache=(1, 1))
    port = free_port()
    launch(demo, service, "127.0.0.1", port, block=False, quiet=True, max_file_size="1kb")
    try:
        url = f"http://127.0.0.1:{port}/gradio_api/upload"
        assert demo._queue.max_size == 5 and demo.delete_cache == (1, 1)
        too_big = httpx.post(url, files={"files": ("a.png", b"\0" * 2048)})
        assert too_big.status_code == 413 and "maximum allowed size" in too_big.text
        too_big = httpx.post(f"http://127.0.0.1:{port}/api/compose", files={"image": ("a.png", b"\0" * 200_000)})
        assert too_big.status_code == 413 and "the upload is too large" in too_big.json()["error"]
        path = httpx.post(url, files={"files": ("a.png", b"\0" * 500)}).json()[0]
        assert os.path.exists(path)
        t = time.perf_counter()
        while os.path.exists(path) and time.perf_counter() - t < 10:
            time.sleep(0.25)
        assert not os.path.exists(path), "the upload outlived --cache-ttl"
    finally:
        demo.close()


def test_concurrent_composes_run_as_one_batch(service, example):
    """Queries of one method arriving together share one run of the encoders and the search, and
    each gets exactly what it would alone; a bad query in the crowd gets its own message."""
    import threading

    from isa_demo.app.inputs import InputError

    alone = service.compose(example["image"], "make the circle red", "isa", TINY_BACKBONE, 5, explain=False)
    calls = {"n": 0}
    m = service.catalogue.get_method(service.catalogue.resolve("isa", TINY_BACKBONE))
    real = m.encode_reference
    gate = threading.Event()

    def counted(images):
        calls["n"] += 1
        gate.wait(5)  # the first batch waits until every query has arrived
        return real(images)

    m.encode_reference = counted
    results, errors = [None] * 6, []

    def ask(i):
        try:
            results[i] = service.compose(example["image"], "make the circle red" if i != 3 else " ", "isa",
                                         TINY_BACKBONE, 5, explain=False)
        except InputError as e:
            errors.append(str(e))

    try:
        threads = [threading.Thread(target=ask, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        import time

        time.sleep(1.0)
        gate.set()
        for t in threads:
            t.join(30)
    finally:
        m.encode_reference = real
    assert errors == ["the modifier text is empty: type what should change, e.g. 'make the circle red'"]
    done = [r for r in results if r is not None]
    assert len(done) == 5 and calls["n"] <= 2 and max(r.batch_size for r in done) >= 3  # 5 queries in at most 2 batches
    for r in done:
        assert r.ids == alone.ids
        np.testing.assert_allclose(r.scores, alone.scores, atol=1e-5)


def test_batcher_runs_a_failed_batch_one_by_one():
    """A batch that fails as a whole is run query by query: the bad query gets its own error, the
    others their results."""
    import threading
    import time

    import torch

    from isa_demo.app.batching import QueryBatcher
    from isa_demo.methods.base import Reference

    gate = threading.Event()

    class Fake:
        uses_image, timing_stages = True, ("query_image_encoder", "text_encoder")

        def encode_reference(self, images):
            gate.wait(5)
            if "bad" in images:
                raise ValueError("a bad image in the batch")
            return Reference(features=torch.ones(len(images), 4))

        def compose(self, ref, texts):
            return torch.ones(len(texts), 4)

    b = QueryBatcher(lambda q, k: (np.zeros((len(q), k)), np.tile(np.arange(k), (len(q), 1))), max_batch=8)
    out, errors = {}, {}

    def ask(i, image):
        try:
            out[i] = b.run("fake", Fake(), image, "text", 3)
        except ValueError as e:
            errors[i] = str(e)

    threads = [threading.Thread(target=ask, args=(i, "bad" if i == 2 else f"img{i}")) for i in range(5)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    gate.set()
    for t in threads:
        t.join(10)
    assert errors == {2: "a bad image in the batch"} and sorted(out) == [0, 1, 3, 4]
    assert all(o.ids.tolist() == [[0, 1, 2]] for o in out.values())
    assert b.queries >= 4
