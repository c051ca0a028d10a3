"""Does the masked-pair method mask the right thing? ``python -m isa_demo masking-sheet``.

:func:`cam_localization` measures how well the CAMs find the named object on world images (the
table in :mod:`isa_demo.training.cam` comes from it); :func:`masking_sheet` draws a contact sheet
of (image, CAM heatmap, masked image, masked caption and query text) rows for world images and
real photos with a COCO-style captions file.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..common import atomic_path
from ..options import add_vl_args, add_world_arg, vl_kwargs
from ..settings import RUNS_DIR
from ..training.cam import (
    CAM_BASELINE,
    CAM_MODES,
    CAM_TEXTS,
    FILLS,
    compute_cams,
    mask_images,
    to_model_uint8,
    upsample_cam,
)
from ..training.masked_ti import query_text
from ..training.nouns import NounChunk, mask_caption, pick_noun
from ..world import World
from ..world.scene import SHAPES


def cam_localization(vl, world: World, split: str = "train", n: int = 256, mode: str = "layercam",
                     baseline: str | None = CAM_BASELINE, tau: float = 0.3, seed: int = 0,
                     cam_text: str = "phrase") -> dict:
    """How well the CAMs find the named object on world images, using the scene graphs.

    ``pointing``: the CAM's argmax lies in the named object's grid cell; ``pointing_any``: in
    any object's cell; ``masked_fraction``: pixels above ``tau``; ``cell_coverage``: fraction
    of the named object's cell above ``tau``; ``outside_masked``: fraction of the pixels
    outside every object cell above ``tau`` (background that gets erased)."""
    recs = world.records(split)
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(recs), size=min(n, len(recs)), replace=False))
    arr = world.image_array(split, vl.image_size, progress=False)
    imgs = np.array(arr[idx])
    objs = [recs[i]["scene"]["objects"][int(rng.integers(len(recs[i]["scene"]["objects"])))] for i in idx]
    size = imgs.shape[1]
    names = [f"{o['size']} {o['colour']} {o['shape']}" if cam_text == "phrase" else o["shape"] for o in objs]
    ups = upsample_cam(compute_cams(vl, imgs, names, mode, baseline), size)
    named = torch.zeros_like(ups, dtype=torch.bool)
    anyobj = torch.zeros_like(named)
    for b, (i, o) in enumerate(zip(idx, objs)):
        for obj in recs[i]["scene"]["objects"]:
            r, c = divmod(obj["cell"], 3)
            sl = (b, slice(r * size // 3, (r + 1) * size // 3), slice(c * size // 3, (c + 1) * size // 3))
            anyobj[sl] = True
            if obj is o:
                named[sl] = True
    am = ups.flatten(1).argmax(1)
    m = ups > tau
    return {"images": len(idx), "mode": mode, "baseline": baseline or "", "cam_text": cam_text, "tau": tau,
            "pointing": round(float(named.flatten(1)[torch.arange(len(idx)), am].float().mean()), 3),
            "pointing_any": round(float(anyobj.flatten(1)[torch.arange(len(idx)), am].float().mean()), 3),
            "masked_fraction": round(float(m.float().mean()), 3),
            "cell_coverage": round(float((m & named).sum() / named.sum()), 3),
            "outside_masked": round(float((m & ~anyobj).sum() / (~anyobj).sum()), 3)}


# ----------------------------------------------------------------------------- visual check
def _heat(cam: np.ndarray) -> np.ndarray:
    """[0, 1] map -> RGB uint8 (a small jet-like colormap, no matplotlib needed)."""
    c = np.clip(cam, 0, 1)[..., None]
    stops = np.array([[0, 0, 128], [0, 0, 255], [0, 255, 255], [255, 255, 0], [255, 0, 0], [128, 0, 0]], float)
    pos = c * (len(stops) - 1)
    lo = np.floor(pos).astype(int).clip(0, len(stops) - 2)
    t = pos - lo
    return (stops[lo[..., 0]] * (1 - t) + stops[lo[..., 0] + 1] * t).astype(np.uint8)


@dataclass
class SheetRow:
    image: np.ndarray            # uint8 (S, S, 3) at the VL model's size
    caption: str
    chunk: NounChunk | None
    text: str = ""               # the query text of this pair


def sheet_rows_world(world: World, split: str, n: int, size: int, seed: int = 0,
                     mode: str = "scene") -> list[SheetRow]:
    recs = world.records(split)
    rng = np.random.default_rng(seed)
    rows = []
    for i in rng.choice(len(recs), size=min(n, len(recs)), replace=False):
        rec = recs[int(i)]
        chunk = pick_noun(rec["caption"], rng, allowed=set(SHAPES))
        obj = next((o for o in rec["scene"]["objects"] if chunk and o["shape"] == chunk.head), None)
        rows.append(SheetRow(to_model_uint8(world.image_path(rec), size), rec["caption"], chunk,
                             query_text(chunk, mode, obj) if chunk else ""))
    return rows


def sheet_rows_captions(captions_json: str | Path, image_dir: str | Path, n: int, size: int,
                        seed: int = 0) -> list[SheetRow]:
    """Rows from a COCO-style captions file (``images`` + ``annotations``) and its image folder."""
    d = json.loads(Path(captions_json).read_text())
    files = {im["id"]: im["file_name"] for im in d.get("images", [])}
    by_image: dict = {}
    for a in d.get("annotations", []):
        if (Path(image_dir) / files.get(a["image_id"], "")).is_file():
            by_image.setdefault(a["image_id"], []).append(" ".join(a["caption"].split()))
    rng = np.random.default_rng(seed)
    ids = sorted(by_image)
    rows = []
    for i in rng.permutation(len(ids)):
        caps = by_image[ids[int(i)]]
        cap = caps[int(rng.integers(len(caps)))]
        chunk = pick_noun(cap, rng)
        if chunk is None:
            continue
        rows.append(SheetRow(to_model_uint8(Path(image_dir) / files[ids[int(i)]], size), cap, chunk,
                             query_text(chunk, "phrase")))
        if len(rows) >= n:
            break
    return rows


def _wrap(text: str, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return lines + ([line] if line else [])


def masking_sheet(vl, rows: list[SheetRow], tau: float, out: str | Path, fill: str = "median",
                  cam_mode: str = "layercam", cam_baseline: str | None = CAM_BASELINE, cam_text: str = "phrase",
                  panel: int = 160, title: str = "") -> Path:
    """PNG sheet: one row per (image, CAM heatmap, masked image, masked caption + query text)."""
    ok = [r for r in rows if r.chunk is not None]
    imgs = np.stack([r.image for r in ok]) if ok else np.zeros((0, vl.image_size, vl.image_size, 3), np.uint8)
    cams = (compute_cams(vl, imgs, [r.chunk for r in ok], cam_mode, cam_baseline, cam_text) if ok
            else torch.zeros(0, 1, 1))
    ups = upsample_cam(cams, imgs.shape[1:3]) if ok else cams
    masked, masks = mask_images(imgs, ups, tau, fill) if ok else (imgs, None)
    text_w, pad, head = 420, 6, 28
    W = 3 * (panel + pad) + text_w + pad
    H = head + len(ok) * (panel + pad) + pad
    sheet = Image.new("RGB", (W, H), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    draw.text((pad, 8), title or f"CAM ({cam_mode}) masking, tau={tau:g}, fill={fill}, VL={vl.name} "
                                  f"({str(vl.checkpoint_sha256)[:10]})   columns: image | CAM | masked", fill=(0, 0, 0))

    def put(arr, x, y):
        sheet.paste(Image.fromarray(arr).resize((panel, panel), Image.Resampling.NEAREST), (x, y))

    for j, r in enumerate(ok):
        y = head + j * (panel + pad)
        cam = ups[j].numpy()
        overlay = (0.45 * r.image + 0.55 * _heat(cam)).astype(np.uint8)
        put(r.image, pad, y)
        put(overlay, pad + panel + pad, y)
        put(masked[j], pad + 2 * (panel + pad), y)
        lines = [f"noun: {r.chunk.head}   masked {100 * masks[j].mean():.0f}% of pixels", ""]
        lines += _wrap(mask_caption(r.caption, r.chunk), 62)
        if r.text:
            lines += ["", "query text:"] + _wrap(r.text, 62)
        tx = pad + 3 * (panel + pad)
        for k, line in enumerate(lines[: panel // 12]):
            draw.text((tx, y + 2 + 12 * k), line, fill=(0, 0, 0))
    out = Path(out)
    with atomic_path(out) as tmp:
        sheet.save(tmp, format="PNG")
    return out


# ----------------------------------------------------------------------------- command
def register_command(top) -> None:
    p = top.add_parser("masking-sheet", help="PNG sheet of the masked-pair method's noun / CAM / masking",
                       description="Rows of (image, CAM heatmap of the chosen noun, masked image, masked caption "
                                   "and query text) for world images and, optionally, real photos with a "
                                   "COCO-style captions file. CAMs mean something only with a trained VL model.")
    add_world_arg(p)
    p.add_argument("--split", default="train")
    p.add_argument("--n", type=int, default=8, help="world rows (0: none)")
    p.add_argument("--tau", type=float, default=0.3)
    p.add_argument("--fill", choices=FILLS, default=FILLS[0])
    p.add_argument("--cam-mode", choices=CAM_MODES, default=CAM_MODES[0])
    p.add_argument("--cam-baseline", default=CAM_BASELINE, help="'' for none")
    p.add_argument("--cam-text", choices=CAM_TEXTS, default=CAM_TEXTS[0])
    p.add_argument("--coco-captions", default=None, help="COCO captions JSON (e.g. .../captions_val2017.json)")
    p.add_argument("--coco-images", default=None, help="folder of the images the captions file names")
    p.add_argument("--n-coco", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(RUNS_DIR / "masked-ti" / "masking-sheet.png"))
    p.add_argument("--measure", type=int, default=0, metavar="N",
                   help="also print how well the CAMs find the named object on N world images (scene graphs)")
    add_vl_args(p)
    p.set_defaults(func=_sheet)


def _sheet(args) -> int:
    from ..vl import load_vl

    vl = load_vl(**vl_kwargs(args))
    rows = []
    if args.n > 0:
        rows += sheet_rows_world(World(args.world), args.split, args.n, vl.image_size, args.seed)
    if args.coco_captions:
        if not args.coco_images:
            print("--coco-captions needs --coco-images (the folder of its images)")
            return 2
        rows += sheet_rows_captions(args.coco_captions, args.coco_images, args.n_coco, vl.image_size, args.seed)
    if not rows:
        print("nothing to draw: give --n > 0 or --coco-captions/--coco-images")
        return 2
    out = masking_sheet(vl, rows, args.tau, args.out, fill=args.fill, cam_mode=args.cam_mode,
                        cam_baseline=args.cam_baseline or None, cam_text=args.cam_text)
    print(f"wrote {out} ({len(rows)} rows)")
    if args.measure > 0:
        print(json.dumps(cam_localization(vl, World(args.world), args.split, args.measure, args.cam_mode,
                                          args.cam_baseline or None, args.tau, args.seed, args.cam_text)))
    return 0
