"""`python -m isa_demo bench isa-ablation`: GCD only vs GCD + LAR (both options), and L in 1/2/4/8.

Every arm trains the same backbone for the same number of steps on the same unlabeled images
(checkpoints under ``runs/ablation/``, resumable; an arm already trained is reused), then is
evaluated on the world's test split. The arm trained as a shipped checkpoint was (same L, LAR
option, steps and images) can reuse it with ``--reuse-shipped``.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ..options import add_world_arg
from ..settings import LIGHTEST_BACKBONE, RESULTS_DIR, RUNS_DIR

ARMS = [  # (arm, L, lar)
    ("GCD only", 4, "none"),
    ("GCD + LAR (late)", 4, "late"),
    ("GCD + LAR (vocab)", 4, "vocab"),
    ("L=1", 1, "late"),
    ("L=2", 2, "late"),
    ("L=8", 8, "late"),
]
KEEP = ["R@1", "R@5", "R@10", "R@50", "Rs@1", "Rs@2", "Rs@3", "mAP@5", "mAP@10", "mAP@25", "mAP@50"]


def register(sub) -> None:
    p = sub.add_parser("isa-ablation", help="train + evaluate the ISA ablations (GCD/LAR, L) for one backbone",
                       description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default=LIGHTEST_BACKBONE)
    add_world_arg(p)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--images", type=int, default=20000)
    p.add_argument("--arms", nargs="+", default=None, help="subset of arm names (default: all)")
    p.add_argument("--reuse-shipped", action="store_true",
                   help="use the shipped checkpoint for the arm trained as it was (same L, LAR, steps, images)")
    p.add_argument("--out", default=str(RESULTS_DIR / "isa_ablation.csv"))
    p.set_defaults(func=_bench)


def _bench(args) -> int:
    from ..evaluation.results import write_table
    from ..evaluation.runner import evaluate
    from ..methods import create_method
    from ..models import shipped_checkpoint
    from ..training.isa import train_isa
    from ..vl import load_vl

    vl = load_vl()
    gallery: dict = {}
    rows = []
    shipped = shipped_checkpoint(args.backbone)
    shipped_recipe = _recipe(shipped) if args.reuse_shipped and shipped.exists() else None
    for arm, L, lar in ARMS:
        if args.arms and arm not in args.arms:
            continue
        ckpt = RUNS_DIR / "ablation" / f"{args.backbone}_L{L}_{lar}_{args.steps}.safetensors"
        if shipped_recipe == (L, lar, args.steps, args.images):
            ckpt = shipped
        if not ckpt.exists():
            train_isa(args.world, args.backbone, out=str(ckpt), num_tokens=L, lar=lar, steps=args.steps,
                      images=args.images, state_path=str(ckpt.with_suffix(".state.pt")))
        method = create_method("isa", vl, backbone=args.backbone, checkpoint=str(ckpt))
        rep = evaluate("world", args.world, "test", method, out=None, gallery=gallery, progress=False)
        facts = method.encoder.meta
        rows.append({"arm": arm, "backbone": args.backbone, "L": L, "lar": lar, "steps": int(facts["steps"]),
                     "train_seconds": float(facts["train_seconds"]), **{k: rep.metrics[k] for k in KEEP},
                     **{k: v for k, v in rep.metrics.items() if k.startswith("R@1/")}})
        print(json.dumps({k: rows[-1][k] for k in ("arm", "R@1", "mAP@10")}))
    df = pd.DataFrame(rows)
    print(df[["arm", "L", "lar", "steps", "R@1", "R@10", "Rs@1", "mAP@10"]].to_string(index=False,
                                                                                       float_format="%.4f"))
    write_table(df, args.out)
    print(f"wrote {args.out}")
    return 0


def _recipe(path: Path) -> tuple:
    """(L, LAR option, steps, images) as the checkpoint's training command recorded them."""
    from ..common import read_metadata

    meta = read_metadata(path)
    return (json.loads(meta["config"])["num_tokens"], meta.get("lar"), int(meta.get("steps", -1)),
            int(meta.get("train_images", -1)))
