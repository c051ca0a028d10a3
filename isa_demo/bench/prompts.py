"""`python -m isa_demo bench prompts`: where does a pseudo-token method lose, in the inversion or
in the composition?

Every pseudo-token method is evaluated on the world's test split with several composition
templates: the METHOD.md one (``a photo of * that {modifier}``), the inversion alone
(``a photo of *``: the modifier dropped, so the query can at best find the reference's look-alikes)
and a variant phrasing. If dropping the modifier scores higher than using it, the text tower does
not compose this modifier language with the pseudo words.
"""
from __future__ import annotations

import json

import pandas as pd

from ..methods import PROMPT
from ..options import add_world_arg
from ..settings import RESULTS_DIR

PROMPTS = [PROMPT, "a photo of *", "a photo of * {modifier}"]
VARIANTS = ["isa:mobilenetv3_small_100", "isa-symmetric", "masked-ti"]
KEEP = ["R@1", "R@10", "Rs@1", "mAP@10"]


def register(sub) -> None:
    p = sub.add_parser("prompts", help="pseudo-token methods under several composition templates",
                       description=__doc__.splitlines()[0] + " " + " ".join(__doc__.splitlines()[1:3]))
    add_world_arg(p)
    p.add_argument("--variants", nargs="+", default=VARIANTS, help="METHOD or METHOD:BACKBONE (default: %(default)s)")
    p.add_argument("--prompts", nargs="+", default=PROMPTS, help="templates (default: %(default)s)")
    p.add_argument("--limit", type=int, default=None, help="only the first N queries")
    p.add_argument("--out", default=str(RESULTS_DIR / "prompts.csv"))
    p.set_defaults(func=_bench)


def _bench(args) -> int:
    from ..evaluation.results import write_table
    from ..evaluation.runner import build_method, evaluate
    from ..vl import load_vl

    vl = load_vl()
    gallery: dict = {}
    rows = []
    for variant in args.variants:
        name, _, backbone = variant.partition(":")
        for prompt in args.prompts:
            method = build_method(name, vl, backbone or None, prompt=prompt)
            rep = evaluate("world", args.world, "test", method, out=None, gallery=gallery, limit=args.limit,
                           progress=False)
            rows.append({"method": method.name, "backbone": getattr(method, "backbone", "") or "", "prompt": prompt,
                         **{k: rep.metrics[k] for k in KEEP},
                         **{k: v for k, v in rep.metrics.items() if k.startswith("R@1/")}})
            print(json.dumps({k: rows[-1][k] for k in ("method", "backbone", "prompt", "R@1", "mAP@10")}))
    df = pd.DataFrame(rows)
    write_table(df, args.out)
    print(df[["method", "backbone", "prompt"] + KEEP].to_string(index=False, float_format="%.2f"))
    print(f"wrote {args.out}")
    return 0
