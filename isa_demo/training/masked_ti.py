"""Train the masked image-text pair textual inversion (METHOD.md 4, seed 002) and its baseline.

Per training pair (image ``I``, caption ``T``):

1. Noun: one maskable noun chunk of ``T`` (:mod:`isa_demo.training.nouns`, rule based, offline).
   On world images the chunks are exactly the scene's objects (their shape words), so every
   (image, object) pair is a training pair; one of an image's pairs is drawn at each visit.
2. CAM of that noun on ``I`` with the frozen VL model, Grad-CAM style on the ViT image tower.
   Target ``S = cos(E_I(I), t_noun) - cos(E_I(I), t_base)`` with ``t_noun`` the text feature
   of "a photo of a {noun phrase}" ("a photo of a large red star": the chunk's modifiers and
   its noun; ``cam_text="noun"`` names the noun alone, "a photo of a star") and ``t_base`` that
   of "a photo" (``cam_baseline``; subtracting it removes the gradient that every text shares).
   Activations ``A``: the tokens entering a block's attention (its ``ln_1`` output; the last
   block's *output* patch tokens never reach the pooled class token, so their gradient is
   zero). ``cam_mode``:
   - ``layercam`` (default): per patch token ``ReLU(sum_c dS/dA_kc * A_kc)`` for every block,
     each max-normalized, averaged over the blocks;
   - ``gradcam``: classic Grad-CAM on the last block, channel weights = gradient averaged over
     the patch tokens, ``ReLU(sum_c w_c A_kc)``;
   - ``gradxact``: the ``layercam`` map of the last block only.
   The map is min-max normalized to [0, 1] per image and bilinearly upsampled to the image.
   The defaults were chosen by measurement (:func:`cam_localization`, i.e.
   ``python -m isa_demo masking-sheet --measure 128 --cam-mode M --cam-baseline B --cam-text T``;
   128 world train images with 1-3 objects, tau 0.3; the named object's grid cell is 1/9 of
   the image; "pointing": the CAM's maximum lies in the named object's cell), with the
   built-in VL model isa-world-vit (sha256 ef8c543a...), 2026-11-22:

   ======================================  ========  ============  ======  =====  ==========
   CAM (mode, baseline, text)              pointing  pointing_any  masked  cell   background
                                                                   pixels  cover  masked
   ======================================  ========  ============  ======  =====  ==========
   gradcam, none, noun (the literal spec)  0.37      0.66          86%     63%    93%
   gradcam, "a photo", noun                0.46      0.88          37%     45%    35%
   layercam, none, noun                    0.31      0.67          69%     61%    73%
   layercam, "a photo", noun               0.59      0.99          17%     60%     4%
   gradcam, "a photo", phrase              0.71      0.94          11%     47%     5%
   gradxact, "a photo", phrase             0.79      0.99           7%     38%     1%
   layercam, "a photo", phrase (default)   0.91      1.00          14%     83%     2%
   same, tau 0.2 / 0.4                     0.91      1.00          19/10%  92/71% 4/0.6%
   ======================================  ========  ============  ======  =====  ==========

   Classic Grad-CAM against the plain noun mostly highlights the *background* (the "opposite
   visualization" of CLIP-style models); the baseline removes most of that, the layer average
   covers the object where the last block alone finds only its centre, and naming the noun
   phrase (the caption's own words) picks the right one of several objects.
3. ``I_m``: the pixels whose CAM exceeds ``tau`` are filled with the image's median colour
   (``fill="median"``: on world images that is the background colour, so the object is erased
   rather than painted over; the mean of the unmasked pixels was tried first and turns into
   the object's colour when the CAM fails and masks most of the image), its mean colour
   (``mean``) or mid grey (``grey``). A CAM that is zero everywhere masks nothing.
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
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from ..common import atomic_path, default_device, load_image
from ..methods.base import PROMPT
from ..methods.masked_ti import ORIGINAL_PROMPT, Phi, save_phi, shipped_checkpoint
from ..world import World
from ..world.scene import CELL_PHRASES, SHAPES
from .nouns import NounChunk, cam_prompt, extract_nouns, mask_caption, pick_noun
from .state import cosine_schedule, load_state, save_state

QUERY_TEXTS = ("scene", "phrase", "noun")
FILLS = ("median", "mean", "grey")
CAM_MODES = ("layercam", "gradcam", "gradxact")
CAM_BASELINE = "a photo"
CAM_TEXTS = ("phrase", "noun")


# ----------------------------------------------------------------------------- CAM and masking
def grad_cam(vl, x: torch.Tensor, text_features: torch.Tensor, mode: str = "layercam",
             baseline: torch.Tensor | None = None) -> torch.Tensor:
    """Class-activation maps ``(B, gh, gw)`` in [0, 1] of normalized text features ``(B, D)`` on
    images ``x`` (normalized model input); needs a ViT image tower (see the module doc).

    Target: ``cos(E_I(x), t)``, minus ``cos(E_I(x), baseline)`` when a baseline text feature is
    given. Activations ``A``: the input tokens of a block's attention (its ``ln_1`` output).
    ``gradcam``: last block, ``ReLU(sum_c mean_k(dS/dA_kc) A_kc)``; ``gradxact``: last block,
    ``ReLU(sum_c dS/dA_kc A_kc)`` per token; ``layercam``: ``gradxact`` of every block, each
    max-normalized, averaged. Each map is min-max normalized per image.
    """
    if mode not in CAM_MODES:
        raise ValueError(f"cam mode must be one of {CAM_MODES}, not {mode!r}")
    v = vl.model.visual
    if not hasattr(v, "transformer") or not hasattr(v, "grid_size"):
        raise ValueError(f"CAMs need a ViT image tower; {vl.name} has {type(v).__name__}")
    gh, gw = v.grid_size
    n = gh * gw
    blocks = list(v.transformer.resblocks)
    blocks = blocks if mode == "layercam" else blocks[-1:]
    store: dict[int, torch.Tensor] = {}
    hooks = [blk.ln_1.register_forward_hook((lambda j: lambda m, i, o: store.__setitem__(j, o))(j))
             for j, blk in enumerate(blocks)]
    try:
        with torch.enable_grad():
            x = x.to(vl.device).detach().requires_grad_(True)
            feat = F.normalize(vl.model.encode_image(x).float(), dim=-1)
            score = (feat * text_features.to(feat)).sum(-1)
            if baseline is not None:
                score = score - feat @ baseline.to(feat).view(-1)
            acts = [store[j] for j in range(len(blocks))]
            grads = torch.autograd.grad(score.sum(), acts)
    finally:
        for h in hooks:
            h.remove()
    cams = []
    for act, grad in zip(acts, grads):
        if not getattr(v.transformer, "batch_first", True):
            act, grad = act.transpose(0, 1), grad.transpose(0, 1)
        # patch tokens come after the class / register tokens
        act, grad = act.detach().float()[:, -n:], grad.float()[:, -n:]
        cam = (grad.mean(1, keepdim=True) * act).sum(-1) if mode == "gradcam" else (grad * act).sum(-1)
        cam = cam.clamp(min=0).view(-1, gh, gw)
        cams.append(cam / cam.flatten(1).max(-1).values.clamp(min=1e-12).view(-1, 1, 1))
    cam = torch.stack(cams).mean(0)
    lo = cam.flatten(1).min(-1).values.view(-1, 1, 1)
    hi = cam.flatten(1).max(-1).values.view(-1, 1, 1)
    return torch.where(hi > lo, (cam - lo) / (hi - lo).clamp(min=1e-12), torch.zeros_like(cam))


def upsample_cam(cams: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """``(B, gh, gw)`` -> ``(B, H, W)`` (bilinear; stays in [0, 1])."""
    size = (size, size) if isinstance(size, int) else size
    up = F.interpolate(cams.float()[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    return up.clamp_(0, 1)


def mask_images(images: np.ndarray, cams_up: np.ndarray | torch.Tensor, tau: float,
                fill: str = "median") -> tuple[np.ndarray, np.ndarray]:
    """Fill the pixels whose CAM exceeds ``tau``. ``images`` uint8 ``(B, H, W, 3)``, ``cams_up``
    ``(B, H, W)``. Returns the masked images and the boolean masks.

    ``fill``: ``median`` = the image's per-channel median colour (on world images the
    background, whatever the mask covers), ``mean`` = its mean colour, ``grey`` = (128, 128, 128).
    """
    if fill not in FILLS:
        raise ValueError(f"fill must be one of {FILLS}, not {fill!r}")
    cams_up = cams_up.cpu().numpy() if isinstance(cams_up, torch.Tensor) else np.asarray(cams_up)
    masks = cams_up > tau
    out = np.array(images, dtype=np.uint8, copy=True)
    for b in range(out.shape[0]):
        m = masks[b]
        if not m.any():
            continue
        if fill == "grey":
            colour = np.array([128, 128, 128], dtype=np.uint8)
        elif fill == "median":
            colour = np.median(out[b].reshape(-1, 3), axis=0).round().astype(np.uint8)
        else:
            colour = out[b].reshape(-1, 3).mean(0).round().astype(np.uint8)
        out[b][m] = colour
    return out, masks


@torch.no_grad()
def text_features(vl, texts: list[str]) -> torch.Tensor:
    uniq = sorted(set(texts))
    feats = vl.encode_texts(uniq)
    pos = {t: i for i, t in enumerate(uniq)}
    return feats[torch.tensor([pos[t] for t in texts], device=feats.device)]


def compute_cams(vl, images: np.ndarray, nouns: list[NounChunk | str], mode: str = "layercam",
                 baseline: str | None = CAM_BASELINE, cam_text: str = "phrase", batch_size: int = 64,
                 progress: bool = False) -> torch.Tensor:
    """CAMs ``(N, gh, gw)`` (CPU float) of each noun on its image (uint8 at the model size),
    against ``"a photo of a {noun phrase}"`` (``cam_text="noun"``: ``"a photo of a {noun}"``;
    a string is named as it is) minus the ``baseline`` prompt (None or "": no baseline)."""
    if cam_text not in CAM_TEXTS:
        raise ValueError(f"cam_text must be one of {CAM_TEXTS}, not {cam_text!r}")
    prompts = [cam_prompt(c, cam_text) for c in nouns]
    base = vl.encode_texts([baseline])[0] if baseline else None
    out = []
    for i in tqdm(range(0, len(prompts), batch_size), desc="CAMs", disable=not progress):
        x = vl.uint8_to_tensor(np.array(images[i:i + batch_size]))
        out.append(grad_cam(vl, x, text_features(vl, prompts[i:i + batch_size]), mode, base).cpu())
    return torch.cat(out) if out else torch.empty(0)


def to_model_uint8(img, size: int) -> np.ndarray:
    """Any image -> uint8 ``(size, size, 3)``: shorter side resized to ``size``, centre crop."""
    img = load_image(img)
    w, h = img.size
    s = size / min(w, h)
    img = img.resize((max(size, round(w * s)), max(size, round(h * s))), Image.Resampling.BICUBIC)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    return np.asarray(img.crop((left, top, left + size, top + size)).convert("RGB"))


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


# ----------------------------------------------------------------------------- caches
def _vl_tag(vl) -> str:
    """Cache key of a VL model: its checkpoint hash, or a hash of the weights (random weights)."""
    if vl.checkpoint_sha256:
        tag = hashlib.sha256(vl.checkpoint_sha256.encode()).hexdigest()[:16]
    else:
        h = hashlib.sha256()
        for k, v in vl.model.state_dict().items():
            h.update(k.encode())
            h.update(v.detach().float().cpu().numpy().tobytes())
        tag = "w" + h.hexdigest()[:15]
    return f"{vl.name}_{tag}"


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
    path = world.root / "cache" / "masked_ti" / f"feats_{_vl_tag(vl)}_{n}.pt"
    return _cached(path, lambda: {"g": encode_uint8(vl, images[:n], desc="cache g(I)", progress=progress)})["g"]


def _cam_tag(mode: str, baseline: str | None, cam_text: str) -> str:
    tag = f"{mode}_{cam_text}"
    return f"{tag}_b{hashlib.sha256(baseline.encode()).hexdigest()[:6]}" if baseline else tag


def cached_cams(vl, world: World, images: np.ndarray, pairs: Pairs, mode: str, baseline: str | None = CAM_BASELINE,
                cam_text: str = "phrase", progress: bool = True) -> torch.Tensor:
    """CAMs of every pair ``(P, gh, gw)`` fp16 (independent of tau)."""
    path = (world.root / "cache" / "masked_ti" /
            f"cams_{_vl_tag(vl)}_{pairs.signature()}_{_cam_tag(mode, baseline, cam_text)}.pt")

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
            f"masked_{_vl_tag(vl)}_{pairs.signature()}_{cam_tag}_tau{tau:g}_{fill}.pt")

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
def info_nce(logits: torch.Tensor) -> torch.Tensor:
    labels = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


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
                    progress: bool = True) -> Path:
    """Train ``Phi`` and export it (fp16 safetensors + metadata). Resumable: rerun to continue."""
    from ..vl import load_vl

    if query_text not in QUERY_TEXTS:
        raise ValueError(f"query_text must be one of {QUERY_TEXTS}, not {query_text!r}")
    if fill not in FILLS:
        raise ValueError(f"fill must be one of {FILLS}, not {fill!r}")
    if w_qt < 0 or w_orig < 0 or w_qt + w_orig == 0:
        raise ValueError("loss weights must be >= 0 and not both 0")
    device = device or (vl.device if vl is not None else default_device())
    if vl is None:
        vl = load_vl(vl_name, vl_pretrained, device=device) if vl_name else load_vl(device=device)
    torch.manual_seed(seed)
    w = world if isinstance(world, World) else World(world)
    method = "single-token" if w_qt == 0 else "masked-ti"
    name = name or default_name(tau, w_qt, w_orig, query_text)
    out = Path(out) if out else shipped_checkpoint(name)
    state_path = Path(state_path or Path("runs") / "masked-ti" / f"{name}.state.pt")
    records = w.records("train")
    n = min(images, len(records))
    if n < 2:
        raise ValueError("need at least 2 training images")
    batch_size = min(batch_size, n)

    t_pre = time.time()
    arr = w.image_array("train", vl.image_size, progress=progress)
    pairs = world_pairs(records, n)
    g_all = cached_features(vl, w, arr, n, progress)
    gm_all = frac = None
    if w_qt > 0:
        cams = cached_cams(vl, w, arr, pairs, cam_mode, cam_baseline, cam_text, progress)
        gm_all, frac = cached_masked_features(vl, w, arr, pairs, cams, tau, fill,
                                              _cam_tag(cam_mode, cam_baseline, cam_text), progress)
    pre_seconds = time.time() - t_pre
    texts = pairs.texts(query_text)

    phi = Phi.for_vl(vl, dropout=dropout).to(device)
    opt = torch.optim.AdamW(phi.parameters(), lr=lr, weight_decay=weight_decay)
    sched = cosine_schedule(opt, warmup=min(100, steps // 10 + 1), total=steps)
    config = {"method": method, "tau": tau if w_qt > 0 else None, "w_qt": w_qt, "w_orig": w_orig,
              "query_text": query_text if w_qt > 0 else None, "temperature": temperature, "train_images": n,
              "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay, "dropout": dropout,
              "fill": fill if w_qt > 0 else None, "cam_mode": cam_mode if w_qt > 0 else None,
              "cam_baseline": (cam_baseline or "") if w_qt > 0 else None,
              "cam_text": cam_text if w_qt > 0 else None, "seed": seed,
              "steps": steps}
    step, extra = load_state(state_path, phi, opt, sched)
    if step and extra.get("config") not in (None, config):
        raise RuntimeError(f"{state_path} holds a run with another configuration ({extra['config']}); "
                           f"delete it or pass another --state / --name")
    elapsed = float(extra.get("elapsed_s", 0.0))

    phi.train()
    t0 = time.time()
    last = {}
    bar = tqdm(range(step, steps), initial=step, total=steps, desc=f"train {name}", disable=not progress)
    for step in bar:
        epoch, k = divmod(step * batch_size, n)
        perm = np.random.default_rng([seed, epoch]).permutation(n)
        idx = perm[k:k + batch_size] if k + batch_size <= n else perm[:batch_size]
        idx_t = torch.from_numpy(idx)
        g = g_all[idx_t].float().to(device)
        loss = torch.zeros((), device=device)
        parts = {}
        # two text-tower calls: "a photo of *" is short, so it is not padded to the query prompts
        if w_orig > 0:
            u_o = vl.encode_with_pseudo_tokens([ORIGINAL_PROMPT] * len(idx), phi(g)[:, None])
            parts["orig"] = info_nce(F.normalize(u_o.float(), dim=-1) @ g.T / temperature)
            loss = loss + w_orig * parts["orig"]
        if w_qt > 0:
            u = np.random.default_rng([seed, 1_000_000 + step]).random(len(idx))
            pidx = pairs.start[idx] + np.floor(u * pairs.count[idx]).astype(np.int64)
            gm = gm_all[torch.from_numpy(pidx)].float().to(device)
            u_q = vl.encode_with_pseudo_tokens([PROMPT.format(modifier=texts[p]) for p in pidx], phi(gm)[:, None])
            parts["qt"] = info_nce(F.normalize(u_q.float(), dim=-1) @ g.T / temperature)
            loss = loss + w_qt * parts["qt"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(phi.parameters(), 1.0)
        opt.step()
        sched.step()
        last = {k: round(v.item(), 4) for k, v in parts.items()}
        bar.set_postfix(**{k: f"{v:.3f}" for k, v in last.items()})
        if (step + 1) % save_every == 0 or step + 1 == steps:
            save_state(state_path, step + 1, phi, opt, sched,
                       {"elapsed_s": elapsed + time.time() - t0, "config": config})
    elapsed += time.time() - t0
    phi.eval()
    facts = {**config, "world_seed": w.meta["seed"], "world_size": w.meta.get("size"),
             "pairs": len(pairs), "final_losses": last,
             "masked_fraction_mean": round(float(frac.float().mean()), 4) if frac is not None else None,
             "train_seconds": round(elapsed, 1), "precompute_seconds": round(pre_seconds, 1), "device": device,
             "torch_threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d")}
    save_phi(out, phi, vl.identity(), facts)
    if progress:
        print(json.dumps({"checkpoint": str(out), **facts}))
    return out


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
