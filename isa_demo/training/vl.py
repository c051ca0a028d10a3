"""Train the built-in VL model from scratch on the world's train image-caption pairs.

Standard symmetric CLIP loss with a learnable temperature. Captions are paraphrased from the
scene graph at every step (object order and template), images are the renders as they are
(no flips or crops: left/right and position are part of the captions). Resumable.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..common import atomic_path, default_device
from ..settings import RUNS_DIR
from ..vl.model import BUILTIN_NAME, TextParts, builtin_checkpoint, config_json, encode_text_trimmed
from ..world import World, caption
from .losses import info_nce
from .state import cosine_schedule, load_state, save_state


def export_safetensors(model: torch.nn.Module, path: str | Path, name: str, extra: dict) -> None:
    """Write a model's weights as fp16 safetensors with the config recorded in the metadata."""
    from safetensors.torch import save_file

    state = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in model.state_dict().items()}
    meta = {"model_name": name, "config": config_json(name), **{k: str(v) for k, v in extra.items()}}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=meta)


def train_vl(world: str, out: str | None = None, name: str = BUILTIN_NAME, epochs: float = 2.5,
             batch_size: int = 128, lr: float = 1e-3, weight_decay: float = 0.1, seed: int = 0,
             state_path: str | None = None, device: str | None = None, save_every: int = 100,
             max_images: int | None = None) -> Path:
    device = device or default_device()
    torch.manual_seed(seed)
    w = World(world)
    model = open_clip.create_model(name, pretrained=None).to(device)
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    images = w.image_array("train", size)
    records = w.records("train")
    n = len(records) if max_images is None else min(len(records), max_images)
    tokenizer = open_clip.get_tokenizer(name)
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD, device=device).view(1, 3, 1, 1)

    text_emb = TextParts.of(model).token_embedding.weight
    decay = [p for p in model.parameters() if p.ndim >= 2 and p is not text_emb]
    no_decay = [p for p in model.parameters() if p.ndim < 2 or p is text_emb]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.98), eps=1e-6)
    steps_per_epoch = n // batch_size
    total = max(1, int(epochs * steps_per_epoch))
    sched = cosine_schedule(opt, warmup=min(200, total // 10 + 1), total=total)
    state_path = Path(state_path or RUNS_DIR / "vl" / f"{name}.state.pt")
    step, extra = load_state(state_path, model, opt, sched)
    out = Path(out) if out else builtin_checkpoint(name)
    elapsed = float(extra.get("elapsed_s", 0.0))

    model.train()
    t0 = time.time()
    bar = tqdm(range(step, total), initial=step, total=total, desc="train vl")
    for step in bar:
        epoch, k = divmod(step, steps_per_epoch)
        perm = np.random.default_rng([seed, epoch]).permutation(n)
        idx = np.sort(perm[k * batch_size:(k + 1) * batch_size])
        rng = np.random.default_rng([seed, 1_000_000 + step])
        x = torch.from_numpy(np.ascontiguousarray(images[idx])).to(device).permute(0, 3, 1, 2).float().div_(255)
        x = (x - mean) / std
        ids = tokenizer([caption(records[i]["scene"], rng) for i in idx]).to(device)
        img = F.normalize(model.encode_image(x), dim=-1)
        txt = F.normalize(encode_text_trimmed(model, ids), dim=-1)
        logits = model.logit_scale.exp().clamp(max=100) * img @ txt.T
        loss = info_nce(logits)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, np.log(100))
        bar.set_postfix(loss=f"{loss.item():.3f}", T=f"{model.logit_scale.exp().item():.1f}")
        if (step + 1) % save_every == 0 or step + 1 == total:
            save_state(state_path, step + 1, model, opt, sched,
                       {"elapsed_s": elapsed + time.time() - t0, "total": total})
    elapsed += time.time() - t0
    model.eval()
    export_safetensors(model, out, name, {"world_seed": w.meta["seed"], "steps": total, "batch_size": batch_size,
                                          "train_images": n, "train_seconds": round(elapsed, 1),
                                          "device": device, "date": time.strftime("%Y-%m-%d")})
    info = {"checkpoint": str(out), "steps": total, "train_seconds": round(elapsed, 1), "device": device,
            "torch_threads": torch.get_num_threads()}
    print(json.dumps(info))
    return out
