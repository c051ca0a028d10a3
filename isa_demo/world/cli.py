"""`python -m isa_demo world ...`"""
from __future__ import annotations

from ..options import add_world_arg


def register(sub) -> None:
    p = sub.add_parser("build", help="render the built-in world (train/val/test) deterministically",
                       description="Render the built-in world into DIR: images, scene graphs, CIRR and CIRCO "
                                   "layouts. Same seed and size give the same bytes; an interrupted build resumes.")
    add_world_arg(p, "--out", "output directory")
    p.add_argument("--seed", type=int, default=0, help="world seed (default 0)")
    p.add_argument("--size", choices=["small", "full"], default="full", help="small: for tests; full: the benchmark")
    p.add_argument("--workers", type=int, default=None, help="render processes (default: CPU count)")
    p.add_argument("--splits", nargs="+", choices=["test", "val", "train"], default=["test", "val", "train"],
                   help="which splits to render (default: all)")
    p.set_defaults(func=_build)

    p = sub.add_parser("info", help="summarise a built world")
    add_world_arg(p)
    p.set_defaults(func=_info)


def _build(args) -> int:
    from .build import build_world

    out = build_world(args.out, seed=args.seed, size=args.size, workers=args.workers, splits=tuple(args.splits))
    print(f"world ready in {out}")
    return 0


def _info(args) -> int:
    import collections

    from .build import World

    w = World(args.world)
    print(f"world {w.root}: seed={w.meta['seed']} size={w.meta['size']} image_size={w.meta['image_size']}")
    for split, c in w.meta["counts"].items():
        print(f"  {split:5s} images={c['images']:>6d} queries={c['queries']:>5d}")
        if c["queries"]:
            types = collections.Counter(q["mod_type"].split(":")[0] for q in w.queries(split))
            print("        " + ", ".join(f"{k}={v}" for k, v in sorted(types.items())))
    return 0
