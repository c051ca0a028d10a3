"""Hostile input against the compose function, the HTTP API and ``index build``.

Hostile files are generated here (truncated JPEG and PNG, zero bytes, wrong extension, a
decompression bomb, 1x1, 16-bit, CMYK, palette with transparency, animated GIF, EXIF-rotated,
huge dimensions), modifiers are drawn by hypothesis (any text: control characters, NUL, emoji,
mixed scripts, 100,000 characters) and every parameter of every named endpoint gets wrong types
and out-of-range values. Each call must come back within its bound with a result or a message
(a :class:`isa_demo.errors.UserError` in-process, an ``error`` event with a message over HTTP):
never a crash, a hang, a traceback in the answer, or (for rejected input) one in the server log;
the server answers afterwards. The hypothesis runs are small (``FUZZ_EXAMPLES``, default 25 per
test); ``ISA_DEMO_FUZZ_EXAMPLES=500 pytest tests/test_fuzz.py`` runs a long one.
"""
from __future__ import annotations

import io
import json
import logging
import os
import struct
import threading
import time
import zlib
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from helpers import TINY_BACKBONE
from isa_demo.errors import UserError

FUZZ_EXAMPLES = int(os.environ.get("ISA_DEMO_FUZZ_EXAMPLES", 25))
CALL_SECONDS = 30.0  # the bound on any one call
COUNTS = {"files": 0, "modifiers": 0, "parameters": 0, "http": 0, "errors_seen": 0}
FUZZ = settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=False,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


# ------------------------------------------------------------------------------------ hostile files
def _png_claiming(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def _real_png(width: int, height: int) -> bytes:
    """A valid greyscale PNG of ``width x height`` written row by row (cheap in memory)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    comp = zlib.compressobj(1)
    row = b"\x00" + b"\x80" * width
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def _encoded(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def hostile_files(folder: Path) -> dict[str, tuple[Path, bool]]:
    """``{kind: (file, usable)}``: hostile and unusual images written into ``folder``; ``usable``:
    the search runs (with a notice where the image is unusual) rather than refusing it."""
    folder.mkdir(parents=True, exist_ok=True)
    base = Image.new("RGB", (64, 48), (200, 30, 30))
    base.paste((20, 20, 220), (10, 10, 40, 30))
    jpeg, png = _encoded(base, "JPEG", quality=90), _encoded(base, "PNG")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 on display
    palette = Image.new("P", (32, 32), 0)
    palette.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    palette.paste(1, (8, 8, 24, 24))
    frames = [Image.new("RGB", (32, 32), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    cases = {
        "truncated_jpeg.jpg": (jpeg[: len(jpeg) // 3], False),
        "truncated_png.png": (png[: len(png) // 2], False),
        "zero_bytes.png": (b"", False),
        "text_named_png.png": (b"this is not an image\n" * 20, False),
        "png_named_jpg.jpg": (png, True),  # wrong extension, fine content
        "bomb.png": (_png_claiming(50_000, 50_000), False),  # a decompression bomb's header
        "huge_dimensions.png": (_real_png(8000, 6000), False),  # 48 M pixels, over the 40 M limit
        "one_pixel.png": (_encoded(Image.new("RGB", (1, 1), (9, 9, 9)), "PNG"), True),
        "sixteen_bit.png": (_encoded(Image.new("I;16", (40, 30), 40000), "PNG"), True),
        "cmyk.jpg": (_encoded(Image.new("CMYK", (40, 30), (0, 200, 200, 0)), "JPEG"), True),
        "palette_transparent.png": (_encoded(palette, "PNG", transparency=0), True),
        "animated.gif": (gif.getvalue(), True),
        "exif_rotated.jpg": (_encoded(base, "JPEG", exif=exif), True),
    }
    out = {}
    for name, (data, usable) in cases.items():
        (folder / name).write_bytes(data)
        out[name] = (folder / name, usable)
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return hostile_files(tmp_path_factory.mktemp("hostile"))


def bounded(fn, *args, seconds: float = CALL_SECONDS):
    """``fn(*args)`` on a thread; fails the test if it runs past ``seconds`` (a hang)."""
    box: dict = {}

    def run():
        try:
            box["value"] = fn(*args)
        except BaseException as e:  # noqa: BLE001 - judged by the caller
            box["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"call did not return within {seconds:.0f} s"
    if "error" in box:
        raise box["error"]
    return box["value"]


def check_message(message: str) -> None:
    """A message for a person: present, one short paragraph, no traceback, no server folder."""
    assert message and isinstance(message, str), message
    assert "Traceback" not in message and 'File "' not in message, message
    assert len(message) < 1200, message[:300]
    assert "/tmp/" not in message and "/site-packages/" not in message, message


def compose_or_message(service, *args, **kw):
    """A result, or a UserError with a clean message; anything else fails (a crash)."""
    try:
        return bounded(lambda: service.compose(*args, **kw))
    except UserError as e:
        COUNTS["errors_seen"] += 1
        check_message(str(e))
        return None


# ------------------------------------------------------------------------------------ the compose function
def test_hostile_files_in_process(service, files, caplog):
    caplog.set_level(logging.WARNING, logger="isa_demo.app")
    for name, (path, usable) in files.items():
        for method in ("isa", "sum", "masked-ti"):
            t = time.perf_counter()
            r = compose_or_message(service, str(path), "make the circle red", method, TINY_BACKBONE, 5)
            COUNTS["files"] += 1
            assert (r is not None) == usable, f"{name} with {method}"
            assert time.perf_counter() - t < 10, f"{name} took {time.perf_counter() - t:.1f} s"
            if r is not None:
                assert len(r.ids) == 5
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], "a bad file is not a server error"


MODIFIERS = ["", " ", "\t\n\r  \u00a0\u2003", "x" * 100_000, "make\x00the\x01circle\x7fred", "\x00" * 50,
             "make the circle 🔴 red 👩‍👩‍👧", "сделай круг красным 把圆变成红色 اجعل الدائرة حمراء",
             "\u202egnirts desrever", "a\u0301\u0302\u0303" * 200, "\ud800 lone surrogate", "'; DROP TABLE images; --",
             "<script>alert(1)</script>", "$$\\frac{1}{0}$$ **bold** [link](javascript:alert(1))",
             "{modifier} * {0} %s %(x)s"]


@pytest.mark.parametrize("modifier", MODIFIERS, ids=range(len(MODIFIERS)))
def test_listed_modifiers(service, example, modifier):
    for method in ("isa", "sum", "text-only"):
        r = compose_or_message(service, example["image"], modifier, method, TINY_BACKBONE, 5)
        COUNTS["modifiers"] += 1
        if r is None:
            assert not " ".join("".join(c for c in modifier if c.isprintable()).split()), repr(modifier[:40])
        else:
            assert len(r.modifier) <= 1000 and "\x00" not in r.modifier


@FUZZ
@given(modifier=st.text(st.characters(codec="utf-8"), max_size=300) | st.text(max_size=20),
       method=st.sampled_from(["isa", "sum", "masked-ti", "text-only", "image-only"]))
def test_any_modifier(service, example, modifier, method):
    COUNTS["modifiers"] += 1
    compose_or_message(service, example["image"], modifier, method, TINY_BACKBONE, 3)


ODD = (st.none() | st.booleans() | st.integers(-10**20, 10**20) | st.floats(allow_nan=True, allow_infinity=True)
       | st.text(max_size=30) | st.lists(st.integers(), max_size=3) | st.dictionaries(st.text(max_size=3),
                                                                                       st.integers(), max_size=2))


@FUZZ
@given(k=ODD | st.sampled_from(["abc", "", " 7 ", "1e400", "NaN", "-0", "50.0", "51"]),
       method=ODD | st.sampled_from(["isa", "sum", "ISA", " isa ", "x" * 10_000]),
       backbone=ODD | st.sampled_from([TINY_BACKBONE, "resnet18", "../../etc/passwd"]))
def test_any_parameters(service, example, k, method, backbone):
    COUNTS["parameters"] += 1
    compose_or_message(service, example["image"], "make the circle red", method, backbone, k)


# ------------------------------------------------------------------------------------ the HTTP API
@pytest.fixture(scope="module")
def served(service):
    from helpers import serve

    demo, url = serve(service)
    yield url
    demo.close()


class Api:
    """Plain HTTP: upload, submit, read the event stream; every call bounded."""

    def __init__(self, url: str):
        self.url = url.rstrip("/") + "/gradio_api"
        self.http = httpx.Client(timeout=CALL_SECONDS)

    def upload(self, path: Path) -> dict | str:
        r = self.http.post(f"{self.url}/upload", files={"files": (path.name, path.read_bytes())})
        if r.status_code != 200:
            return r.text
        return {"path": r.json()[0], "meta": {"_type": "gradio.FileData"}}

    def call(self, endpoint: str, data) -> tuple[str, object]:
        """``("complete", result)`` or ``("error", message)``; fails on anything else."""
        COUNTS["http"] += 1
        # serialised here: requests refuses NaN and infinities, which a hostile client can still send
        r = self.http.post(f"{self.url}/call/{endpoint}", data=json.dumps({"data": data}, allow_nan=True),
                           headers={"Content-Type": "application/json"})
        if r.status_code != 200:
            assert 400 <= r.status_code < 500, (r.status_code, r.text[:300])
            detail = r.json().get("detail")
            COUNTS["errors_seen"] += 1
            check_message(detail if isinstance(detail, str) else json.dumps(detail))
            return "error", detail
        event, payload = None, None
        t = time.perf_counter()
        with self.http.stream("GET", f"{self.url}/call/{endpoint}/{r.json()['event_id']}") as stream:
            for line in stream.iter_lines():
                if line.startswith("event:"):
                    event = line.split(":", 1)[1].strip()
                elif line.startswith("data:") and event in ("complete", "error"):
                    payload = json.loads(line.split(":", 1)[1].strip())
                    break
        assert time.perf_counter() - t < CALL_SECONDS
        assert event in ("complete", "error"), (event, payload)
        if event == "error":
            COUNTS["errors_seen"] += 1
            message = payload.get("error") if isinstance(payload, dict) else payload
            check_message(message)  # never gradio's bare "Error" / null
            return "error", message
        return "complete", payload[0]


@pytest.fixture(scope="module")
def api(served):
    return Api(served)


def test_hostile_files_over_http(api, files, capfd, tmp_path):
    for name, (path, usable) in files.items():
        image = api.upload(path)
        assert isinstance(image, dict), f"{name}: upload refused: {image}"
        event, out = api.call("compose", [image, "make the circle red", "isa", TINY_BACKBONE, 5])
        COUNTS["files"] += 1
        assert (event == "complete") == usable, f"{name}: {out}"
    gone = api.upload(files["one_pixel.png"][0])
    os.remove(gone["path"])  # swept by --cache-ttl while the page still shows it
    event, message = api.call("compose", [gone, "make the circle red", "sum", None, 5])
    assert event == "error" and "is no longer on the server" in message and "upload it again" in message
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG" + b"\0" * (11 * 1024 * 1024))  # over the 10 MB upload limit
    refused = api.upload(big)
    assert isinstance(refused, str) and "exceeded maximum allowed size" in refused
    COUNTS["files"] += 1
    assert "Traceback" not in capfd.readouterr().err


def _wrong_images(api, example) -> list:
    good = api.upload(Path(example["image"]))
    return [None, "", "abc", 5, [], {}, {"path": "/etc/passwd"}, {"path": "/etc/passwd", "meta": {"_type":
            "gradio.FileData"}}, {"path": good["path"] + "/../../../etc/hostname", "meta": good["meta"]},
            {"url": "http://169.254.169.254/latest/meta-data/", "meta": good["meta"]}, {"path": None}, good]


def test_every_parameter_of_every_endpoint_over_http(api, example, capfd):
    """Each parameter of /compose and /compare in turn takes wrong types and out-of-range values
    (the others valid); /variants takes stray inputs; too few inputs; no data at all."""
    good_image = api.upload(Path(example["image"]))
    compose = [good_image, "make the circle red", "isa", TINY_BACKBONE, 5]
    compare = [good_image, "make the circle red", "isa", TINY_BACKBONE, "sum", None, 5]
    wrong = {"image": _wrong_images(api, example),
             "text": [None, "", " ", 5, ["a"], {"a": 1}, "x" * 100_000, "\x00\x01", "🔴" * 50],
             "choice": [None, "", 5, 1.5, True, ["isa"], {"a": 1}, "nope", "x" * 100_000, "ISA"],
             "k": [None, "", "abc", 0, -1, 51, 10**30, 7.5, "7.5", True, [], {}, "NaN", "inf", 1e308, "5"]}
    kinds = {"compose": ["image", "text", "choice", "choice", "k"],
             "compare": ["image", "text", "choice", "choice", "choice", "choice", "k"]}
    for endpoint, base in (("compose", compose), ("compare", compare)):
        assert api.call(endpoint, base)[0] == "complete"
        for i, kind in enumerate(kinds[endpoint]):
            for value in wrong[kind]:
                data = list(base)
                data[i] = value
                api.call(endpoint, data)  # a result or a message, checked inside
                COUNTS["parameters"] += 1
        for data in (base[:2], [], base + ["extra", 1]):
            api.call(endpoint, data)
            COUNTS["parameters"] += 1
    for data in ([], ["stray"], [None, 5]):
        assert api.call("variants", data)[0] == "complete"
        COUNTS["parameters"] += 1
    for body in ({}, {"data": "not a list"}, {"data": None}, [1, 2]):
        r = api.http.post(f"{api.url}/call/compose", json=body)
        assert 400 <= r.status_code < 500 and "Traceback" not in r.text
        COUNTS["parameters"] += 1
    err = capfd.readouterr().err
    assert "Traceback" not in err, err[-3000:]
    assert api.call("compose", compose)[0] == "complete"  # the server answers afterwards


@FUZZ
@given(modifier=st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=200),
       k=ODD, method=st.sampled_from(["isa", "sum"]) | ODD)
def test_any_input_over_http(api, example, modifier, k, method):
    good = api.upload(Path(example["image"]))
    api.call("compose", [good, modifier, method, TINY_BACKBONE, k])
    COUNTS["parameters"] += 1


class Rest:
    """``POST /api/compose``: one multipart request per query; every call bounded."""

    def __init__(self, url: str):
        self.url = url.rstrip("/") + "/api/compose"
        self.http = httpx.Client(timeout=CALL_SECONDS)

    def call(self, fields: dict, image: tuple | None = None, **kw) -> tuple[int, dict]:
        """``(status, JSON)``: 200 and a result, or 400/413/503 and a message (checked here)."""
        COUNTS["http"] += 1
        fields = {k: v if isinstance(v, str) else json.dumps(v) for k, v in fields.items() if v is not None}
        t = time.perf_counter()
        r = self.http.post(self.url, data=fields, files={"image": image} if image else None, **kw)
        assert time.perf_counter() - t < CALL_SECONDS
        body = r.json()
        if r.status_code != 200:
            assert r.status_code in (400, 413, 503), (r.status_code, r.text[:300])
            COUNTS["errors_seen"] += 1
            check_message(body["error"])
        return r.status_code, body


@pytest.fixture(scope="module")
def rest(served):
    return Rest(served)


def test_hostile_files_over_rest(rest, files, capfd):
    for name, (path, usable) in files.items():
        status, out = rest.call({"modifier": "make the circle red", "method": "isa", "backbone": TINY_BACKBONE,
                                 "k": "5"}, (name, path.read_bytes()))
        COUNTS["files"] += 1
        assert (status == 200) == usable, f"{name}: {out}"
    assert "Traceback" not in capfd.readouterr().err


def test_every_field_over_rest(rest, example, capfd):
    """Each field of /api/compose in turn takes wrong values (the others valid); then malformed
    requests: unknown fields, text for the file, two files, JSON, no body. The server answers
    afterwards, and nothing reaches the log as a traceback."""
    image = (Path(example["image"]).name, Path(example["image"]).read_bytes())
    base = {"modifier": "make the circle red", "method": "isa", "backbone": TINY_BACKBONE, "k": "5"}
    assert rest.call(base, image)[0] == 200
    wrong = {"modifier": [None, "", " ", "x" * 100_000, "\x00\x01", "🔴" * 50],
             "method": ["", "5", "nope", "x" * 10_000, "ISA"],
             "backbone": ["", "nope", "5"],
             "k": ["", "abc", "0", "-1", "51", "1e30", "7.5", "true", "[]", "NaN", "inf", " 5 "]}
    for key, values in wrong.items():
        for value in values:
            rest.call({**base, key: value}, image)  # a result or a message, checked inside
            COUNTS["parameters"] += 1
    assert rest.call(base)[1]["error"].startswith("no reference image")
    assert "unknown field" in rest.call({**base, "extra": "1"}, image)[1]["error"]
    assert "must be a file" in rest.call({**base, "image": "abc"})[1]["error"]
    two = rest.http.post(rest.url, data=base, files=[("image", image), ("image", image)])
    assert two.status_code == 400 and "at most one file" in two.json()["error"]
    for kw in ({"json": {"image": "abc", **base}}, {"content": b""}, {"content": b"\x00" * 100}):
        r = rest.http.post(rest.url, **kw)
        assert r.status_code == 400 and "multipart form" in r.json()["error"], r.text
    r = rest.http.post(rest.url, content=b"--x\r\nnonsense", headers={"content-type": "multipart/form-data"})
    assert r.status_code == 400 and "Traceback" not in r.text, r.text
    COUNTS["parameters"] += 8
    err = capfd.readouterr().err
    assert "Traceback" not in err, err[-3000:]
    assert rest.call(base, image)[0] == 200


@FUZZ
@given(modifier=st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=200),
       k=ODD, method=st.sampled_from(["isa", "sum"]) | ODD)
def test_any_input_over_rest(rest, example, modifier, k, method):
    image = (Path(example["image"]).name, Path(example["image"]).read_bytes())
    rest.call({"modifier": modifier, "method": method, "backbone": TINY_BACKBONE, "k": k}, image)
    COUNTS["parameters"] += 1


def test_queue_full_says_busy_and_retry(service):
    """Past --max-queue waiting requests, a new one is refused at once with a "busy, retry" message."""
    from helpers import free_port
    from isa_demo.app.cli import build_demo, launch

    gate = threading.Event()
    real = service.composer.batcher.run
    entered = []

    def slow(*a, **kw):
        entered.append(a[3])  # the modifier
        gate.wait(20)
        return real(*a, **kw)

    demo = build_demo(service, concurrency=1, max_queue=1)
    port = free_port()
    launch(demo, service, "127.0.0.1", port, block=False, quiet=True)
    api = Api(f"http://127.0.0.1:{port}/")
    service.composer.batcher.run = slow
    try:
        image = api.upload(Path(service.inspector.example_queries(1)[0]["image"]))
        data = {"data": [image, "make the circle red", "sum", None, 5]}
        statuses = [api.http.post(f"{api.url}/call/compose", json=data) for _ in range(4)]
        busy = [r for r in statuses if r.status_code == 503]
        assert busy, [r.status_code for r in statuses]
        assert "the server is busy" in busy[0].json()["detail"] and "retry" in busy[0].json()["detail"]
        rest = Rest(f"http://127.0.0.1:{port}/")
        fields = {"modifier": "make the circle blue", "method": "sum"}
        image = ("ref.png", Path(service.inspector.example_queries(1)[0]["image"]).read_bytes())
        first = threading.Thread(target=rest.call, args=(fields, image))  # waits in slow() until the gate opens
        first.start()
        t = time.perf_counter()
        while "make the circle blue" not in entered and time.perf_counter() - t < 10:
            time.sleep(0.05)
        status, out = rest.call(fields, image)
        assert status == 503 and "the server is busy" in out["error"] and "retry" in out["error"], out
    finally:
        gate.set()
        service.composer.batcher.run = real
        demo.close()


# ------------------------------------------------------------------------------------ index build
def test_index_build_over_hostile_files(tiny_vl, files, tmp_path, capsys):
    from isa_demo.cli import main
    from isa_demo.index import GalleryIndex

    folder = files["one_pixel.png"][0].parent
    (folder / "nested" / "deeper").mkdir(parents=True, exist_ok=True)
    (folder / "nested" / "deeper" / "notes.txt").write_text("not an image")
    (folder / "nested" / "weird name ✓ \u202e.png").write_bytes(files["one_pixel.png"][0].read_bytes())
    loop = folder / "nested" / "loop"
    if not loop.exists():
        loop.symlink_to(folder, target_is_directory=True)
    out = tmp_path / "index"
    t = time.perf_counter()
    g = bounded(lambda: GalleryIndex.build(folder, out, tiny_vl), seconds=120)
    assert time.perf_counter() - t < 120
    usable = {n for n, (_, ok) in files.items() if ok}
    indexed = {Path(r["path"]).name for r in g.records}
    assert usable <= indexed and not ({n for n, (_, ok) in files.items() if not ok} & indexed)
    reasons = {Path(s["path"]).name: s["reason"] for s in g.skipped}
    for name, (_, ok) in files.items():
        if not ok:
            assert name in reasons and reasons[name], name
            check_message(reasons[name])
    COUNTS["files"] += len(files) + 2
    # the command line: an empty folder, a missing one, a file instead of a folder: one line each, exit 2
    empty = tmp_path / "empty"
    empty.mkdir()
    for images in (empty, tmp_path / "missing", files["cmyk.jpg"][0]):
        capsys.readouterr()
        rc = main(["index", "build", "--images", str(images), "--out", str(tmp_path / "x"),
                   "--vl-model", "isa-test-tiny", "--vl-pretrained", "none"])
        err = capsys.readouterr().err
        assert rc == 2 and "Traceback" not in err and err.strip(), err
        COUNTS["errors_seen"] += 1


def test_zz_fuzz_counts():
    print(f"\nfuzz inputs tried in this run: {COUNTS}")
