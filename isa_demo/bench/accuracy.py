"""`bench accuracy`: every shipped method/backbone on the world's test split, one table.

Writes ``assets/results/accuracy.csv`` (one row per method and backbone, every metric, each
metric as a fraction of the caption-oracle ceiling in ``{metric}_of_oracle``, and the command,
machine and date of the run; a last row, the inversion oracle, is the reference's caption composed
with the modifier: the ceiling of the pseudo-token methods) and a sidecar ``accuracy.json`` with
the same provenance plus the variants that could not be built. The per-query tables land in ``per_query/`` as usual.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..common import atomic_path, write_json
from ..evaluation.results import ACCURACY_CSV
from ..evaluation.runner import (
    INVERSION_ORACLE,
    ORACLE,
    RESULTS_DIR,
    TABLE_TOP_K,
    CaptionOracle,
    EvalReport,
    build_method,
    evaluate,
    machine_info,
    now_utc,
)
from ..options import add_world_arg, command_line

ID_COLUMNS = ["method", "backbone", "checkpoint", "vl_model", "vl_pretrained", "world", "split", "n_queries"]
PROVENANCE_COLUMNS = ["command", "machine", "date"]


def metric_columns(df: pd.DataFrame) -> list[str]:
    """The metric columns of an accuracy table (not ids, provenance or ``*_of_oracle``)."""
    skip = set(ID_COLUMNS) | set(PROVENANCE_COLUMNS)
    return [c for c in df.columns if c not in skip and not c.endswith("_of_oracle")]


def _row(rep: EvalReport, variant: dict, vl, world, split: str) -> dict:
    return {"method": rep.method, "backbone": rep.backbone or variant.get("backbone"),
            "checkpoint": variant.get("checkpoint"), "vl_model": vl.name,
            "vl_pretrained": os.path.basename(vl.pretrained) if vl.pretrained else "none",
            "world": str(world), "split": split, "n_queries": rep.n_queries, **rep.metrics}


def bench_accuracy(world: str | os.PathLike, vl, split: str = "test", out: str | os.PathLike = RESULTS_DIR,
                   limit: int | None = None, variants: Sequence[dict] | None = None, progress: bool = True,
                   command: str | None = None, top_k: int = TABLE_TOP_K, cache_dir=None) -> tuple[pd.DataFrame, dict]:
    """Run the caption oracle and every variant (default :func:`isa_demo.methods.shipped_variants`);
    returns the table and the provenance record (both also written under ``out``)."""
    if variants is None:
        from ..methods import shipped_variants

        variants = shipped_variants(vl.name)
    gallery: dict = {}
    kw = dict(out=out, limit=limit, gallery=gallery, progress=progress, command=command, top_k=top_k,
              cache_dir=cache_dir)
    rows, skipped = [], []
    for variant in variants:
        try:
            method = build_method(variant["method"], vl, variant.get("backbone"), variant.get("checkpoint"))
        except Exception as e:  # a variant that cannot be built is reported, the others still run
            skipped.append({**variant, "error": f"{type(e).__name__}: {e}"})
            print(f"skipped {variant['method']} {variant.get('backbone') or ''}: {type(e).__name__}: {e}")
            continue
        rep = evaluate("world", world, split, method, **kw)
        print(rep.format(), end="\n\n")
        rows.append(_row(rep, variant, vl, world, split))
    oracle = evaluate("world", world, split, CaptionOracle(vl), **kw)
    print(oracle.format(), end="\n\n")
    rows.append(_row(oracle, {"method": ORACLE}, vl, world, split))
    inversion = evaluate("world", world, split, CaptionOracle(vl, inversion=True), **kw)
    print(inversion.format(), end="\n\n")
    rows.append(_row(inversion, {"method": INVERSION_ORACLE}, vl, world, split))

    df = pd.DataFrame(rows)
    metrics = metric_columns(df)
    ceiling = df.loc[df["method"] == ORACLE, metrics].iloc[0]
    for m in metrics:
        df[f"{m}_of_oracle"] = df[m] / ceiling[m] if ceiling[m] > 0 else np.nan
    machine = machine_info()
    record = {"command": command, "machine": machine, "date": now_utc(), "world": str(world), "split": split,
              "limit": limit, "vl": vl.identity(), "variants": list(variants), "skipped": skipped}
    df["command"] = command
    df["machine"] = f"{machine['platform']} | {machine['cpu']} | {machine['cpu_count']} cores"
    df["date"] = record["date"]
    path = Path(out) / ACCURACY_CSV
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, float_format="%.4f")
    write_json(path.with_suffix(".json"), record, indent=2)
    return df, record


# ----------------------------------------------------------------------------- command
def register(sub) -> None:
    from ..evaluation.cli import add_eval_args

    p = sub.add_parser("accuracy", help="every shipped method/backbone on the world's test split",
                       description="Run every shipped variant and the caption oracle on the world; write "
                                   "assets/results/accuracy.csv (+ accuracy.json provenance).")
    add_world_arg(p)
    p.add_argument("--split", default="test")
    p.add_argument("--out", default=None,
                   help=f"results folder (default {RESULTS_DIR} for the default VL model, {RESULTS_DIR}/vl/NAME "
                        f"for another built-in one)")
    add_eval_args(p)
    p.set_defaults(func=_accuracy)


def _accuracy(args) -> int:
    import sys

    from ..evaluation.cli import load_eval_vl
    from ..evaluation.results import results_dir_for

    vl = load_eval_vl(args)
    args.out = args.out or str(results_dir_for(vl.name))
    df, record = bench_accuracy(args.world, vl, split=args.split, out=args.out, limit=args.limit,
                                progress=not args.quiet, command=command_line(args, "bench", "accuracy"),
                                top_k=args.top_k, cache_dir=args.cache_dir)
    cols = [c for c in ["method", "backbone", "R@1", "R@5", "R@10", "R@50", "Rs@1", "mAP@10", "R@1_of_oracle"]
            if c in df]
    print(df[cols].round(3).to_string(index=False))
    print(f"wrote {args.out}/accuracy.csv and accuracy.json")
    if record["skipped"]:
        print(f"{len(record['skipped'])} variant(s) skipped (see accuracy.json)", file=sys.stderr)
        return 1
    return 0
