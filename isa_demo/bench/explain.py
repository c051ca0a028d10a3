"""``python -m isa_demo bench explain``: does the explanation panel explain? Measured on the world's
test references for every shipped ISA encoder.

- ``word_names_reference``: of all pseudo words, the fraction whose nearest learned word (the VL
  model's own vocabulary, :meth:`isa_demo.vl.VLModel.nearest_words`) is a shape or a colour present
  in the reference; ``word_names_any_attribute``: the fraction whose nearest word is any shape or
  colour word at all (chance level for the first);
- ``object_gets_peak``: of all objects in the references, the fraction whose grid cell holds the
  attention peak of at least one pseudo word (the token learner's maps, mapped onto the world's
  3x3 grid); ``peak_cells_distinct``: distinct peak cells per reference divided by L (1: every
  word looks somewhere else; 1/L: all look at one place);
- ``map_entropy``: mean normalized entropy of the attention maps (1: uniform, 0: one location).

Writes ``assets/results/explain.csv`` (one table for every VL model measured: rerunning one model
replaces only its rows).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from ..options import add_vl_args, add_world_arg, vl_kwargs
from ..settings import RESULTS_DIR, SYMMETRIC
from ..world import World
from ..world.scene import COLOURS, SHAPES

ATTRIBUTE_WORDS = set(SHAPES) | set(COLOURS)


def _cells(maps: np.ndarray) -> np.ndarray:
    """``(L, h, w)`` maps -> the world grid cell (0..8) of each map's peak."""
    L, h, w = maps.shape
    r, c = np.unravel_index(maps.reshape(L, -1).argmax(1), (h, w))
    return (r * 3 // h) * 3 + (c * 3 // w)


def explain_stats(method, world: World, split: str = "test", limit: int | None = None, batch_size: int = 64) -> dict:
    """The figures above for one ISA method over the references of ``split``'s queries."""
    recs = {r["name"]: r for r in world.records(split)}
    refs = list(dict.fromkeys(q["reference"] for q in world.queries(split)))[:limit]
    names_ref = names_any = n_words = objects = peaked = 0
    distinct, entropy = [], []
    enc, vl = method.encoder, method.vl
    for i in range(0, len(refs), batch_size):
        batch = [recs[n] for n in refs[i:i + batch_size]]
        with torch.no_grad():
            words, maps = enc(enc.preprocess([world.image_path(r) for r in batch]))
        maps = maps.float().cpu().numpy()
        for rec, w, m in zip(batch, words, maps):
            objs = rec["scene"]["objects"]
            present = {o["shape"] for o in objs} | {o["colour"] for o in objs}
            nearest = [row[0][0] for row in vl.nearest_words(w, k=1)]
            names_ref += sum(x in present for x in nearest)
            names_any += sum(x in ATTRIBUTE_WORDS for x in nearest)
            n_words += len(nearest)
            cells = set(_cells(m).tolist())
            objects += len(objs)
            peaked += sum(o["cell"] in cells for o in objs)
            distinct.append(len(cells) / len(m))
            p = m.reshape(len(m), -1)
            p = p / p.sum(1, keepdims=True)
            entropy.append(float((-(p * np.log(p + 1e-12)).sum(1) / np.log(p.shape[1])).mean()))
    return {"references": len(refs), "word_names_reference": names_ref / n_words,
            "word_names_any_attribute": names_any / n_words, "object_gets_peak": peaked / objects,
            "peak_cells_distinct": float(np.mean(distinct)), "map_entropy": float(np.mean(entropy))}


def bench_explain(world: str, vl, limit: int | None = None) -> pd.DataFrame:
    from ..methods import create_method, shipped_variants

    w = World(world)
    rows = []
    for v in shipped_variants(vl.name):
        if v["method"] not in ("isa", "isa-symmetric"):
            continue
        method = create_method(v["method"], vl, backbone=v["backbone"], checkpoint=v["checkpoint"])
        backbone = method.encoder.cfg.backbone
        rows.append({"method": "isa-symmetric" if backbone == SYMMETRIC else "isa", "backbone": backbone,
                     "vl_model": vl.name, "num_tokens": method.encoder.cfg.num_tokens,
                     "vocabulary_words": None if vl.vocabulary is None else len(vl.vocabulary),
                     **explain_stats(method, w, limit=limit)})
        print({k: (round(x, 3) if isinstance(x, float) else x) for k, x in rows[-1].items()})
    return pd.DataFrame(rows)


def register(sub) -> None:
    p = sub.add_parser("explain", help="how often pseudo words and attention peaks name what is in the reference",
                       description=__doc__.splitlines()[0])
    add_world_arg(p)
    add_vl_args(p)
    p.add_argument("--limit", type=int, default=None, help="only the first N references")
    p.add_argument("--out", default=str(RESULTS_DIR / "explain.csv"))
    p.set_defaults(func=_bench)


def _bench(args) -> int:
    from ..evaluation.results import merge_rows, write_table
    from ..vl import load_vl

    df = merge_rows(bench_explain(args.world, load_vl(**vl_kwargs(args)), args.limit), args.out, "vl_model")
    print(df.to_string(index=False, float_format="%.3f"))
    write_table(df, args.out)
    print(f"wrote {args.out}")
    return 0
