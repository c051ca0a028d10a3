"""Train the masked image-text pair textual inversion (METHOD.md 4, seed 002) and its baseline.

Per training pair (image ``I``, caption ``T``):

1. Noun: one maskable noun chunk of ``T`` (:mod:`isa_demo.training.nouns`, rule based, offline).
   On world images the chunks are exactly the scene's objects (their shape words), so every
   (image, object) pair is a training pair; one of an image's pairs is drawn at each visit.
2. CAM of that noun on ``I`` with the frozen VL model, and 3. ``I_m``: the image with the pixels
   whose CAM exceeds ``tau`` filled: both in :mod:`isa_demo.training.cam`, with the measurements
   that chose the defaults.
4. Losses, VL model frozen, only ``Phi`` learns (the gradient flows through the frozen text
   tower to the pseudo word):
   - query-target: ``u_q = normalize(E_T("a photo of * that {text}"))`` with
     ``* = Phi(E_I(I_m))`` must retrieve the unmasked ``g(I)``;
   - original: ``u_o = normalize(E_T("a photo of *"))`` with ``* = Phi(E_I(I))`` must
     retrieve ``g(I)``;
   both symmetric InfoNCE over the batch with temperature ``temperature``;
   ``L = w_qt * L_qt + w_orig * L_orig``. ``w_qt = 0`` is the single-token baseline.

The text half of the query (``query_text``; the paper leaves it open):
- ``scene`` (default on world images): the world's own "add" grammar built from the scene
  graph of the masked object: "add a large red star at the top left". The masked image lacks
  exactly that object, so (I_m, text) -> I is a true "add" triplet in the modifier language the
  benchmark uses.
- ``phrase``: "add a {noun phrase of the caption}" ("add a large red star"; on free-form
  captions "add a red double decker bus"): no scene graph needed.
- ``noun``: "add a {noun}" ("add a star").
The masked caption ("a [MASK] at the top left and ...") is what the visual check shows; the
losses do not read it.

Efficiency: the frozen features ``g(I)``, the CAMs (once per VL model and image subset) and
``g(I_m)`` (once per tau and fill) are computed once and cached atomically under the world's
``cache/masked_ti/``, so a training step runs only ``Phi`` and the text tower.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..common import atomic_path, default_device
from ..methods.base import PROMPT
from ..models.masked_ti import Phi, save_phi, shipped_checkpoint
from ..world import World
from ..world.scene import CELL_PHRASES
from . import precision as amp
from .cam import CAM_BASELINE, FILLS, compute_cams, mask_images, upsample_cam
from .data import DataError, DataSpec, check_same_data, report_skipped
from .distributed import SINGLE, average_gradients, barrier, batch_indices, setup
from .featcache import Features, MaskSpec, cached_source_features, vl_key
from .losses import info_nce
from .nouns import NounChunk, extract_nouns
from .state import cosine_schedule, load_state, output_paths, save_state

QUERY_TEXTS = ("scene", "phrase", "noun")
ORIGINAL_PROMPT = "a photo of *"


# ----------------------------------------------------------------------------- pairs and texts
def _article(phrase: str) -> str:
    return "an" if phrase[:1] in "aeiou" else "a"


def query_text(chunk: NounChunk, mode: str = "scene", obj: dict | None = None) -> str:
    """The text half of a training query (see the module doc)."""
    if mode not in QUERY_TEXTS:
        raise ValueError(f"query text must be one of {QUERY_TEXTS}, not {mode!r}")
    if mode == "scene" and obj is not None:
        return f"add a {obj['size']} {obj['colour']} {obj['shape']} {CELL_PHRASES[obj['cell']]}"
    if mode == "noun":
        return f"add {chunk.head}" if chunk.plural else f"add {_article(chunk.head)} {chunk.head}"
    return f"add {chunk.phrase}" if chunk.plural else f"add {_article(chunk.phrase)} {chunk.phrase}"


@dataclass
class Pairs:
    """All (image, noun) training pairs of the first ``n`` world train images."""

    image: np.ndarray            # (P,) image index
    chunks: list[NounChunk]      # (P,) the noun chunk in the image's caption
    objects: list[dict]          # (P,) the scene object the noun names
    start: np.ndarray            # (n,) first pair of each image
    count: np.ndarray            # (n,) pairs per image
    captions: list[str] = field(default_factory=list)  # (n,)

    def __len__(self) -> int:
        return len(self.image)

    def signature(self) -> str:
        h = hashlib.sha256(json.dumps([[int(i), c.head] for i, c in zip(self.image, self.chunks)]).encode())
        return h.hexdigest()[:12]

    def texts(self, mode: str) -> list[str]:
        return [query_text(c, mode, o) for c, o in zip(self.chunks, self.objects)]


def world_pairs(records: list[dict], n: int) -> Pairs:
    image, chunks, objects, caps = [], [], [], []
    start, count = np.zeros(n, np.int64), np.zeros(n, np.int64)
    for i, rec in enumerate(records[:n]):
        caps.append(rec["caption"])
        by_shape = {o["shape"]: o for o in rec["scene"]["objects"]}
        start[i] = len(image)
        for c in extract_nouns(rec["caption"]):
            if c.head in by_shape:
                image.append(i)
                chunks.append(c)
                objects.append(by_shape[c.head])
        count[i] = len(image) - start[i]
    if (count == 0).any():
        bad = int(np.argmax(count == 0))
        raise ValueError(f"no object noun found in the caption of train image {bad}: {caps[bad]!r}")
    return Pairs(np.array(image, np.int64), chunks, objects, start, count, caps)


def source_pairs(feats: Features) -> tuple[Pairs, np.ndarray]:
    """The (image, noun) pairs of a data source's cache, over the images that have one; returns
    them and those images' cache rows."""
    keep, start, count = np.unique(feats.pair_rows, return_index=True, return_counts=True)
    image = np.repeat(np.arange(len(keep)), count)
    return Pairs(image, feats.chunks, [None] * len(image), start, count,
                 [" / ".join(feats.captions[r]) for r in keep]), keep


# ----------------------------------------------------------------------------- caches
def _cached(path: Path, compute):
    if path.exists():
        return torch.load(path, map_location="cpu", weights_only=True)
    out = compute()
    with atomic_path(path) as tmp:
        torch.save(out, tmp)
    return out


@torch.no_grad()
def encode_uint8(vl, arr: np.ndarray, batch_size: int = 128, desc: str = "features", progress: bool = True):
    out = []
    for i in tqdm(range(0, len(arr), batch_size), desc=desc, disable=not progress):
        out.append(vl.encode_image_tensor(vl.uint8_to_tensor(np.array(arr[i:i + batch_size]))).half().cpu())
    return torch.cat(out) if out else torch.empty(0, vl.embed_dim, dtype=torch.float16)


def cached_features(vl, world: World, images: np.ndarray, n: int, progress: bool = True) -> torch.Tensor:
    """``g(I)`` of the first ``n`` train images ``(n, D)`` fp16."""
    path = world.root / "cache" / "masked_ti" / f"feats_{vl_key(vl)}_{n}.pt"
    return _cached(path, lambda: {"g": encode_uint8(vl, images[:n], desc="cache g(I)", progress=progress)})["g"]


def _cam_tag(mode: str, baseline: str | None, cam_text: str) -> str:
    tag = f"{mode}_{cam_text}"
    return f"{tag}_b{hashlib.sha256(baseline.encode()).hexdigest()[:6]}" if baseline else tag


def cached_cams(vl, world: World, images: np.ndarray, pairs: Pairs, mode: str, baseline: str | None = CAM_BASELINE,
                cam_text: str = "phrase", progress: bool = True) -> torch.Tensor:
    """CAMs of every pair ``(P, gh, gw)`` fp16 (independent of tau)."""
    path = (world.root / "cache" / "masked_ti" /
            f"cams_{vl_key(vl)}_{pairs.signature()}_{_cam_tag(mode, baseline, cam_text)}.pt")

    def compute():
        cams = []
        for i in tqdm(range(0, len(pairs), 64), desc="cache CAMs", disable=not progress):
            sl = slice(i, i + 64)
            cams.append(compute_cams(vl, images[pairs.image[sl]], pairs.chunks[sl], mode, baseline, cam_text).half())
        return {"cams": torch.cat(cams)}

    return _cached(path, compute)["cams"]


def cached_masked_features(vl, world: World, images: np.ndarray, pairs: Pairs, cams: torch.Tensor, tau: float,
                           fill: str, cam_tag: str, progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """``g(I_m)`` of every pair ``(P, D)`` fp16 and the masked fraction ``(P,)`` for one tau."""
    path = (world.root / "cache" / "masked_ti" /
            f"masked_{vl_key(vl)}_{pairs.signature()}_{cam_tag}_tau{tau:g}_{fill}.pt")

    def compute():
        feats, frac = [], []
        for i in tqdm(range(0, len(pairs), 128), desc=f"cache g(I_m) tau={tau:g}", disable=not progress):
            sl = slice(i, i + 128)
            imgs = np.asarray(images[pairs.image[sl]])
            masked, m = mask_images(imgs, upsample_cam(cams[sl], imgs.shape[1:3]), tau, fill)
            feats.append(encode_uint8(vl, masked, progress=False))
            frac.append(torch.from_numpy(m.reshape(len(m), -1).mean(1)).half())
        return {"g_masked": torch.cat(feats), "masked_fraction": torch.cat(frac)}

    d = _cached(path, compute)
    return d["g_masked"], d["masked_fraction"]


# ----------------------------------------------------------------------------- training
def default_name(tau: float, w_qt: float, w_orig: float, query_text: str) -> str:
    if w_qt == 0:
        return "single-token" if w_orig == 1 else f"single-token-wo{w_orig:g}"
    name = "masked-ti"
    if tau != 0.3:
        name += f"-tau{tau:g}"
    if query_text != "scene":
        name += f"-{query_text}"
    if (w_qt, w_orig) != (1.0, 1.0):
        name += f"-wqt{w_qt:g}-wo{w_orig:g}"
    return name


def train_masked_ti(world: str | World, tau: float = 0.3, w_qt: float = 1.0, w_orig: float = 1.0,
                    query_text: str = "scene", temperature: float = 0.05, images: int = 10000, steps: int = 500,
                    batch_size: int = 128, lr: float = 5e-4, weight_decay: float = 0.01, dropout: float = 0.1,
                    fill: str = "median", cam_mode: str = "layercam", cam_baseline: str | None = CAM_BASELINE,
                    cam_text: str = "phrase", seed: int = 0, name: str | None = None,
                    out: str | Path | None = None, state_path: str | Path | None = None, device: str | None = None,
                    vl=None, vl_name: str | None = None, vl_pretrained: str = "builtin", save_every: int = 100,
                    progress: bool = True, precision: str = "auto", data: DataSpec | str | None = None) -> Path:
    """Train ``Phi`` and export it (fp16 safetensors + metadata). Resumable: rerun to continue.
    ``data``: image-caption pairs of a table / COCO JSON / WebDataset (:mod:`isa_demo.training.data`;
    a folder without captions trains the single-token baseline only) instead of the world's; the
    features, CAMs and masked features go to the feature cache (:mod:`isa_demo.training.featcache`)."""
    from ..vl import load_vl

    if query_text not in QUERY_TEXTS:
        raise ValueError(f"query_text must be one of {QUERY_TEXTS}, not {query_text!r}")
    if fill not in FILLS:
        raise ValueError(f"fill must be one of {FILLS}, not {fill!r}")
    if w_qt < 0 or w_orig < 0 or w_qt + w_orig == 0:
        raise ValueError("loss weights must be >= 0 and not both 0")
    data = DataSpec.of(data)
    device = device or (vl.device if vl is not None else default_device())
    d = setup(device) if data else SINGLE
    device = d.device if data else device
    precision = amp.resolve(precision, device)
    if vl is None:
        vl = load_vl(vl_name, vl_pretrained, device=device)
    torch.manual_seed(seed)
    method = "single-token" if w_qt == 0 else "masked-ti"
    if data is not None and query_text == "scene":
        query_text = "phrase"  # a scene graph is the world's; a caption's noun phrase is what a source has
    name = name or default_name(tau, w_qt, w_orig, query_text)
    out, state_path = output_paths("masked-ti", name, vl, shipped_checkpoint(name, vl.name), out, state_path)

    t_pre = time.time()
    gm_all = frac = None
    if data is None:
        w = world if isinstance(world, World) else World(world)
        records = w.records("train")
        n = min(images, len(records))
        if n < 2:
            raise ValueError("need at least 2 training images")
        arr = w.image_array("train", vl.image_size, progress=progress)
        pairs = world_pairs(records, n)
        g_all = cached_features(vl, w, arr, n, progress)
        if w_qt > 0:
            cams = cached_cams(vl, w, arr, pairs, cam_mode, cam_baseline, cam_text, progress)
            gm_all, frac = cached_masked_features(vl, w, arr, pairs, cams, tau, fill,
                                                  _cam_tag(cam_mode, cam_baseline, cam_text), progress)
        source_facts = {"world_seed": w.meta["seed"], "world_size": w.meta.get("size")}
    else:
        mask = MaskSpec(cam_mode, cam_baseline, cam_text, tau, fill) if w_qt > 0 else None
        source, feats, cache_facts = cached_source_features(data, vl, images, mask=mask, d=d,
                                                            progress=progress and d.main)
        if d.main:
            report_skipped(feats.skipped, Path(out).with_suffix(".skipped.json"))
        g_all, pairs = feats.g, None
        if w_qt > 0:
            pairs, keep = source_pairs(feats)
            g_all, gm_all, frac = g_all[torch.from_numpy(keep)], feats.g_masked, feats.masked_fraction
        n = len(g_all)
        if n < 2:
            raise DataError(f"need at least 2 usable training images in {data.source}, found {n}"
                            + (" with a maskable English noun in a caption" if w_qt > 0 else ""))
        source_facts = {"data": source.describe(), "skipped": len(feats.skipped), "ranks": d.world, **cache_facts}
    batch_size = min(batch_size, n)
    pre_seconds = time.time() - t_pre
    texts = pairs.texts(query_text) if pairs is not None else []

    phi = Phi.for_vl(vl, dropout=dropout).to(device)
    opt = torch.optim.AdamW(phi.parameters(), lr=lr, weight_decay=weight_decay)
    sched = cosine_schedule(opt, warmup=min(100, steps // 10 + 1), total=steps)
    config = {"method": method, "tau": tau if w_qt > 0 else None, "w_qt": w_qt, "w_orig": w_orig,
              "query_text": query_text if w_qt > 0 else None, "temperature": temperature, "train_images": n,
              "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay, "dropout": dropout,
              "fill": fill if w_qt > 0 else None, "cam_mode": cam_mode if w_qt > 0 else None,
              "cam_baseline": (cam_baseline or "") if w_qt > 0 else None,
              "cam_text": cam_text if w_qt > 0 else None, "seed": seed,
              "steps": steps, "precision": precision}
    step, extra = load_state(state_path, phi, opt, sched, vl=vl.identity())
    if step:
        check_same_data(state_path, extra.get("data"), source_facts.get("data"))
    if step and extra.get("config") not in (None, config):
        raise RuntimeError(f"{state_path} holds a run with another configuration ({extra['config']}); "
                           f"delete it or pass another --state / --name")
    elapsed = float(extra.get("elapsed_s", 0.0))

    phi.train()
    t0 = time.time()
    last = {}
    bar = tqdm(range(step, steps), initial=step, total=steps, desc=f"train {name}", disable=not (progress and d.main))
    for step in bar:
        idx = batch_indices(step, batch_size, n, seed, d)
        idx_t = torch.from_numpy(idx)
        g = g_all[idx_t].float().to(device)
        loss = torch.zeros((), device=device)
        parts = {}
        # two text-tower calls: "a photo of *" is short, so it is not padded to the query prompts
        if w_orig > 0:
            with amp.autocast(device, precision):
                u_o = vl.encode_with_pseudo_tokens([ORIGINAL_PROMPT] * len(idx), phi(g)[:, None])
            parts["orig"] = info_nce(F.normalize(u_o.float(), dim=-1) @ g.T / temperature)
            loss = loss + w_orig * parts["orig"]
        if w_qt > 0:
            u = np.random.default_rng([seed, 1_000_000 + step]).random(len(idx))
            pidx = pairs.start[idx] + np.floor(u * pairs.count[idx]).astype(np.int64)
            gm = gm_all[torch.from_numpy(pidx)].float().to(device)
            with amp.autocast(device, precision):
                u_q = vl.encode_with_pseudo_tokens([PROMPT.format(modifier=texts[p]) for p in pidx], phi(gm)[:, None])
            parts["qt"] = info_nce(F.normalize(u_q.float(), dim=-1) @ g.T / temperature)
            loss = loss + w_qt * parts["qt"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        average_gradients(list(phi.parameters()), d)
        torch.nn.utils.clip_grad_norm_(phi.parameters(), 1.0)
        opt.step()
        sched.step()
        last = {k: round(v.item(), 4) for k, v in parts.items()}
        bar.set_postfix(**{k: f"{v:.3f}" for k, v in last.items()})
        if d.main and ((step + 1) % save_every == 0 or step + 1 == steps):
            save_state(state_path, step + 1, phi, opt, sched,
                       {"elapsed_s": elapsed + time.time() - t0, "config": config, "data": source_facts.get("data"),
                        "vl": vl.identity()})
    elapsed += time.time() - t0
    phi.eval()
    facts = {**config, **source_facts, "pairs": len(pairs) if pairs is not None else 0, "final_losses": last,
             "masked_fraction_mean": round(float(frac.float().mean()), 4) if frac is not None else None,
             "train_seconds": round(elapsed, 1), "precompute_seconds": round(pre_seconds, 1), "device": device,
             "torch_threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d")}
    if d.main:
        save_phi(out, phi, vl.identity(), facts)
        if progress:
            print(json.dumps({"checkpoint": str(out), **facts}))
    barrier(d)
    return out
