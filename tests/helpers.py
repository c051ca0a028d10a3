"""A small, self-contained demo for tests: a tiny random VL model's service over a small world,
with random-weight ISA and masked-pair checkpoints (and one for every trained method of the
registry) and hand-made results tables, and a helper to serve it on 127.0.0.1 in a background thread."""
from __future__ import annotations

import os
import socket
from pathlib import Path

from isa_demo.app.service import DemoService

TINY_BACKBONE = "mobilenetv3_small_100"


def write_fake_checkpoints(vl, out: str | os.PathLike, num_tokens: int = 3) -> list[dict]:
    """Random-weight ISA (``mobilenetv3_small_100``) and masked-ti checkpoints for ``vl``."""
    from isa_demo.models import EncoderConfig, QueryEncoder
    from isa_demo.models.masked_ti import Phi, save_phi

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    isa = out / f"{TINY_BACKBONE}.safetensors"
    if not isa.exists():
        enc = QueryEncoder(EncoderConfig(backbone=TINY_BACKBONE, word_dim=vl.word_dim, num_tokens=num_tokens),
                           imagenet_init=False)
        enc.save(isa, vl.identity())
    phi = out / "masked-ti.safetensors"
    if not phi.exists():
        save_phi(phi, Phi.for_vl(vl), vl.identity(), {"method": "masked-ti"})
    return [{"method": "isa", "backbone": TINY_BACKBONE, "checkpoint": str(isa)},
            {"method": "masked-ti", "backbone": None, "checkpoint": str(phi)}]


def fake_method_kwargs(vl, out: str | os.PathLike) -> dict[str, dict]:
    """``create_method`` keyword arguments for every trained method of the registry, with
    random-weight checkpoints for ``vl`` (the training-free methods need none)."""
    from isa_demo.models import SYMMETRIC, EncoderConfig, QueryEncoder
    from isa_demo.models.masked_ti import Phi, save_phi

    out = Path(out)
    isa, masked = write_fake_checkpoints(vl, out)
    symmetric = out / f"{SYMMETRIC}.safetensors"
    if not symmetric.exists():
        QueryEncoder(EncoderConfig(backbone=SYMMETRIC, word_dim=vl.word_dim, num_tokens=2), vl=vl,
                     imagenet_init=False).save(symmetric, vl.identity())
    single = out / "single-token.safetensors"
    if not single.exists():
        save_phi(single, Phi.for_vl(vl), vl.identity(), {"method": "single-token"})
    return {"isa": {"backbone": TINY_BACKBONE, "checkpoint": isa["checkpoint"]},
            "isa-symmetric": {"checkpoint": str(symmetric)},
            "masked-ti": {"checkpoint": masked["checkpoint"]},
            "single-token": {"checkpoint": str(single)}}


def write_fake_results(vl, world_dir: str | os.PathLike, out: str | os.PathLike) -> Path:
    """``accuracy.csv`` + ``efficiency.csv`` (made-up numbers) and the real per-query tables of the
    ``sum`` and ``image-only`` baselines on the world's test split."""
    import pandas as pd

    from isa_demo.evaluation import evaluate
    from isa_demo.evaluation.results import write_table
    from isa_demo.methods import create_method

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_table(pd.DataFrame([
        {"method": "image-only", "backbone": None, "R@1": 5.0},
        {"method": "sum", "backbone": None, "R@1": 12.0},
        {"method": "isa", "backbone": TINY_BACKBONE, "R@1": 30.0},
        {"method": "isa", "backbone": "efficientnet_b0", "R@1": 33.0},
        {"method": "caption-oracle", "backbone": None, "R@1": 60.0},
    ]), out / "accuracy.csv")
    rows = []
    for method, backbone, gflops, ms in [("vl-image-tower", "", 1.5, 9.0), ("sum", "", 1.5, 9.5),
                                         ("isa", TINY_BACKBONE, 0.06, 2.0), ("isa", "efficientnet_b0", 0.4, 6.0)]:
        for stage, scale in (("query_image_encoder", 1.0), ("text_encoder", 3.0)):
            rows.append({"model": f"{method}:{backbone}", "method": method, "backbone": backbone or None,
                         "setting": "world", "stage": stage, "params": 1e6, "gflops": gflops * scale,
                         "cpu_ms_p50": ms * scale, "gpu_ms_p50": 0.5, "peak_mem_mb": 10.0})
    write_table(pd.DataFrame(rows), out / "efficiency.csv")
    for method in ("sum", "image-only"):  # two per-query tables: the inspector, and the rank change between them
        evaluate("world", world_dir, "test", create_method(method, vl), out=out, progress=False)
    return out


def tiny_service(vl, world_dir: str | os.PathLike, work: str | os.PathLike, results: bool = True) -> DemoService:
    """The demo service over ``world_dir``'s test split for ``vl``, everything else under ``work``."""
    from isa_demo.index import default_gallery
    from isa_demo.world import World

    work = Path(work)
    world = World(world_dir)
    gallery = default_gallery(vl, world_dir=world_dir, size=world.meta["size"], seed=world.meta["seed"],
                              index_dir=work / "gallery")
    variants = write_fake_checkpoints(vl, work / "checkpoints")
    res = write_fake_results(vl, world_dir, work / "results") if results else work / "no-results"
    return DemoService(vl, gallery, world, results_dir=res, variants=variants, gallery_label="the small test world")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(service: DemoService, concurrency: int = 2):
    """Launch the demo on 127.0.0.1 without blocking; returns ``(demo, url)``; ``demo.close()`` stops it."""
    from isa_demo.app.cli import build_demo, launch

    demo = build_demo(service, concurrency)
    port = free_port()
    launch(demo, service, "127.0.0.1", port, block=False, quiet=True)
    return demo, f"http://127.0.0.1:{port}/"


SHAPE_COLOURS = {"red": (220, 30, 30), "blue": (30, 60, 220), "green": (30, 180, 60), "yellow": (230, 210, 40)}


def photo(i: int) -> tuple[bytes, str]:
    """A small non-square JPEG 'photo' of one coloured shape (drawn from seed ``i``) and its caption."""
    import io

    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(i)
    colour = list(SHAPE_COLOURS)[i % 4]
    shape = ("circle", "square")[(i // 4) % 2]
    img = Image.fromarray(rng.integers(90, 160, (48, 64, 3), dtype=np.uint8))
    draw = ImageDraw.Draw(img)
    box = (10 + i % 20, 8, 40 + i % 20, 38)
    (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=SHAPE_COLOURS[colour])
    buf = io.BytesIO()
    img.save(buf, format="JPEG")
    return buf.getvalue(), f"a {colour} {shape} on a grey table"


def write_shards(folder: str | os.PathLike, shards: int, per_shard: int) -> Path:
    """WebDataset shards ``00000.tar ...`` of :func:`photo` images (``jpg``) and captions (``txt``)."""
    import io
    import tarfile

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for s in range(shards):
        with tarfile.open(folder / f"{s:05d}.tar", "w") as tar:
            for i in range(s * per_shard, (s + 1) * per_shard):
                data, caption = photo(i)
                for ext, payload in (("jpg", data), ("txt", caption.encode())):
                    info = tarfile.TarInfo(f"{i:06d}.{ext}")
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
    return folder
