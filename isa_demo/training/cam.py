"""Where a noun is in an image (Grad-CAM family on the frozen VL image tower) and masking it out.

Used by the masked-pair trainer (:mod:`isa_demo.training.masked_ti`), one step of its recipe:

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
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from ..common import load_image
from .nouns import NounChunk, cam_prompt

FILLS = ("median", "mean", "grey")
CAM_MODES = ("layercam", "gradcam", "gradxact")
CAM_BASELINE = "a photo"
CAM_TEXTS = ("phrase", "noun")

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

    def keep(j: int):  # the hook of block j stores that block's ln_1 output under j
        return lambda m, i, o: store.__setitem__(j, o)

    hooks = [blk.ln_1.register_forward_hook(keep(j)) for j, blk in enumerate(blocks)]
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
