"""Faults: a command killed (SIGKILL) at a random point and run again ends where an uninterrupted
run ends; a file flipped by one byte is refused with a message, never read into wrong results.

The kill tests run the real commands (``python -m isa_demo index build`` / ``train ...``) as
subprocesses on the tiny random-weight VL model and the small world: first uninterrupted (timed),
then killed after a uniformly random fraction of that time, then run again to completion; the
result must equal the uninterrupted one. The random points are drawn from ``ISA_DEMO_FAULT_SEED``
(default: a fresh seed, printed in every failure message). The trainers' kill tests are marked
``slow`` (``pytest -m slow``); the corruption tests are fast.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import TINY_BACKBONE, write_fake_checkpoints

SEED = int(os.environ.get("ISA_DEMO_FAULT_SEED", random.SystemRandom().randrange(1 << 30)))
RNG = random.Random(SEED)
REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "GRADIO_ANALYTICS_ENABLED": "False",
       "PYTHONPATH": str(REPO)}
COUNTS = {"kills": 0, "flips": 0}  # faults injected (printed at the end of a run with -s)


def isa_demo(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "isa_demo", *args], cwd=REPO, env=ENV, capture_output=True,
                          text=True, timeout=timeout)


def timed(*args: str) -> float:
    t = time.perf_counter()
    done = isa_demo(*args)
    assert done.returncode == 0, done.stderr[-3000:]
    return time.perf_counter() - t


def killed_at_random(args: list[str], full_seconds: float, after: Path | None = None) -> float:
    """Start the command, SIGKILL it after a random fraction of ``full_seconds`` (with ``after``:
    of what is left of it once ``after`` exists, e.g. a first saved state); the fraction."""
    frac = RNG.uniform(0.05, 0.95)
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "isa_demo", *args], cwd=REPO, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    if after is not None:
        while not after.exists() and proc.poll() is None and time.perf_counter() - t0 < 2 * full_seconds:
            time.sleep(0.02)
    left = max(full_seconds - (time.perf_counter() - t0), 0.1) if after is not None else full_seconds
    try:
        proc.wait(timeout=frac * left)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    COUNTS["kills"] += 1
    return frac


def same_tensors(a: Path, b: Path) -> None:
    from isa_demo.common import load_checkpoint

    sa, sb = load_checkpoint(a)[0], load_checkpoint(b)[0]
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), f"{k} differs (seed {SEED})"


@pytest.fixture(scope="module")
def tiny_weights(tiny_vl, tmp_path_factory):
    """The tiny VL model's weights in a file, so that every subprocess loads the same model."""
    from isa_demo.training.vl import export_safetensors

    path = tmp_path_factory.mktemp("vlw") / "tiny.safetensors"
    export_safetensors(tiny_vl.model, path, "isa-test-tiny", {})
    return str(path)


# ------------------------------------------------------------------------------------ kill and rerun
def test_index_build_killed_then_rerun_is_identical(small_world, tiny_weights, tmp_path):
    from isa_demo.index import GalleryIndex
    from isa_demo.index.ann import all_vectors

    images = tmp_path / "photos"
    shutil.copytree(small_world / "images" / "test", images)
    common = ["--images", str(images), "--vl-model", "isa-test-tiny", "--vl-pretrained", tiny_weights,
              "--workers", "0", "--batch-size", "16"]
    full = timed("index", "build", "--out", str(tmp_path / "a"), *common)
    frac = killed_at_random(["index", "build", "--out", str(tmp_path / "b"), *common], full)
    again = isa_demo("index", "build", "--out", str(tmp_path / "b"), "--force", *common)
    assert again.returncode == 0, f"killed at {frac:.2f} (seed {SEED}): {again.stderr[-2000:]}"
    a, b = GalleryIndex.load(tmp_path / "a"), GalleryIndex.load(tmp_path / "b")
    assert a.records == b.records and a.meta["model"] == b.meta["model"], f"seed {SEED}, killed at {frac:.2f}"
    np.testing.assert_array_equal(all_vectors(a.index), all_vectors(b.index))


def test_index_add_killed_leaves_the_old_index_or_the_new_one(small_world, tiny_weights, tmp_path):
    """``index add`` rewrites the index atomically: killed anywhere, the index on disk loads and is
    either the one before the add or the one after it; the rerun ends identical to an unbroken add."""
    from isa_demo.index import GalleryIndex
    from isa_demo.index.ann import all_vectors

    files = sorted((small_world / "images" / "test").iterdir())
    first, more = tmp_path / "first", tmp_path / "more"
    for folder, part in ((first, files[: len(files) // 2]), (more, files[len(files) // 2:])):
        folder.mkdir()
        for f in part:
            shutil.copy(f, folder / f.name)
    model = ["--vl-model", "isa-test-tiny", "--vl-pretrained", tiny_weights, "--workers", "0", "--batch-size", "8"]
    assert isa_demo("index", "build", "--images", str(first), "--out", str(tmp_path / "a"), *model).returncode == 0
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    before = GalleryIndex.load(tmp_path / "a").records
    full = timed("index", "add", "--index", str(tmp_path / "a"), "--images", str(more), *model)
    after = GalleryIndex.load(tmp_path / "a")
    assert len(after.records) == len(files)
    frac = killed_at_random(["index", "add", "--index", str(tmp_path / "b"), "--images", str(more), *model], full)
    assert GalleryIndex.load(tmp_path / "b").records in (before, after.records), f"killed at {frac:.2f} (seed {SEED})"
    again = isa_demo("index", "add", "--index", str(tmp_path / "b"), "--images", str(more), *model)
    assert again.returncode == 0, f"killed at {frac:.2f} (seed {SEED}): {again.stderr[-2000:]}"
    b = GalleryIndex.load(tmp_path / "b")
    assert b.records == after.records, f"seed {SEED}, killed at {frac:.2f}"
    np.testing.assert_array_equal(all_vectors(after.index), all_vectors(b.index))


def _trainer_args(kind: str, world: Path, weights: str, out: Path) -> list[str]:
    vl = ["--vl-model", "isa-test-tiny", "--vl-pretrained", weights]
    io = ["--world", str(world), "--out", str(out / "model.safetensors"), "--state", str(out / "state.pt"),
          "--device", "cpu", "--precision", "fp32", "--save-every", "1"]
    if kind == "vl":
        return ["train", "vl", "--name", "isa-test-tiny", "--epochs", "1", "--max-images", "48", "--batch-size", "8",
                *io]
    if kind == "isa":
        return ["train", "isa", "--backbone", TINY_BACKBONE, "-L", "2", "--steps", "6", "--batch-size", "8",
                "--images", "32", *vl, *io]
    return ["train", "masked-ti", "--steps", "5", "--images", "32", "--batch-size", "8", *vl, *io]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["vl", "isa", "masked-ti"])
def test_training_killed_then_rerun_resumes_to_the_same_weights(kind, small_world, tiny_weights, tmp_path):
    """Each trainer saves its state every step here (``--save-every 1``): killed anywhere (once at
    a random point of the whole run, then once more at a random point after it has saved a state)
    and run again, it resumes and ends with the uninterrupted run's weights, bit for bit."""
    world = tmp_path / "world"
    shutil.copytree(small_world, world, ignore=shutil.ignore_patterns("cache"))  # caches built by these runs
    a, b = tmp_path / "a", tmp_path / "b"
    full = timed(*_trainer_args(kind, world, tiny_weights, a))
    first = killed_at_random(_trainer_args(kind, world, tiny_weights, b), full)
    second = killed_at_random(_trainer_args(kind, world, tiny_weights, b), full, after=b / "state.pt")
    had_state = (b / "state.pt").exists()
    again = isa_demo(*_trainer_args(kind, world, tiny_weights, b))
    where = f"killed at {first:.2f}, then {second:.2f} after a saved state (seed {SEED})"
    assert again.returncode == 0, f"{where}: {again.stderr[-2000:]}"
    assert not had_state or "resumed from" in again.stdout + again.stderr, where
    same_tensors(a / "model.safetensors", b / "model.safetensors")


# ------------------------------------------------------------------------------------ one flipped byte
def flip(path: Path, where: float, bits: int = 0x01) -> int:
    """Flip the lowest bit (the quiet kind of damage: "3" becomes "2") of the byte of ``path`` at
    fraction ``where`` of its length; the offset."""
    data = bytearray(path.read_bytes())
    i = min(int(where * len(data)), len(data) - 1)
    data[i] ^= bits
    path.write_bytes(bytes(data))
    COUNTS["flips"] += 1
    return i


WHERE = [0.0, 0.01, 0.1, 0.33, 0.5, 0.77, 0.99, 1.0]


@pytest.fixture(scope="module")
def built_index(tiny_vl, small_world, tmp_path_factory):
    from isa_demo.index import GalleryIndex

    out = tmp_path_factory.mktemp("idx") / "index"
    images = sorted((small_world / "images" / "test").glob("*.png"))[:40]
    folder = out.parent / "photos"
    folder.mkdir()
    for p in images:
        shutil.copy(p, folder / p.name)
    GalleryIndex.build(folder, out, tiny_vl)
    return out


@pytest.mark.parametrize("name", ["index.faiss", "manifest.jsonl", "meta.json", "skipped.json"])
@pytest.mark.parametrize("where", WHERE)
def test_flipped_byte_in_an_index_is_refused(built_index, tiny_vl, tmp_path, name, where):
    from isa_demo.errors import UserError
    from isa_demo.index import GalleryIndex

    copy = tmp_path / "index"
    shutil.copytree(built_index, copy)
    offset = flip(copy / name, where)
    with pytest.raises(UserError, match="damaged|rebuild it") as e:
        GalleryIndex.load(copy, expected_identity=tiny_vl.identity())
    assert "Traceback" not in str(e.value), f"{name} byte {offset}"


def test_damaged_index_messages_say_what_and_how(built_index, tmp_path):
    from isa_demo.cli import main
    from isa_demo.index import GalleryIndex

    copy = tmp_path / "index"
    shutil.copytree(built_index, copy)
    flip(copy / "index.faiss", 0.5)
    with pytest.raises(Exception, match=r"index.faiss does not match the checksum in meta.json; it was not used; "
                                        r"rebuild it with `python -m isa_demo index build"):
        GalleryIndex.load(copy)
    assert main(["index", "info", "--index", str(copy)]) == 2  # the CLI says it in one line, exit 2
    assert "checksums  verified on load" in GalleryIndex.load(built_index).info()


@pytest.fixture(scope="module")
def checkpoints(tiny_vl, tmp_path_factory):
    return write_fake_checkpoints(tiny_vl, tmp_path_factory.mktemp("ckpt"))


@pytest.mark.parametrize("kind", ["isa", "masked-ti"])
@pytest.mark.parametrize("where", WHERE)
def test_flipped_byte_in_a_checkpoint_is_refused(checkpoints, tiny_vl, tmp_path, kind, where):
    from isa_demo.errors import UserError
    from isa_demo.methods import create_method

    spec = next(c for c in checkpoints if c["method"] == kind)
    copy = tmp_path / Path(spec["checkpoint"]).name
    shutil.copy(spec["checkpoint"], copy)
    flip(copy, where)
    with pytest.raises(UserError, match="damaged|cannot be read|not an isa-demo"):
        create_method(kind, tiny_vl, backbone=spec["backbone"], checkpoint=str(copy)) if kind == "isa" else \
            create_method(kind, tiny_vl, checkpoint=str(copy))


@pytest.mark.parametrize("where", [0.3, 0.6, 0.95])
def test_flipped_byte_in_a_vl_checkpoint_is_refused(tiny_weights, tmp_path, where):
    from isa_demo.errors import UserError
    from isa_demo.vl import load_vl

    copy = tmp_path / "tiny.safetensors"
    shutil.copy(tiny_weights, copy)
    flip(copy, where)
    with pytest.raises(UserError, match="damaged|cannot be read|does not match"):
        load_vl("isa-test-tiny", str(copy), device="cpu")


@pytest.mark.parametrize("where", WHERE)
def test_flipped_byte_in_a_results_table_is_refused(tmp_path, where):
    import pandas as pd

    from isa_demo.errors import IntegrityError
    from isa_demo.evaluation.results import load_accuracy, read_per_query, write_per_query, write_table

    df = pd.DataFrame({"method": ["sum", "isa"], "backbone": [None, TINY_BACKBONE], "R@1": [12.0, 30.5]})
    write_table(df, tmp_path / "accuracy.csv")
    assert load_accuracy(tmp_path)["R@1"].tolist() == [12.0, 30.5]
    flip(tmp_path / "accuracy.csv", where)
    with pytest.raises(IntegrityError, match="results table accuracy.csv is damaged"):
        load_accuracy(tmp_path)
    pq = write_per_query(pd.DataFrame({"query": [1, 2], "rank": [3, 4], "topk_ids": [[1, 2], [3, 4]]}),
                         tmp_path / "per_query" / "w_test_sum.parquet")
    assert read_per_query(pq)["rank"].tolist() == [3, 4]
    flip(pq, where)
    with pytest.raises(IntegrityError, match="per-query table"):
        read_per_query(pq)


def test_app_refuses_a_damaged_table_with_a_message(tiny_vl, small_world, tmp_path):
    """The app's readers: a damaged per-query table or accuracy table is a message on the page."""
    from helpers import tiny_service
    from isa_demo.app.inputs import InputError

    s = tiny_service(tiny_vl, small_world, tmp_path)
    flip(s.inspector.per_query_table_path("sum", None), 0.5)
    with pytest.raises(InputError, match="cannot be read \\(it may be damaged\\)"):
        s.inspector.per_query("sum")
    flip(tmp_path / "results" / "efficiency.csv", 0.5)
    fig, table, note = s.inspector.efficiency()
    assert fig is None and table is None and "could not be read (they may be damaged)" in note


def test_legacy_files_without_checksums_still_load(built_index, checkpoints, tiny_vl, tmp_path):
    """Files written before the checksums (the shipped ones) load as they are."""
    from safetensors.torch import load_file, save_file

    from isa_demo.common import CHECKSUM, read_metadata
    from isa_demo.index import GalleryIndex
    from isa_demo.methods import create_method

    copy = tmp_path / "index"
    shutil.copytree(built_index, copy)
    meta = json.loads((copy / "meta.json").read_text())
    meta.pop("checksums")
    (copy / "meta.json").write_text(json.dumps(meta))
    g = GalleryIndex.load(copy)
    assert not g.checksummed and "checksums  none" in g.info()
    spec = next(c for c in checkpoints if c["method"] == "isa")
    old = tmp_path / "old.safetensors"
    save_file(load_file(spec["checkpoint"]), str(old),
              metadata={k: v for k, v in read_metadata(spec["checkpoint"]).items() if k != CHECKSUM})
    create_method("isa", tiny_vl, backbone=TINY_BACKBONE, checkpoint=str(old))


def test_zz_fault_counts():
    print(f"\nfaults injected in this run: {COUNTS['kills']} kills, {COUNTS['flips']} one-byte flips (seed {SEED})")
