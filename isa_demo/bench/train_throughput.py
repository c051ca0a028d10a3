"""``python -m isa_demo bench train-throughput``: images per second of training on real data.

Writes ``--images`` generated photos (JPEG, 640 x 480, one caption each naming two objects) and a
CSV over them to a temporary folder, then, on each device (the CPU, and CUDA when present), with
an open_clip ``--vl-model`` (default ViT-B-32, random weights: the size is what counts) at its own
224 px and the lightest backbone at ``--image-size``:

- ``train isa``, first run: ``features`` (the VL feature cache filled: decoding, preprocessing,
  encoding) and ``train`` (the training steps, ``steps x batch`` images), each in images per
  second; a second run of the same command on a warm cache (``features`` read back), and the
  speedup of the warm cache over the cold one for the features stage and for the whole run;
- ``train masked-ti``: ``features`` (global features, a CAM per (image, noun) pair, masked
  features) and ``train``.

Timings are the ones the trainers record in their checkpoints (``features_seconds``,
``train_seconds``). Writes ``assets/results/train_throughput.csv``.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pandas as pd

from ..common import read_metadata
from ..settings import LIGHTEST_BACKBONE, RESULTS_DIR


def write_photos(folder: Path, n: int, size: tuple[int, int] = (640, 480)) -> Path:
    """``n`` JPEG photos of two coloured shapes on a noisy background and ``train.csv`` over them."""
    import numpy as np
    from PIL import Image, ImageDraw

    colours = {"red": (220, 30, 30), "blue": (30, 60, 220), "green": (30, 180, 60), "yellow": (230, 210, 40)}
    shapes = ("ball", "box")
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        rng = np.random.default_rng(i)
        img = Image.fromarray(rng.integers(60, 200, (size[1], size[0], 3), dtype=np.uint8))
        draw = ImageDraw.Draw(img)
        words = []
        for _ in range(2):
            colour, shape = list(colours)[int(rng.integers(4))], shapes[int(rng.integers(2))]
            x, y = int(rng.integers(0, size[0] - 200)), int(rng.integers(0, size[1] - 200))
            (draw.ellipse if shape == "ball" else draw.rectangle)((x, y, x + 180, y + 180), fill=colours[colour])
            words.append(f"a {colour} {shape}")
        img.save(folder / f"{i:06d}.jpg", quality=90)
        rows.append({"filepath": f"{i:06d}.jpg", "title": f"{words[0]} next to {words[1]} on a table"})
    pd.DataFrame(rows).to_csv(folder / "train.csv", index=False)
    return folder / "train.csv"


def _times(path) -> tuple[float, float, int]:
    m = read_metadata(path)
    return float(m["features_seconds"]), float(m["train_seconds"]), int(m["train_images"])


def bench_train_throughput(images: int = 256, steps: int = 10, batch_size: int = 64, image_size: int = 224,
                           vl_model: str = "ViT-B-32", devices: list[str] | None = None, workers: int = 2,
                           masked: bool = True) -> pd.DataFrame:
    import torch

    from ..training.data import DataSpec
    from ..training.isa import train_isa
    from ..training.masked_ti import train_masked_ti
    from ..vl import load_vl

    devices = devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    rows = []
    work = Path(tempfile.mkdtemp(prefix="isa-demo-train-throughput-"))
    try:
        table = write_photos(work / "photos", images)
        for device in devices:
            vl = load_vl(vl_model, None, device=device)
            spec = DataSpec(str(table), cache=str(work / f"cache-{device}"), workers=workers)
            common = {"device": device, "vl": vl_model, "backbone": LIGHTEST_BACKBONE, "image_size": image_size,
                      "batch_size": batch_size, "steps": steps}
            runs = []
            for run in ("cold", "warm"):
                out = work / f"isa-{device}-{run}.safetensors"
                train_isa("unused", LIGHTEST_BACKBONE, out=str(out), state_path=str(out) + ".state", steps=steps,
                          batch_size=batch_size, image_size=image_size, images=images, device=device, data=spec,
                          vl=vl)
                runs.append(_times(out))
            (f_cold, t_cold, n), (f_warm, t_warm, _) = runs
            rows += [
                {**common, "trainer": "isa", "stage": "features (cold cache)", "images": n, "seconds": f_cold},
                {**common, "trainer": "isa", "stage": "train", "images": steps * batch_size, "seconds": t_cold},
                {**common, "trainer": "isa", "stage": "features (warm cache)", "images": n, "seconds": f_warm,
                 "speedup_vs_cold": f_cold / max(f_warm, 1e-9)},
                {**common, "trainer": "isa", "stage": "run (cold cache)", "images": n, "seconds": f_cold + t_cold},
                {**common, "trainer": "isa", "stage": "run (warm cache)", "images": n, "seconds": f_warm + t_warm,
                 "speedup_vs_cold": (f_cold + t_cold) / max(f_warm + t_warm, 1e-9)},
            ]
            if masked:
                out = work / f"masked-{device}.safetensors"
                train_masked_ti("unused", steps=steps, batch_size=batch_size, images=images, data=spec, vl=vl,
                                out=str(out), state_path=str(out) + ".state", progress=False)
                f, t, n = _times(out)
                rows += [{**common, "backbone": None, "image_size": vl.image_size, "trainer": "masked-ti",
                          "stage": "features (cold cache)", "images": n, "seconds": f},
                         {**common, "backbone": None, "image_size": vl.image_size, "trainer": "masked-ti",
                          "stage": "train", "images": steps * batch_size, "seconds": t}]
            print(json.dumps(rows[-1]))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    df = pd.DataFrame(rows)
    df["images_per_s"] = df["images"] / df["seconds"].clip(lower=1e-9)
    return df


def register(sub) -> None:
    p = sub.add_parser("train-throughput", help="images/s of train isa (cold and warm feature cache) and masked-ti",
                       description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=256, help="generated photos (default %(default)s)")
    p.add_argument("--steps", type=int, default=10, help="training steps per run (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=64, help="images per step (default %(default)s)")
    p.add_argument("--image-size", type=int, default=224, help="light backbone input size (default %(default)s)")
    p.add_argument("--vl-model", default="ViT-B-32", help="open_clip model, random weights (default %(default)s)")
    p.add_argument("--devices", nargs="+", default=None, help="default: cpu, and cuda when present")
    p.add_argument("--workers", type=int, default=2, help="DataLoader decoding processes (default %(default)s)")
    p.add_argument("--no-masked", dest="masked", action="store_false", help="leave out train masked-ti")
    p.add_argument("--out", default=str(RESULTS_DIR / "train_throughput.csv"))
    p.set_defaults(func=_bench)


def _bench(args) -> int:
    from ..evaluation.results import write_table

    df = bench_train_throughput(args.images, args.steps, args.batch_size, args.image_size, args.vl_model,
                                args.devices, args.workers, args.masked)
    print(df.to_string(index=False, float_format="%.2f"))
    write_table(df, args.out)
    print(f"wrote {args.out}")
    return 0
