"""The frozen VL features of a training source, cached on disk part by part, shared by every run.

Encoding every image with the frozen VL model is the expensive part of training on real data, and
its result depends only on the VL model and the images. So it is done once, stored, and reused by
every later run with the same VL identity (another ISA backbone, the masked-pair method, a rerun):

    CACHE/{vl_key}/global/{part sha256}.pt       keys, captions, global (n, D) fp16[, local (n, K, D)],
                                                 skipped (path, reason)
    CACHE/{vl_key}/masked-{tag}/{part sha256}.pt the masked-pair method: per (image, noun) pair the
                                                 key, noun, g(I_m) fp16, masked fraction; skipped

``vl_key`` is the VL model's name and a hash of its checkpoint identity (of its weights, for random
weights); a part's sha256 is the hash of its file list (names, sizes, captions) or of its shard
(URL, size), so a run on the first N images reuses the parts of a run on more. A part is written
atomically once all its images are encoded: an interrupted run resumes at the first missing part.
Under torchrun, rank r encodes the missing parts ``p`` with ``p % world == r`` (the cache is
sharded by rank), then every rank reads them all. Images are decoded in DataLoader workers with
the VL model's own preprocessing; on CUDA the encoder runs in fp16 autocast.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..common import atomic_path
from .cam import compute_cams, mask_images, upsample_cam
from .data import DataSource, PartReader
from .distributed import SINGLE, Dist, barrier
from .nouns import NounChunk, caption_nouns

NOUNS_PER_IMAGE = 3  # (image, noun) pairs per image at most: distinct heads, in caption order


def vl_key(vl) -> str:
    """Cache key of a VL model: its name and its checkpoint hash, or a hash of the weights."""
    if vl.checkpoint_sha256:
        tag = hashlib.sha256(vl.checkpoint_sha256.encode()).hexdigest()[:16]
    else:
        h = hashlib.sha256()
        for k, v in vl.model.state_dict().items():
            h.update(k.encode())
            h.update(v.detach().float().cpu().numpy().tobytes())
        tag = "w" + h.hexdigest()[:15]
    return f"{vl.name}_{tag}"


@dataclass(frozen=True)
class MaskSpec:
    """How the masked-pair method masks a noun: the CAM recipe, tau and fill (its cache's key)."""

    mode: str
    baseline: str | None
    cam_text: str
    tau: float
    fill: str

    @property
    def tag(self) -> str:
        base = hashlib.sha256(self.baseline.encode()).hexdigest()[:6] if self.baseline else "none"
        return f"{self.mode}_{self.cam_text}_b{base}_tau{self.tau:g}_{self.fill}"


@dataclass
class Features:
    """The cached features of a whole source, rows in part order."""

    keys: list[str]
    paths: list[str | None]             # the file of each row (None for a shard's sample)
    captions: list[list[str]]
    g: torch.Tensor                     # (N, D) fp16, normalized
    local: torch.Tensor | None          # (N, K, D) fp16
    skipped: list[dict]
    pair_rows: np.ndarray | None = None  # (P,) row of each (image, noun) pair
    chunks: list[NounChunk] = field(default_factory=list)
    g_masked: torch.Tensor | None = None  # (P, D) fp16
    masked_fraction: torch.Tensor | None = None


def to_uint8(vl, x: torch.Tensor) -> np.ndarray:
    """A batch in the VL model's normalized input -> uint8 ``(B, H, W, 3)`` (what masking edits)."""
    img = (x.float() * vl.std.to(x.device) + vl.mean.to(x.device)).clamp(0, 1).mul(255).round()
    return img.byte().permute(0, 2, 3, 1).cpu().numpy()


class FeatureCache:
    def __init__(self, root: str | Path, vl, source: DataSource, local: bool = False, mask: MaskSpec | None = None):
        self.root = Path(root) / vl_key(vl)
        self.vl, self.source, self.local, self.mask = vl, source, local, mask

    def path(self, p: int, masked: bool = False) -> Path:
        return self.root / (f"masked-{self.mask.tag}" if masked else "global") / f"{self.source.part_sha256[p]}.pt"

    def _complete(self, p: int) -> bool:
        g = self.path(p)
        if not g.exists() or (self.local and not torch.load(g, map_location="cpu", mmap=True,
                                                             weights_only=True).get("local") is not None):
            return False
        return self.mask is None or self.path(p, masked=True).exists()

    def missing(self) -> list[int]:
        return [p for p in range(len(self.source.parts)) if not self._complete(p)]

    def build(self, d: Dist = SINGLE, batch_size: int = 64, workers: int = 0, progress: bool = True) -> dict:
        """Encode this rank's missing parts; every rank waits for all. Returns timing facts."""
        todo = [p for p in self.missing() if p % d.world == d.rank]
        t0, n_images = time.time(), 0
        if todo:
            n_images = self._encode(todo, batch_size, workers, progress and d.main)
        barrier(d)
        left = self.missing()
        if left:
            raise RuntimeError(f"feature cache {self.root}: parts still missing after encoding: {left[:5]}")
        return {"encoded_images": n_images, "encode_seconds": round(time.time() - t0, 2), "parts": len(todo)}

    @torch.no_grad()
    def _encode(self, todo: list[int], batch_size: int, workers: int, progress: bool) -> int:
        vl = self.vl
        cuda = str(vl.device).startswith("cuda")
        loader = DataLoader(PartReader(self.source, todo, vl.preprocess, batch_size), batch_size=None,
                            num_workers=min(workers, len(todo)), pin_memory=cuda)
        total = None if self.source.streaming else sum(len(self.source.parts[p]) for p in todo)
        bar = tqdm(total=total, desc="cache VL features", unit="img", disable=not progress)
        acc: dict[int, dict] = {}
        n = 0
        for p, infos, x in loader:
            a = acc.setdefault(p, {"keys": [], "captions": [], "global": [], "local": [], "pairs": []})
            if infos is None:
                self._write(p, a, skipped=x)
                del acc[p]
                continue
            x = x.to(vl.device, non_blocking=True)
            with torch.autocast("cuda", dtype=torch.float16, enabled=cuda):
                if self.local:
                    g, loc = vl.encode_image_local(x)
                    a["local"].append(loc.half().cpu())
                else:
                    g = vl.encode_image_tensor(x)
            a["global"].append(g.half().cpu())
            a["keys"] += [i["key"] for i in infos]
            a["captions"] += [i["captions"] for i in infos]
            if self.mask is not None:
                a["pairs"].append(self._masked(x, infos))
            n += len(infos)
            bar.update(len(infos))
        bar.close()
        return n

    def _masked(self, x: torch.Tensor, infos: list[dict]) -> dict:
        """The (image, noun) pairs of a batch and ``g(I_m)`` of each: CAM, mask, encode."""
        vl, m = self.vl, self.mask
        rows, chunks, skipped = [], [], []
        for j, info in enumerate(infos):
            found, why = caption_nouns(info["captions"], NOUNS_PER_IMAGE)
            if not found:
                skipped.append({"path": info["key"], "reason": why})
            rows += [j] * len(found)
            chunks += found
        out = {"keys": [infos[j]["key"] for j in rows], "head": [c.head for c in chunks],
               "phrase": [c.phrase for c in chunks], "skipped": skipped}
        if not rows:
            return {**out, "g_masked": torch.empty(0, vl.embed_dim, dtype=torch.float16),
                    "frac": torch.empty(0, dtype=torch.float16)}
        imgs = to_uint8(vl, x)[rows]
        cams = compute_cams(vl, imgs, chunks, m.mode, m.baseline, m.cam_text)
        masked, mk = mask_images(imgs, upsample_cam(cams, imgs.shape[1:3]), m.tau, m.fill)
        g = torch.cat([vl.encode_image_tensor(vl.uint8_to_tensor(masked[i:i + 64])).half().cpu()
                       for i in range(0, len(masked), 64)])
        return {**out, "g_masked": g, "frac": torch.from_numpy(mk.reshape(len(mk), -1).mean(1)).half()}

    def _write(self, p: int, a: dict, skipped: list[dict]) -> None:
        dim = self.vl.embed_dim
        part = {"keys": a["keys"], "captions": a["captions"], "skipped": skipped,
                "global": torch.cat(a["global"]) if a["global"] else torch.empty(0, dim, dtype=torch.float16),
                "local": torch.cat(a["local"]) if a["local"] else None}
        if self.local and part["local"] is None:  # no usable image in this part
            part["local"] = torch.empty(0, 1, dim, dtype=torch.float16)
        with atomic_path(self.path(p)) as tmp:
            torch.save(part, tmp)
        if self.mask is not None:
            pairs = a["pairs"]
            masked = {k: sum((b[k] for b in pairs), []) for k in ("keys", "head", "phrase", "skipped")}
            masked["g_masked"] = torch.cat([b["g_masked"] for b in pairs]) if pairs else torch.empty(0, dim)
            masked["frac"] = torch.cat([b["frac"] for b in pairs]) if pairs else torch.empty(0)
            with atomic_path(self.path(p, masked=True)) as tmp:
                torch.save(masked, tmp)

    def load(self) -> Features:
        """Every part's features, in part order (after :meth:`build`)."""
        keys, paths, captions, g, loc, skipped = [], [], [], [], [], list(self.source.skipped)
        pair_rows, chunks, g_masked, frac = [], [], [], []
        for p in range(len(self.source.parts)):
            part = torch.load(self.path(p), map_location="cpu", weights_only=True)
            if self.source.streaming:  # a sample's key is unique in its shard only
                paths += [None] * len(part["keys"])
            else:
                where = {it.key: it.path for it in self.source.parts[p]}
                paths += [where[k] for k in part["keys"]]
            row = {k: len(keys) + i for i, k in enumerate(part["keys"])}
            keys += [f"{p}/{k}" if self.source.streaming else k for k in part["keys"]]
            captions += part["captions"]
            skipped += part["skipped"]
            if len(part["keys"]):
                g.append(part["global"])
                if self.local:
                    loc.append(part["local"])
            if self.mask is not None:
                m = torch.load(self.path(p, masked=True), map_location="cpu", weights_only=True)
                pair_rows += [row[k] for k in m["keys"]]
                chunks += [NounChunk(h, ph, 0, len(ph), len(ph) - len(h)) for h, ph in zip(m["head"], m["phrase"])]
                g_masked.append(m["g_masked"].half())
                frac.append(m["frac"].half())
                skipped += m["skipped"]
        if not keys:
            from .data import DataError

            raise DataError(f"no usable image in {self.source.spec}: all {len(skipped)} skipped, e.g. "
                            + "; ".join(f"{s['path']}: {s['reason']}" for s in skipped[:3]))
        f = Features(keys, paths, captions, torch.cat(g), torch.cat(loc) if self.local else None, skipped)
        if self.mask is not None:
            f.pair_rows, f.chunks = np.array(pair_rows, dtype=np.int64), chunks
            f.g_masked, f.masked_fraction = torch.cat(g_masked), torch.cat(frac)
        return f


def cached_source_features(spec, vl, limit: int | None = None, local: bool = False, mask: MaskSpec | None = None,
                           d: Dist = SINGLE, progress: bool = True) -> tuple[DataSource, Features, dict]:
    """Open ``spec`` (a :class:`DataSpec`), fill the cache for it, read it back, and report what was
    skipped; returns the source, its features and timing facts (``features_seconds``)."""
    t0 = time.time()
    source = spec.open(limit)
    cache = FeatureCache(spec.cache_root(), vl, source, local, mask)
    facts = cache.build(d, spec.batch_size, spec.workers, progress)
    feats = cache.load()
    facts["features_seconds"] = round(time.time() - t0, 2)
    return source, feats, facts
