"""``python -m isa_demo bench precision``: what mixed precision buys each trainer here, and what it costs.

For every trainer (VL, ISA with the lightest backbone, ISA symmetric, masked-pair) a short run of
``--steps`` steps in fp32 and in bf16 (fp16 on a GPU without bf16); the table has seconds per step
(the training loop only, as the trainers record it: no feature caching or data loading) and the
speedup. The accuracy effect: the symmetric ISA encoder (the fastest to train) trained
``--accuracy-steps`` steps in each precision and evaluated on the world's test split (R@1, mAP@10).
Short runs go to ``runs/precision/`` (removed before each run, so nothing resumes). Writes
``assets/results/precision.csv`` (speed) and ``precision_accuracy.csv`` (the accuracy effect).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd

from ..common import default_device, read_metadata
from ..options import add_world_arg
from ..settings import LIGHTEST_BACKBONE, RESULTS_DIR, RUNS_DIR, SYMMETRIC


def _seconds_per_step(path, steps: int) -> float:
    return float(read_metadata(path)["train_seconds"]) / steps


def bench_precision(world: str, steps: int = 20, accuracy_steps: int = 300, device: str | None = None,
                    out_dir=RUNS_DIR / "precision") -> tuple[pd.DataFrame, pd.DataFrame]:
    from ..evaluation.runner import evaluate
    from ..methods import create_method
    from ..training import precision as amp
    from ..training.isa import train_isa
    from ..training.masked_ti import train_masked_ti
    from ..training.vl import train_vl
    from ..vl import load_vl
    from ..world import World

    device = device or default_device()
    low = amp.resolve("auto", device)
    if low == "fp32":
        low = "bf16"  # measured anyway: what this hardware would do with it
    shutil.rmtree(out_dir, ignore_errors=True)
    n_train = len(World(world).records("train"))
    vl = load_vl(device=device)
    trainers = {
        "vl": lambda p, o: train_vl(world, out=o, epochs=steps * 64 / n_train, state_path=o + ".state", device=device,
                                    precision=p, name="isa-world-vit-v2"),
        f"isa {LIGHTEST_BACKBONE}": lambda p, o: train_isa(world, LIGHTEST_BACKBONE, out=o, steps=steps,
                                                           state_path=o + ".state", device=device, precision=p),
        "isa symmetric": lambda p, o: train_isa(world, SYMMETRIC, out=o, steps=steps, state_path=o + ".state",
                                                device=device, precision=p),
        "masked-ti": lambda p, o: train_masked_ti(world, steps=steps, images=1024, out=o, state_path=o + ".state",
                                                  vl=vl, precision=p, progress=False),
    }
    rows = []
    for name, run in trainers.items():
        times = {}
        for p in ("fp32", low):
            path = run(p, str(out_dir / f"{name.replace(' ', '_')}_{p}.safetensors"))
            n = int(read_metadata(path)["steps"])
            times[p] = _seconds_per_step(path, n)
        rows.append({"trainer": name, "steps": n, "mixed": low, "fp32_s_per_step": times["fp32"],
                     "mixed_s_per_step": times[low], "speedup": times["fp32"] / times[low]})
        print(json.dumps(rows[-1]))
    accuracy = []
    gallery: dict = {}
    for p in ("fp32", low) if accuracy_steps else ():
        path = train_isa(world, SYMMETRIC, out=str(out_dir / f"acc_{p}.safetensors"), steps=accuracy_steps,
                         state_path=str(out_dir / f"acc_{p}.state"), device=device, precision=p)
        rep = evaluate("world", world, "test", create_method("isa-symmetric", vl, checkpoint=str(path)),
                       out=None, gallery=gallery, progress=False)
        accuracy.append({"trainer": "isa symmetric", "precision": p, "steps": accuracy_steps,
                         "train_seconds": float(read_metadata(path)["train_seconds"]),
                         **{k: rep.metrics[k] for k in ("R@1", "R@10", "mAP@10")}})
    return pd.DataFrame(rows), pd.DataFrame(accuracy)


def register(sub) -> None:
    p = sub.add_parser("precision", help="seconds per training step in fp32 vs bf16 for every trainer",
                       description=__doc__.splitlines()[0])
    add_world_arg(p)
    p.add_argument("--steps", type=int, default=20, help="timed steps per trainer and precision")
    p.add_argument("--accuracy-steps", type=int, default=300,
                   help="steps of the symmetric ISA encoder trained in each precision and evaluated (0: skip)")
    p.add_argument("--device", default=None)
    p.add_argument("--out", default=str(RESULTS_DIR / "precision.csv"))
    p.set_defaults(func=_bench)


def _bench(args) -> int:
    from ..evaluation.results import write_table

    speed, accuracy = bench_precision(args.world, args.steps, args.accuracy_steps, args.device)
    print(speed.to_string(index=False, float_format="%.4f"))
    write_table(speed, args.out)
    if len(accuracy):
        print(accuracy.to_string(index=False, float_format="%.2f"))
        write_table(accuracy, Path(args.out).with_name("precision_accuracy.csv"))
    print(f"wrote {args.out}")
    return 0
