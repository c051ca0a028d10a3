"""Train the built-in VL model from scratch on the world's train image-caption pairs.

Symmetric CLIP loss with a learnable temperature; images are the renders as they are (no flips
or crops: left/right and position are part of the captions). Resumable. Recipe (the defaults
are the shipped ``isa-world-vit-v3``'s; ``--name isa-world-vit-v2 --scene-loss 0 --mix '' --pos-scale 1``
is v2's, and ``--variants 0 --no-text-negatives --captions world`` on top of that the first model
``isa-world-vit``'s):

- ``variants``: that fraction of each batch is a *near variant* of another member of the batch,
  rendered on the fly (one object's colour, shape, size or cell changed, one object added or
  removed, or the background changed: :func:`isa_demo.world.scene.near_variant`), with its own
  caption. The loss must then tell a scene from the scenes one change away, which is what the
  benchmark's galleries hold. The variant is only another image with its own description: no
  modifier text and no (reference, target) pair is ever seen.
- ``text_negatives``: NegCLIP-style hard-negative captions (:func:`isa_demo.training.captions.negative`:
  colours, shapes or cells of two objects swapped, or one attribute changed) are added to the
  image-to-text side of the loss.
- ``captions``: ``diverse`` draws from several true grammars (:mod:`isa_demo.training.captions`:
  relative clauses, attribute orders, counts, statements of absence); ``world`` uses the world's
  own four paraphrase templates only.
- ``mix``: which near variants and hard-negative captions to draw more often (``position:3,shape:2``
  weighs cell changes 3x, shape changes 2x; ``""`` draws every kind alike).
- ``scene_loss``: a head reading the image embedding back into its scene graph (:class:`SceneHead`:
  the image's own description as structure), beside the CLIP loss; not exported.
- ``pos_scale``: the image tower's initial positional embedding multiplied by this.
  The last three are what made v3 bind position: v1 and v2 scored a caption against its own image
  and the image with one object moved at chance (``bench vl``'s binding table), because a randomly
  initialised ViT's class token barely changes when an object moves (its positional embedding is
  small beside the patch content) and the contrastive loss never finds position while both towers
  ignore it. With position near variants weighed up, the scene head asking where each object is,
  and a louder positional embedding, the head's per-cell occupancy (the progress bar's ``cells``)
  leaves its 0.75 base rate after ~300 steps and reaches 0.99 (docs/experiments.md).
- ``init``: fine-tune a checkpoint instead. ``precision``: bf16 autocast where the hardware has it
  (:mod:`isa_demo.training.precision`).

The checkpoint stores only the token-embedding rows training updated (a few dozen of 49,408;
the others are seeded random rows, see :func:`export_safetensors`), and everything else as fp16.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from ..common import default_device, pack_state, save_checkpoint
from ..settings import RUNS_DIR
from ..vl.model import (
    TextParts,
    builtin_checkpoint,
    config_json,
    encode_text_trimmed,
    load_state_checked,
    special_tokens,
)
from ..world import World
from ..world.render import IMAGE_SIZE, render
from ..world.scene import BACKGROUNDS, COLOURS, MOD_TYPES, SHAPES, SIZES, modify, scene_key
from ..world.scene import near_variant as world_near_variant
from . import precision as amp
from .captions import describe, draw_form, negative
from .state import cosine_schedule, load_state, save_state

CAPTIONS = ("diverse", "world")
TOKEN_EMBEDDING = "token_embedding.weight"


def export_safetensors(model: torch.nn.Module, path: str | Path, name: str, extra: dict,
                       trained_rows: list[int] | None = None, vocabulary: list[int] | None = None) -> None:
    """Write a model's weights as fp16 safetensors with the config in the metadata.

    ``trained_rows``: the token-embedding rows that training updated (a built-in model learns a
    few dozen of its 49,408): only those are stored, the others are recorded as seeded random rows
    (:func:`isa_demo.vl.model.untrained_token_rows`; they were never trained, so any draw of the
    same initialisation is the same model for every text it was trained on). Without it the whole
    table is stored as int8 rows. ``vocabulary``: the words it learned (explanations decode
    pseudo words into these only)."""

    state = {}
    meta = {"model_name": name, "config": config_json(name), **{k: str(v) for k, v in extra.items()}}
    for k, v in model.state_dict().items():
        if k.endswith(TOKEN_EMBEDDING) and trained_rows is not None:
            state[k] = v[torch.as_tensor(trained_rows)].half().contiguous()
            meta["token_embedding_rows"] = json.dumps(trained_rows)
        elif k.endswith(TOKEN_EMBEDDING):
            state.update(pack_state({k: v}))
        else:
            state[k] = (v.half() if v.is_floating_point() else v).contiguous()
    if vocabulary is not None:
        meta["vocabulary"] = json.dumps(vocabulary)
    save_checkpoint(state, path, meta)


def parse_mix(mix: str) -> dict[str, float]:
    """``"position:3,shape:2"`` -> a weight per single modification type (unnamed types weigh 1)."""
    weights = dict.fromkeys(MOD_TYPES, 1.0)
    for part in filter(None, (p.strip() for p in mix.split(","))):
        kind, _, weight = part.partition(":")
        if kind not in weights or not weight:
            raise ValueError(f"mix {mix!r}: each part is TYPE:WEIGHT with TYPE one of {MOD_TYPES}, not {part!r}")
        weights[kind] = float(weight)
    if min(weights.values()) < 0 or not sum(weights.values()):
        raise ValueError(f"mix {mix!r}: weights must be >= 0 and not all 0")
    return weights


def near_variant(scene: dict, rng: np.random.Generator, weights: dict[str, float]) -> dict:
    """A scene one single modification away from ``scene`` (type drawn by ``weights``; equal weights
    draw as the world's own :func:`isa_demo.world.scene.near_variant`), or ``scene`` itself when no
    modification applies. Only the scene is kept, never the modifier text."""
    if len(set(weights.values())) == 1:
        return world_near_variant(scene, rng, {scene_key(scene)}) or scene
    kinds, p = list(weights), np.array(list(weights.values()))
    for _ in range(50):
        res = modify(scene, kinds[int(rng.choice(len(kinds), p=p / p.sum()))], rng)
        if res is not None and scene_key(res[0]) != scene_key(scene):
            return res[0]
    return scene


def _variant_images(scenes: list[dict], rng: np.random.Generator, size: int,
                    weights: dict[str, float]) -> tuple[np.ndarray, list[dict]]:
    """Near variants of ``scenes`` rendered as the world renders (128 px, resized like its cache)."""
    images, out = [], []
    for scene in scenes:
        v = near_variant(scene, rng, weights)
        img = render(v, rng, IMAGE_SIZE)
        if size != IMAGE_SIZE:
            img = img.resize((size, size), Image.Resampling.BICUBIC)
        images.append(np.asarray(img))
        out.append(v)
    return np.stack(images), out


class SceneHead(torch.nn.Module):
    """Reads an image embedding back into its scene graph: per cell of the 3x3 grid the shape (or
    empty), the colour and the size of its object, and the background. Trained beside the CLIP loss
    (``scene_loss``), it asks the image tower to say *where* each object is: both towers of the
    first two models ignore position (``bench vl``'s binding table: caption pairs that differ only in
    an object's cell score at chance), and the contrastive loss alone has no gradient towards it
    while the other tower ignores it too. Training only: not exported."""

    def __init__(self, dim: int):
        super().__init__()
        self.sizes = (9 * (len(SHAPES) + 1), 9 * len(COLOURS), 9 * len(SIZES), len(BACKGROUNDS))
        self.linear = torch.nn.Linear(dim, sum(self.sizes))

    @staticmethod
    def targets(scenes: list[dict], device) -> list[torch.Tensor]:
        shape = torch.full((len(scenes), 9), len(SHAPES), dtype=torch.long)
        colour = torch.full((len(scenes), 9), -100, dtype=torch.long)
        size = torch.full((len(scenes), 9), -100, dtype=torch.long)
        for i, scene in enumerate(scenes):
            for o in scene["objects"]:
                shape[i, o["cell"]] = SHAPES.index(o["shape"])
                colour[i, o["cell"]] = list(COLOURS).index(o["colour"])
                size[i, o["cell"]] = SIZES.index(o["size"])
        bg = torch.tensor([list(BACKGROUNDS).index(s["background"]) for s in scenes])
        return [t.to(device) for t in (shape, colour, size, bg)]

    def loss(self, features: torch.Tensor, scenes: list[dict]) -> tuple[torch.Tensor, str]:
        """The mean cross-entropy of the four readouts, and how often the head reads every cell's
        occupancy right (a progress readout: it stays at the empty cells' base rate, about 0.75,
        while the tower ignores position)."""
        parts = self.linear(features.float()).split(self.sizes, dim=-1)
        targets = self.targets(scenes, features.device)
        total = 0.0
        for logits, target in zip(parts, targets):
            total = total + F.cross_entropy(logits.reshape(target.numel(), -1), target.flatten(), ignore_index=-100)
        empty = len(SHAPES)
        occupied = (parts[0].detach().reshape(len(scenes), 9, -1).argmax(-1) != empty) == (targets[0] != empty)
        return total / len(parts), f"{occupied.float().mean().item():.3f}"


def _captions(scenes: list[dict], rng: np.random.Generator, style: str, negatives: bool, weights: dict[str, float]):
    pos, neg = [], []
    for scene in scenes:
        form = draw_form(scene, rng) if style == "diverse" else {"grammar": "world", "seed": int(rng.integers(2**31))}
        pos.append(describe(scene, rng, form))
        if negatives:
            neg.append(negative(scene, rng, form, weights))
    return pos, neg


def train_vl(world: str, out: str | None = None, name: str = "isa-world-vit-v3", epochs: float = 1.5,
             batch_size: int = 128, lr: float = 1e-3, weight_decay: float = 0.1, seed: int = 0,
             state_path: str | None = None, device: str | None = None, save_every: int = 100,
             max_images: int | None = None, variants: float = 0.5, text_negatives: bool = True,
             captions: str = "diverse", mix: str = "position:3,shape:2", scene_loss: float = 1.0,
             init: str | None = None, pos_scale: float = 8.0, precision: str = "auto") -> Path:
    if captions not in CAPTIONS:
        raise ValueError(f"captions must be one of {CAPTIONS}, not {captions!r}")
    if not 0 <= variants < 1:
        raise ValueError(f"variants is a fraction of the batch in [0, 1), not {variants}")
    weights = parse_mix(mix)
    device = device or default_device()
    precision = amp.resolve(precision, device)
    torch.manual_seed(seed)
    w = World(world)
    model = open_clip.create_model(name, pretrained=None)
    if init:
        load_state_checked(model, init, name)
    elif pos_scale != 1.0:  # a louder initial position signal (see the module docstring)
        with torch.no_grad():
            model.visual.positional_embedding.mul_(pos_scale)
    if scene_loss:  # a submodule during training (optimised, saved in the state); dropped on export
        model.scene_head = SceneHead(model.visual.output_dim)
    model.to(device)
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
    n_var = int(round(batch_size * variants))
    n_base = batch_size - n_var
    steps_per_epoch = n // n_base
    total = max(1, int(epochs * steps_per_epoch))
    sched = cosine_schedule(opt, warmup=min(200, total // 10 + 1), total=total)
    recipe = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay, "seed": seed,
              "variants": variants, "text_negatives": text_negatives, "captions": captions, "mix": mix,
              "scene_loss": scene_loss, "pos_scale": pos_scale, "precision": precision,
              **({"init": str(init)} if init else {})}
    state_path = Path(state_path or RUNS_DIR / "vl" / f"{name}.state.pt")
    step, extra = load_state(state_path, model, opt, sched)
    if step and extra.get("recipe", recipe) != recipe:
        raise ValueError(f"{state_path} was saved by another recipe ({extra.get('recipe')}); pass another --state "
                         f"or delete it to start over with {recipe}")
    out = Path(out) if out else builtin_checkpoint(name)
    elapsed = float(extra.get("elapsed_s", 0.0))
    scaler = amp.grad_scaler(device, precision)

    def to_tensor(arr: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(arr)).to(device).permute(0, 3, 1, 2).float().div_(255)
        return (x - mean) / std

    model.train()
    t0 = time.time()
    bar = tqdm(range(step, total), initial=step, total=total, desc=f"train vl {name}")
    for step in bar:
        epoch, k = divmod(step, steps_per_epoch)
        perm = np.random.default_rng([seed, epoch]).permutation(n)
        idx = np.sort(perm[k * n_base:(k + 1) * n_base])
        rng = np.random.default_rng([seed, 1_000_000 + step])
        scenes = [records[i]["scene"] for i in idx]
        batch = images[idx]
        if n_var:
            var_images, var_scenes = _variant_images(scenes[:n_var], rng, size, weights)
            batch, scenes = np.concatenate([batch, var_images]), scenes + var_scenes
        pos, neg = _captions(scenes, rng, captions, text_negatives, weights)
        with amp.autocast(device, precision):
            features = model.encode_image(to_tensor(batch)).float()
            img = F.normalize(features, dim=-1)
            txt = F.normalize(encode_text_trimmed(model, tokenizer(pos + neg).to(device)).float(), dim=-1)
        scale = model.logit_scale.exp().clamp(max=100)
        labels = torch.arange(len(scenes), device=device)
        # image -> text over the captions and the hard negatives; text -> image over the images
        loss = (F.cross_entropy(scale * img @ txt.T, labels)
                + F.cross_entropy(scale * txt[:len(pos)] @ img.T, labels)) / 2
        postfix = {}
        if scene_loss:
            head_loss, postfix["cells"] = model.scene_head.loss(features, scenes)
            loss = loss + scene_loss * head_loss
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, np.log(100))
        bar.set_postfix(loss=f"{loss.item():.3f}", T=f"{model.logit_scale.exp().item():.1f}", **postfix)
        if (step + 1) % save_every == 0 or step + 1 == total:
            save_state(state_path, step + 1, model, opt, sched,
                       {"elapsed_s": elapsed + time.time() - t0, "total": total, "recipe": recipe})
    elapsed += time.time() - t0
    model.eval()
    if scene_loss:
        del model.scene_head
    moments = opt.state.get(text_emb, {}).get("exp_avg_sq")  # rows that ever had a gradient
    trained = None if moments is None else (moments.abs().sum(1) > 0).nonzero().flatten().tolist()
    export_safetensors(model, out, name, {"world_seed": w.meta["seed"], "steps": total, "batch_size": batch_size,
                                          "train_images": n, "train_seconds": round(elapsed, 1),
                                          "recipe": json.dumps(recipe), "device": device,
                                          "date": time.strftime("%Y-%m-%d")},
                       trained_rows=trained,
                       vocabulary=None if trained is None else sorted(set(trained) - special_tokens(tokenizer)))
    info = {"checkpoint": str(out), "steps": total, "train_seconds": round(elapsed, 1), "device": device,
            "precision": precision, "torch_threads": torch.get_num_threads()}
    print(json.dumps(info))
    return out
