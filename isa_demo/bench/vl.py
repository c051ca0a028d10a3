"""Caption <-> image retrieval of a VL model on the world (scene level: any image or caption
with the same scene graph counts as a hit), and what it binds: for each kind of single change
(colour, shape, size, position, add, remove, background), how often a scene's caption scores its
own image above the image one change away (the world's reference/target pairs of that kind, in
both directions; 0.5 is chance), with the mean cosine of the two images and of the two captions.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from ..options import add_vl_args, add_world_arg, vl_kwargs
from ..settings import RESULTS_DIR
from ..vl.model import VLModel
from ..world import World


def _recall(scores: torch.Tensor, positives: list[set[int]], ks=(1, 5, 10)) -> dict:
    top = scores.topk(max(ks), dim=1).indices.cpu().numpy()
    hits = {k: np.mean([bool(positives[i] & set(top[i, :k].tolist())) for i in range(len(positives))]) for k in ks}
    return {f"R@{k}": float(v) for k, v in hits.items()}


@torch.no_grad()
def evaluate_vl(vl: VLModel, world: World, split: str = "test", batch_size: int = 256) -> pd.DataFrame:
    recs = world.records(split)
    arr = world.image_array(split, vl.image_size)
    img = torch.cat([vl.encode_image_tensor(vl.uint8_to_tensor(arr[i:i + batch_size]))
                     for i in range(0, len(recs), batch_size)])
    keys = sorted({r["key"] for r in recs})
    key_idx = {k: i for i, k in enumerate(keys)}
    captions = {r["key"]: r["caption"] for r in recs}
    txt = vl.encode_texts([captions[k] for k in keys])
    images_of = [set() for _ in keys]
    for i, r in enumerate(recs):
        images_of[key_idx[r["key"]]].add(i)
    c2i = _recall(txt @ img.T, images_of)
    i2c = _recall(img @ txt.T, [{key_idx[r["key"]]} for r in recs])
    return pd.DataFrame([
        {"model": vl.name, "split": split, "direction": "caption->image", "queries": len(keys), "gallery": len(recs),
         **c2i},
        {"model": vl.name, "split": split, "direction": "image->caption", "queries": len(recs), "gallery": len(keys),
         **i2c},
    ])


@torch.no_grad()
def binding(vl: VLModel, world: World, split: str = "test", batch_size: int = 256) -> pd.DataFrame:
    recs = {r["name"]: r for r in world.records(split)}
    pairs = [(q["reference"], q["target_hard"], q["mod_type"]) for q in world.queries(split)
             if not q["mod_type"].startswith("pair")]
    names = sorted({n for a, b, _ in pairs for n in (a, b)})
    row = {n: i for i, n in enumerate(names)}
    arr = world.image_array(split, vl.image_size)
    order = {r["name"]: i for i, r in enumerate(world.records(split))}
    sub = arr[[order[n] for n in names]]
    img = torch.cat([vl.encode_image_tensor(vl.uint8_to_tensor(sub[i:i + batch_size]))
                     for i in range(0, len(names), batch_size)]).float()
    txt = vl.encode_texts([recs[n]["caption"] for n in names]).float()
    img, txt = torch.nn.functional.normalize(img, dim=-1), torch.nn.functional.normalize(txt, dim=-1)
    out = []
    for kind in sorted({k for _, _, k in pairs}):
        a = torch.tensor([row[x] for x, _, k in pairs if k == kind])
        b = torch.tensor([row[y] for _, y, k in pairs if k == kind])
        own = torch.cat([(txt[a] * img[a]).sum(-1) > (txt[a] * img[b]).sum(-1),
                         (txt[b] * img[b]).sum(-1) > (txt[b] * img[a]).sum(-1)])
        out.append({"model": vl.name, "change": kind, "pairs": len(a),
                    "caption_prefers_own": float(own.float().mean()),
                    "image_cos": float((img[a] * img[b]).sum(-1).mean()),
                    "caption_cos": float((txt[a] * txt[b]).sum(-1).mean())})
    return pd.DataFrame(out)


def register(sub) -> None:
    p = sub.add_parser("vl", help="caption<->image retrieval of the VL model on the world (scene level)",
                       description="Scene-level caption->image and image->caption Recall@1/5/10 on a world split; "
                                   "writes assets/results/vl_retrieval.csv.")
    add_world_arg(p)
    p.add_argument("--split", default="test")
    add_vl_args(p)
    p.add_argument("--out", default=str(RESULTS_DIR / "vl_retrieval.csv"))
    p.add_argument("--binding-out", default=str(RESULTS_DIR / "vl_binding.csv"))
    p.set_defaults(func=_bench)


def _bench(args) -> int:
    from ..evaluation.results import merge_rows, write_table
    from ..vl import load_vl

    vl, world = load_vl(**vl_kwargs(args)), World(args.world)
    for df, out in ((evaluate_vl(vl, world, args.split), args.out), (binding(vl, world, args.split), args.binding_out)):
        if out:  # one table for every VL model measured: this model's rows replaced, the others kept
            df = merge_rows(df, out, "model")
        print(df.to_string(index=False, float_format="%.4f"))
        if out:
            write_table(df, out)
            print(f"wrote {out}")
    return 0
