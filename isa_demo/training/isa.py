"""Train an ISA query encoder on unlabeled images only (METHOD.md 3): GCD + lambda * LAR.

The VL model is frozen; its global and local image features of the training images are
computed once and cached. Only the light backbone and the token learner learn. Composed
triplets are never read: the data are the world's train images (their captions are unused).

LAR options:
- ``late``: late interaction between the sentence's token outputs ``h_l`` (text tower output at
  pseudo position l, projected) and the image's local features ``p_k`` (ViT patch tokens after
  ``ln_post``/``proj``): ``s_ij = mean_l max_k <h_l^j, p_k^i>``, InfoNCE over the batch.
- ``vocab``: keeps each pseudo word near the real word-embedding manifold: ``1 - max_v cos(s_l, e_v)``
  over the vocabulary rows the VL model has actually learned (the words of the training captions).
- ``none``: GCD only.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..common import atomic_path, default_device
from ..models import SYMMETRIC, EncoderConfig, QueryEncoder, check_backbone_name, shipped_checkpoint, tokens_to_map
from ..vl import load_vl
from ..vl.model import world_vocabulary
from ..world import World
from . import precision as amp
from .losses import info_nce, lar_late, lar_vocab
from .state import cosine_schedule, load_state, output_paths, save_state

SENTENCE_PROMPT = "a photo of *"


def cached_vl_features(vl, world: World, n: int, batch_size: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalized global ``(n, D)`` and local ``(n, K, D)`` features of the first n train images (fp16)."""
    tag = (vl.checkpoint_sha256 or vl.name).replace(":", "_").replace("/", "_")[:16]
    path = world.root / "cache" / f"isa_vl_{vl.name}_{tag}_{n}.pt"
    if path.exists():
        d = torch.load(path, map_location="cpu", weights_only=True)
        return d["global"], d["local"]
    arr = world.image_array("train", vl.image_size)
    g, loc = [], []
    with torch.no_grad():
        for i in tqdm(range(0, n, batch_size), desc="cache VL features"):
            pooled, tokens = vl.encode_image_local(vl.uint8_to_tensor(arr[i:min(n, i + batch_size)]))
            g.append(pooled.half().cpu())
            loc.append(tokens.half().cpu())
    out = {"global": torch.cat(g), "local": torch.cat(loc)}
    with atomic_path(path) as tmp:
        torch.save(out, tmp)
    return out["global"], out["local"]


def train_isa(world: str, backbone: str, out: str | None = None, num_tokens: int = 4, steps: int = 4000,
              batch_size: int = 64, lr: float = 1e-3, lar: str = "none", lar_weight: float = 0.5, tau: float = 0.05,
              images: int = 50000, image_size: int = 96, seed: int = 0, state_path: str | None = None,
              device: str | None = None,
              vl_name: str | None = None, vl_pretrained: str = "builtin", save_every: int = 100,
              precision: str = "auto") -> Path:
    check_backbone_name(backbone)
    if lar not in ("late", "vocab", "none"):
        raise ValueError(f"--lar must be late, vocab or none, not {lar!r}")
    device = device or default_device()
    precision = amp.resolve(precision, device, convolutional=backbone != SYMMETRIC)
    torch.manual_seed(seed)
    vl = load_vl(vl_name, vl_pretrained, device=device)
    w = World(world)
    n = min(images, len(w.records("train")))
    g_all, loc_all = cached_vl_features(vl, w, n)
    enc = QueryEncoder(EncoderConfig(backbone=backbone, num_tokens=num_tokens, word_dim=vl.word_dim,
                                     image_size=image_size), vl=vl).to(device)
    student = None if backbone == SYMMETRIC else w.image_array("train", enc.cfg.image_size)
    vocab_emb = None
    if lar == "vocab":  # the words the VL model learned; the world's caption words when it does not record them
        ids = vl.vocabulary if vl.vocabulary is not None else torch.as_tensor(world_vocabulary(vl.tokenizer))
        vocab_emb = vl.text.token_embedding.weight[ids.to(device)].detach()

    params = [p for p in enc.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    sched = cosine_schedule(opt, warmup=min(100, steps // 10 + 1), total=steps)
    tag = f"{backbone}_L{num_tokens}_{lar}_{steps}"
    out, state_path = output_paths("isa", tag, vl, shipped_checkpoint(backbone, vl.name), out, state_path)
    step, extra = load_state(state_path, enc, opt, sched)
    elapsed = float(extra.get("elapsed_s", 0.0))
    prompts = [SENTENCE_PROMPT] * batch_size

    enc.train()
    t0 = time.time()
    bar = tqdm(range(step, steps), initial=step, total=steps, desc=f"train isa {tag}")
    for step in bar:
        epoch, k = divmod(step * batch_size, n)
        perm = np.random.default_rng([seed, epoch]).permutation(n)
        idx = np.sort(perm[k:k + batch_size]) if k + batch_size <= n else np.sort(perm[:batch_size])
        idx_t = torch.from_numpy(idx)
        v = g_all[idx_t].float().to(device)
        p = loc_all[idx_t].float().to(device)
        with amp.autocast(device, precision):
            if student is None:
                sent, _ = enc.atl(tokens_to_map(p))
            else:
                sent, _ = enc(enc.uint8_to_tensor(np.ascontiguousarray(student[idx])))
            u, h = vl.encode_with_pseudo_tokens(prompts[:len(idx)], sent, return_tokens=True)
        sent, u, h = sent.float(), u.float(), h.float()
        loss_gcd = info_nce(F.normalize(u, dim=-1) @ v.T / tau)
        loss_lar = torch.zeros((), device=device)
        if lar == "late":
            loss_lar = lar_late(h, p, tau)
        elif lar == "vocab":
            loss_lar = lar_vocab(sent.reshape(-1, sent.shape[-1]), vocab_emb)
        loss = loss_gcd + lar_weight * loss_lar
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        bar.set_postfix(gcd=f"{loss_gcd.item():.3f}", lar=f"{loss_lar.item():.3f}")
        if (step + 1) % save_every == 0 or step + 1 == steps:
            save_state(state_path, step + 1, enc, opt, sched, {"elapsed_s": elapsed + time.time() - t0})
    elapsed += time.time() - t0
    enc.eval()
    facts = {"steps": steps, "batch_size": batch_size, "lar": lar, "lar_weight": lar_weight, "tau": tau,
             "precision": precision,
             "train_images": n, "world_seed": w.meta["seed"], "train_seconds": round(elapsed, 1), "device": device,
             "date": time.strftime("%Y-%m-%d")}
    enc.save(out, vl.identity(), facts)
    print(json.dumps({"checkpoint": str(out), **facts}))
    return out
