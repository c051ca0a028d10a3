"""Train an ISA query encoder on unlabeled images only (METHOD.md 3): GCD + lambda * LAR.

The VL model is frozen; its global and local image features of the training images are
computed once and cached. Only the light backbone and the token learner learn. Composed
triplets are never read: the data are the world's train images (their captions are unused), or
any folder / table / COCO file / WebDataset of images (``data``; see :mod:`isa_demo.training.data`),
whose VL features are cached on disk by :mod:`isa_demo.training.featcache`.

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
from .data import DataSpec, check_same_data, report_skipped
from .distributed import SINGLE, average_gradients, barrier, batch_indices, setup
from .featcache import cached_source_features
from .loaders import file_batches, stream_batches
from .losses import gcd_hard, info_nce, lar_late, lar_vocab, nearest_neighbours, word_similarity
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


def _learned_words(vl) -> torch.Tensor:
    """The token ids the VL model learned; the world's caption words when it does not record them."""
    return vl.vocabulary if vl.vocabulary is not None else torch.as_tensor(world_vocabulary(vl.tokenizer))


def _world_batches(student, enc, n, start, steps, batch_size, seed):
    """The world's batches: rows of the seeded permutation, the student's images from the world cache."""
    for step in range(start, steps):
        idx = np.sort(batch_indices(step, batch_size, n, seed))
        yield idx, None if student is None else enc.uint8_to_tensor(np.ascontiguousarray(student[idx]))


def train_isa(world: str, backbone: str, out: str | None = None, num_tokens: int = 4, steps: int = 4000,
              batch_size: int = 64, lr: float = 1e-3, lar: str = "none", lar_weight: float = 0.5, tau: float = 0.05,
              images: int = 50000, image_size: int = 96, seed: int = 0, state_path: str | None = None,
              device: str | None = None,
              vl_name: str | None = None, vl_pretrained: str = "builtin", save_every: int = 100,
              precision: str = "auto", hard_negatives: int = 0, word_norm: str = "free", diversity: float = 0.0,
              data: DataSpec | str | None = None, vl=None) -> Path:
    """Train and export an ISA query encoder. ``data``: a folder / table / COCO JSON / WebDataset
    source (:mod:`isa_demo.training.data`) instead of the world's train images; run under torchrun
    it trains data parallel (:mod:`isa_demo.training.distributed`). ``hard_negatives``: each
    image's k nearest train images (by the cached VL features) join the batch's negatives.
    ``word_norm``: ``free`` (the network chooses each pseudo word's norm) or ``vocab`` (each is
    rescaled to the mean norm of the words the VL model learned).
    ``vl``: a loaded VL model (instead of ``vl_name``/``vl_pretrained``)."""
    check_backbone_name(backbone)
    if lar not in ("late", "vocab", "none"):
        raise ValueError(f"--lar must be late, vocab or none, not {lar!r}")
    data = DataSpec.of(data)
    d = setup(device or default_device()) if data else SINGLE
    device = d.device if data else (device or default_device())
    precision = amp.resolve(precision, device, convolutional=backbone != SYMMETRIC)
    torch.manual_seed(seed)
    if word_norm not in ("free", "vocab"):
        raise ValueError(f"--word-norm must be free or vocab, not {word_norm!r}")
    vl = vl if vl is not None else load_vl(vl_name, vl_pretrained, device=device)
    vocab_emb = None
    if lar == "vocab" or word_norm == "vocab":
        vocab_emb = vl.text.token_embedding.weight[_learned_words(vl).to(vl.device)].detach().float().to(device)
    norm = round(float(vocab_emb.norm(dim=-1).mean()), 4) if word_norm == "vocab" else 0.0
    enc = QueryEncoder(EncoderConfig(backbone=backbone, num_tokens=num_tokens, word_dim=vl.word_dim,
                                     image_size=image_size, word_norm=norm), vl=vl).to(device)
    tag = (f"{backbone}_L{num_tokens}_{lar}_{steps}" + (f"_hn{hard_negatives}" if hard_negatives else "")
           + ("_wnvocab" if norm else "") + (f"_div{diversity:g}" if diversity else ""))
    out, state_path = output_paths("isa", tag, vl, shipped_checkpoint(backbone, vl.name), out, state_path)
    if data is None:
        t_feat = time.time()
        w = World(world)
        n = min(images, len(w.records("train")))
        g_all, loc_all = cached_vl_features(vl, w, n)
        student = None if backbone == SYMMETRIC else w.image_array("train", enc.cfg.image_size)
        source_facts = {"world_seed": w.meta["seed"], "features_seconds": round(time.time() - t_feat, 1)}
    else:
        source, feats, cache_facts = cached_source_features(data, vl, images, local=lar == "late" or
                                                            backbone == SYMMETRIC, d=d, progress=d.main)
        if d.main:
            report_skipped(feats.skipped, Path(out).with_suffix(".skipped.json"))
        n, g_all, loc_all = len(feats.keys), feats.g, feats.local
        source_facts = {"data": source.describe(), "skipped": len(feats.skipped), "ranks": d.world, **cache_facts}
    knn = nearest_neighbours(g_all, hard_negatives) if hard_negatives else None

    params = [p for p in enc.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    sched = cosine_schedule(opt, warmup=min(100, steps // 10 + 1), total=steps)
    step, extra = load_state(state_path, enc, opt, sched, vl=vl.identity())
    if step:
        check_same_data(state_path, extra.get("data"), source_facts.get("data"))
    elapsed = float(extra.get("elapsed_s", 0.0))
    if data is None:
        batches = _world_batches(student, enc, n, step, steps, batch_size, seed)
    elif backbone == SYMMETRIC:
        batches = ((np.sort(batch_indices(s, batch_size, n, seed, d)), None) for s in range(step, steps))
    elif source.streaming:
        batches = stream_batches(source, feats.keys, enc.transform(), batch_size, seed, d, data.workers)
    else:
        batches = file_batches(feats.paths, enc.transform(), step, steps, batch_size, seed, d, data.workers)

    enc.train()
    t0 = time.time()
    bar = tqdm(range(step, steps), initial=step, total=steps, desc=f"train isa {tag}", disable=not d.main)
    for step, (idx, x) in zip(bar, batches):
        idx_t = torch.from_numpy(idx)
        v = g_all[idx_t].float().to(device)
        p = loc_all[idx_t].float().to(device) if loc_all is not None else None
        with amp.autocast(device, precision):
            if x is None:
                sent, _ = enc.atl(tokens_to_map(p))
            else:
                sent, _ = enc(x.to(device, non_blocking=True))
            u, h = vl.encode_with_pseudo_tokens([SENTENCE_PROMPT] * len(idx), sent, return_tokens=True)
        sent, u, h = sent.float(), u.float(), h.float()
        if knn is None:
            loss_gcd = info_nce(F.normalize(u, dim=-1) @ v.T / tau)
        else:
            v_neg = g_all[knn[idx_t].reshape(-1)].float().to(device)
            loss_gcd = gcd_hard(F.normalize(u, dim=-1), v, v_neg, tau)
        loss_lar = torch.zeros((), device=device)
        if lar == "late":
            loss_lar = lar_late(h, p, tau)
        elif lar == "vocab":
            loss_lar = lar_vocab(sent.reshape(-1, sent.shape[-1]), vocab_emb)
        loss = loss_gcd + lar_weight * loss_lar
        if diversity:
            loss = loss + diversity * word_similarity(sent)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        average_gradients(params, d)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        bar.set_postfix(gcd=f"{loss_gcd.item():.3f}", lar=f"{loss_lar.item():.3f}")
        if d.main and ((step + 1) % save_every == 0 or step + 1 == steps):
            save_state(state_path, step + 1, enc, opt, sched,
                       {"elapsed_s": elapsed + time.time() - t0, "data": source_facts.get("data"),
                        "vl": vl.identity()})
    elapsed += time.time() - t0
    enc.eval()
    facts = {"steps": steps, "batch_size": batch_size, "lar": lar, "lar_weight": lar_weight, "tau": tau,
             "precision": precision, **({"hard_negatives": hard_negatives} if hard_negatives else {}),
             **({"word_norm": word_norm} if norm else {}),
             **({"diversity": diversity} if diversity else {}), "train_images": n, **source_facts,
             "train_seconds": round(elapsed, 1), "device": device, "date": time.strftime("%Y-%m-%d")}
    if d.main:
        enc.save(out, vl.identity(), {k: json.dumps(v) if isinstance(v, dict) else v for k, v in facts.items()})
        print(json.dumps({"checkpoint": str(out), **facts}))
    barrier(d)
    return out
