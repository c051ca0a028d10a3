"""Evaluate one method on one benchmark: gallery features (cached), query features, rankings,
metrics, the per-query table and, for unlabelled splits, the server submission files.

Methods come only from :func:`isa_demo.methods.create_method`; the caption oracle (the ceiling,
world only) is selected with the name ``caption-oracle``, the ceiling of the pseudo-token methods
(the reference's caption composed with the modifier) with ``inversion-oracle``.

Outputs under ``out`` (default ``assets/results``), named by :func:`result_tag`
``{dataset}_{split}_{method}[_{backbone}]``::

    per_query/{tag}.parquet    one row per query (the app's failure-case inspector reads this)
    metrics/{tag}.json         the metrics, counts, identities and the command
    submissions/{tag}.json     CIRR (+ subset_{tag}.json) / CIRCO server files (unlabelled splits)

Per-query columns: ``query_id, category, mod_type, mod_family, reference, modifier, target_hard,
targets, rank, subset_rank, topk_ids, topk_scores``. ``rank`` is the 1-based rank of the first
ground truth in the protocol's ranking (CIRR and world: reference removed), ``<NA>`` when none is
ranked or the split is unlabelled; ``subset_rank`` the same within the CIRR subset;
``topk_ids``/``topk_scores`` the protocol ranking's head (``top_k``, default 10).

Rankings never sort the whole gallery: :func:`metrics.top_k` and
:func:`metrics.first_relevant_rank_from_scores` give the full sort's results (ties in gallery
order) in O(N) per query.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..common import atomic_path, machine_info, write_json
from ..errors import UserError
from ..settings import RESULTS_DIR
from . import metrics as M
from .datasets import Benchmark, load_benchmarks
from .results import per_query_path, result_tag, slug, write_per_query
from .submission import CIRR_SUBSET_TOP, CIRR_TOP, write_circo_submission, write_cirr_submission

ORACLE = "caption-oracle"
INVERSION_ORACLE = "inversion-oracle"
TABLE_TOP_K = 10
QUERY_CHUNK = 256
EMPTY_MODIFIER = "."  # stands in for the rare empty annotation (one in CIRR test1) so it still encodes


class EvalError(UserError, RuntimeError):
    """The evaluation cannot run as asked; the message says why and what to do."""


def now_utc() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# ------------------------------------------------------------------------------------ methods
class CaptionOracle:
    """The ceiling (METHOD.md 5): the target's ground-truth caption through the text tower.

    ``inversion=True``: the ceiling of the pseudo-token methods instead, a perfect textual
    inversion: the *reference's* ground-truth caption in the composition template
    (``a photo of {caption} that {modifier}``), so the text tower alone does the edit."""

    def __init__(self, vl, inversion: bool = False):
        self.vl = vl
        self.inversion = inversion
        self.name = INVERSION_ORACLE if inversion else ORACLE

    def texts(self, queries) -> list[str] | None:
        """The text of each query, or None when a caption it needs is missing."""
        from ..methods import PROMPT

        if not self.inversion:
            captions = [q.target_caption for q in queries]
            return None if any(c is None for c in captions) else captions
        if any(q.reference_caption is None for q in queries):
            return None
        return [PROMPT.replace("*", q.reference_caption).format(modifier=q.modifiers[0]) for q in queries]

    def identity(self) -> dict:
        return {"method": self.name, "vl": self.vl.identity()}


def build_method(name: str, vl, backbone: str | None = None, checkpoint: str | None = None,
                 prompt: str | None = None):
    """A method from the registry (or the caption oracle); unset options keep their defaults."""
    if name in (ORACLE, INVERSION_ORACLE):
        return CaptionOracle(vl, inversion=name == INVERSION_ORACLE)
    from ..methods import PROMPT_METHODS, create_method

    if prompt is not None and name not in PROMPT_METHODS:
        raise EvalError(f"--prompt applies to {', '.join(PROMPT_METHODS)}, not to {name}")
    kwargs = {k: v for k, v in (("backbone", backbone), ("checkpoint", checkpoint), ("prompt", prompt))
              if v is not None}
    try:
        return create_method(name, vl, **kwargs)
    except KeyError as e:
        raise EvalError(f"{e.args[0]} (or {ORACLE}, {INVERSION_ORACLE})") from None


def method_backbone(method) -> str | None:
    return getattr(method, "backbone", None)


def fashioniq_modifiers(c1: str, c2: str) -> tuple[str, str]:
    """The two caption orders the official zero-shot code averages: ``c1 and c2``, ``c2 and c1``."""
    a, b = c1.strip(".?, "), c2.strip(".?, ")
    return f"{a} and {b}", f"{b} and {a}"


def query_features(bench: Benchmark, method, batch_size: int = 64, progress: bool = True) -> torch.Tensor:
    """``(Q, D)`` normalized query features for every query of ``bench``."""
    qs = bench.queries
    if isinstance(method, CaptionOracle):
        captions = method.texts(qs)
        if captions is None:
            raise EvalError(f"{method.name} needs ground-truth captions: only the built-in world has them "
                            f"({bench.name} {bench.split} does not)")
        with torch.no_grad():
            return method.vl.encode_texts(captions).float().cpu()

    refs = [bench.paths[q.reference] for q in qs]

    def encode(mods: list[str]) -> torch.Tensor:
        mods = [m if m.strip() else EMPTY_MODIFIER for m in mods]
        out = []
        for i in tqdm(range(0, len(qs), QUERY_CHUNK), desc=f"queries {bench.name}", disable=not progress,
                      leave=False):
            out.append(method.encode_queries(refs[i:i + QUERY_CHUNK], mods[i:i + QUERY_CHUNK],
                                             batch_size=batch_size).float().cpu())
        return torch.cat(out) if out else torch.empty(0, method.vl.embed_dim)

    if bench.protocol == "fashioniq":
        pairs = [fashioniq_modifiers(*q.modifiers) for q in qs]
        a, b = encode([p[0] for p in pairs]), encode([p[1] for p in pairs])
        return F.normalize((a + b) / 2, dim=-1)
    return encode([q.modifiers[0] for q in qs])


# ------------------------------------------------------------------------------------ gallery
def _weights_digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


def vl_fingerprint(vl) -> dict:
    """``vl.identity()``, plus a digest of the weights when there is no checkpoint to name them
    (random-weight models would otherwise share one identity)."""
    ident = dict(vl.identity())
    if not ident.get("checkpoint_sha256"):
        ident["weights_sha256"] = _weights_digest(vl.model)
    return ident


def default_cache_dir(bench: Benchmark) -> Path:
    return bench.root / "cache" if bench.protocol == "world" else Path("cache")


def gallery_cache_key(bench: Benchmark, vl) -> dict:
    key = {"root": str(Path(bench.root).resolve()), "dataset": bench.name, "split": bench.split,
           "vl": vl_fingerprint(vl), "n": len(bench.gallery),
           "ids_sha256": hashlib.sha256("\n".join(bench.gallery).encode()).hexdigest()}
    if bench.protocol == "world":
        meta = json.loads((Path(bench.root) / "world.json").read_text())
        key["world"] = {k: meta.get(k) for k in ("seed", "size", "version", "image_size")}
    return key


def _encode_world_gallery(bench: Benchmark, vl, batch_size: int, progress: bool) -> torch.Tensor:
    from ..world import World

    world = World(bench.root)
    names = [r["name"] for r in world.records(bench.split)]
    if names != bench.gallery:
        raise EvalError(f"{bench.root}: scenes/{bench.split}.jsonl and the CIRR image split disagree; "
                        "rebuild the world")
    arr = world.image_array(bench.split, vl.image_size, progress=progress)
    out = [vl.encode_image_tensor(vl.uint8_to_tensor(np.array(arr[i:i + batch_size]))).float().cpu()
           for i in tqdm(range(0, len(arr), batch_size), desc=f"gallery {bench.name}", disable=not progress,
                         leave=False)]
    return torch.cat(out)


def gallery_features(bench: Benchmark, vl, cache_dir: str | os.PathLike | None = None, batch_size: int = 64,
                     progress: bool = True) -> torch.Tensor:
    """``(N, D)`` normalized gallery features, cached per (dataset root, split, VL identity)."""
    if bench.missing:
        raise EvalError(bench.missing_summary() + "; the gallery cannot be encoded without its images")
    key = gallery_cache_key(bench, vl)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    name = f"gallery_{slug(bench.name)}_{slug(bench.split)}_{digest}.pt"
    cache = Path(cache_dir or default_cache_dir(bench)) / name
    if cache.exists():
        saved = torch.load(cache, map_location="cpu", weights_only=True)
        if saved.get("key") == json.dumps(key, sort_keys=True) and saved["features"].shape[0] == len(bench.gallery):
            return saved["features"]
    with torch.no_grad():
        if bench.protocol == "world":
            feats = _encode_world_gallery(bench, vl, batch_size, progress)
        else:
            paths = [bench.paths[g] for g in bench.gallery]
            feats = torch.cat([vl.encode_images(paths[i:i + batch_size], batch_size=batch_size).float().cpu()
                               for i in tqdm(range(0, len(paths), batch_size), desc=f"gallery {bench.name}",
                                             disable=not progress, leave=False)])
    with atomic_path(cache) as tmp:
        torch.save({"key": json.dumps(key, sort_keys=True), "features": feats}, tmp)
    return feats


# ------------------------------------------------------------------------------------ scoring
@dataclass
class Scored:
    """Per-query outcomes of one benchmark (arrays aligned with ``bench.queries``)."""

    rank: np.ndarray  # first ground truth, protocol ranking, 1-based (inf: none)
    subset_rank: np.ndarray  # within the CIRR subset (inf: none / not applicable)
    ap: dict[int, np.ndarray]  # CIRCO AP@k
    topk_ids: list[list[str]]
    topk_scores: list[list[float]]
    rankings: dict[str, list[str]] = field(default_factory=dict)  # top-50 per query id (submissions)
    subset_rankings: dict[str, list[str]] = field(default_factory=dict)


def score(bench: Benchmark, qf: torch.Tensor, gf: torch.Tensor, top_k: int = TABLE_TOP_K,
          keep_rankings: bool = False, progress: bool = False) -> Scored:
    """Rank the gallery for every query (in chunks) under ``bench.protocol``."""
    qs, gallery = bench.queries, np.asarray(bench.gallery)
    n_q = len(qs)
    idx = bench.index
    remove_ref = bench.protocol in ("cirr", "world")
    want_map = bench.protocol in ("circo", "world") and bench.labelled
    gts = [[idx[g] for g in q.ground_truth if g in idx] for q in qs]
    members = [[idx[m] for m in q.members] for q in qs]
    out = Scored(np.full(n_q, np.inf), np.full(n_q, np.inf), {k: np.zeros(n_q) for k in M.MAP_KS} if want_map else {},
                 [], [])
    gf = gf.float()
    n_top = max(top_k, CIRR_TOP, max(M.MAP_KS))  # submissions and mAP read the top 50
    for s in tqdm(range(0, n_q, QUERY_CHUNK), desc=f"rank {bench.name}", disable=not progress, leave=False):
        sl = slice(s, min(s + QUERY_CHUNK, n_q))
        scores = (qf[sl].float() @ gf.T).numpy()
        refs = [idx[q.reference] for q in qs[sl]] if remove_ref else None
        order = M.top_k(scores, n_top, exclude=refs)
        top = order[:, :top_k]
        out.topk_ids += gallery[top].tolist()
        # 4 decimals: enough to read, and the shipped per-query tables stay within the assets budget
        out.topk_scores += np.take_along_axis(scores, top, 1).astype(float).round(4).tolist()
        if bench.labelled:
            out.rank[sl] = M.first_relevant_rank_from_scores(scores, gts[sl], exclude=refs)
        if bench.protocol in ("cirr", "world"):
            sub = M.subset_ranking_from_scores(scores, members[sl], exclude=refs)
            if bench.labelled:
                out.subset_rank[sl] = M.subset_first_rank(sub, gts[sl])
            if keep_rankings:
                out.subset_rankings.update({q.id: gallery[r[:CIRR_SUBSET_TOP]].tolist() for q, r in zip(qs[sl], sub)})
        if want_map:  # every metric on one ranking: the world's has the reference removed, CIRCO keeps it
            rel = M.relevance(order[:, :max(M.MAP_KS)], gts[sl])
            n_gt = [len(q.ground_truth) for q in qs[sl]]
            for k in M.MAP_KS:
                out.ap[k][sl] = M.average_precision_at_k(rel, n_gt, k)
        if keep_rankings:
            out.rankings.update({q.id: gallery[r[:CIRR_TOP]].tolist() for q, r in zip(qs[sl], order)})
    return out


def summarize(bench: Benchmark, scored: Scored) -> dict[str, float]:
    """The protocol's metrics (percent). World: Recall@K, subset Recall@K and mAP@K, every one on
    the same ranking with the reference removed (on the world the reference is never a correct
    answer), and R@1 per modification family (``R@1/colour`` ...), all with the scene-level hit
    rule. CIRR, FashionIQ and CIRCO keep their official rules (CIRR removes the reference,
    CIRCO's mAP@K keeps it)."""
    if not bench.labelled:
        return {}
    if any(not q.ground_truth for q in bench.queries):
        raise EvalError(f"{bench.name} {bench.split}: some queries have no ground truth")
    if bench.protocol == "fashioniq":
        return M.recall_at_k(scored.rank, M.FASHIONIQ_KS)
    if bench.protocol == "circo":
        return {f"mAP@{k}": float(100 * v.mean()) for k, v in scored.ap.items()}
    out = M.recall_at_k(scored.rank, M.RECALL_KS)
    if all(q.members for q in bench.queries):
        out.update(M.recall_at_k(scored.subset_rank, M.SUBSET_KS, "Rs"))
    if bench.protocol == "world":
        out.update({f"mAP@{k}": float(100 * v.mean()) for k, v in scored.ap.items()})
        fams = np.array([q.mod_family or "unknown" for q in bench.queries])
        for fam in sorted(set(fams)):
            out[f"R@1/{fam}"] = float(100 * np.mean(scored.rank[fams == fam] <= 1))
    return out


def per_query_table(bench: Benchmark, scored: Scored) -> pd.DataFrame:
    def ranks(a):
        return pd.array([int(r) if np.isfinite(r) else None for r in a], dtype="Int64")

    qs = bench.queries
    modifier = [q.modifiers[0] if len(q.modifiers) == 1 else fashioniq_modifiers(*q.modifiers)[0] for q in qs]
    return pd.DataFrame({
        "query_id": [q.id for q in qs], "category": [q.category for q in qs],
        "mod_type": [q.mod_type for q in qs], "mod_family": [q.mod_family for q in qs],
        "reference": [q.reference for q in qs], "modifier": modifier,
        "target_hard": [q.target_hard for q in qs], "targets": [list(q.ground_truth) for q in qs],
        "rank": ranks(scored.rank), "subset_rank": ranks(scored.subset_rank),
        "topk_ids": scored.topk_ids, "topk_scores": scored.topk_scores,
    })


# ------------------------------------------------------------------------------------ one run
@dataclass
class EvalReport:
    dataset: str
    split: str
    method: str
    backbone: str | None
    metrics: dict[str, float]
    table: pd.DataFrame
    n_queries: int
    n_gallery: int
    notes: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    vl: str = ""

    def metrics_frame(self) -> pd.DataFrame:
        return pd.DataFrame([self.metrics]) if self.metrics else pd.DataFrame()

    def format(self) -> str:
        """The printed table: headline metrics, then per-family R@1 / per-category rows."""
        head = f"{self.dataset} {self.split}  method={self.method}"
        head += f"  backbone={self.backbone}" if self.backbone else ""
        head += f"  vl={self.vl}  queries={self.n_queries}  gallery={self.n_gallery}"
        lines = [head]
        if not self.metrics:
            lines.append("  (unlabelled split: no metrics; see the submission files)")
        main = {k: v for k, v in self.metrics.items() if "/" not in k}
        fam = {k.split("/", 1)[1]: v for k, v in self.metrics.items() if k.startswith("R@1/")}
        cats = {k: v for k, v in self.metrics.items() if "/" in k and not k.startswith("R@1/")}
        if main:
            lines.append(pd.DataFrame([main]).round(2).to_string(index=False))
        if fam:
            lines.append("R@1 by modification type:")
            lines.append(pd.DataFrame([fam]).round(2).to_string(index=False))
        if cats:
            lines.append(pd.DataFrame([cats]).round(2).to_string(index=False))
        lines += [f"note: {n}" for n in self.notes]
        lines += [f"wrote {k}: {v}" for k, v in self.files.items()]
        return "\n".join(lines)


def evaluate(dataset: str, root: str | os.PathLike, split: str, method, *, out: str | os.PathLike | None = RESULTS_DIR,
             limit: int | None = None, cache_dir: str | os.PathLike | None = None, top_k: int = TABLE_TOP_K,
             write_submission: bool | None = None, categories: Sequence[str] | None = None,
             image_root: str | os.PathLike | None = None, batch_size: int = 64, progress: bool = True,
             gallery: dict[str, torch.Tensor] | None = None, command: str | None = None) -> EvalReport:
    """Evaluate ``method`` (from :func:`build_method`) on ``dataset``/``split`` under ``root``.

    ``out=None`` writes nothing. ``write_submission``: default on for unlabelled splits.
    ``gallery``: optional in-memory cache ``{benchmark name: features}`` shared across calls.
    """
    benches = load_benchmarks(dataset, root, split, categories=categories, image_root=image_root)
    backbone = method_backbone(method)
    tables, per_cat, notes, files = [], {}, [], {}
    metrics: dict[str, float] = {}
    n_q = n_g = 0
    for bench in benches:
        bench = bench.limit(limit)
        notes += bench.notes
        if not bench.queries:
            raise EvalError(f"{bench.name} {bench.split} has no queries")
        gf = gallery.get(bench.name) if gallery is not None else None
        if gf is None:
            gf = gallery_features(bench, method.vl, cache_dir=cache_dir, batch_size=batch_size, progress=progress)
            if gallery is not None:
                gallery[bench.name] = gf
        qf = query_features(bench, method, batch_size=batch_size, progress=progress)
        submit = (not bench.labelled) if write_submission is None else write_submission
        if submit and bench.protocol == "fashioniq":
            raise EvalError("FashionIQ has no submission format")
        scored = score(bench, qf, gf, top_k=top_k, keep_rankings=submit, progress=progress)
        m = summarize(bench, scored)
        if bench.protocol == "fashioniq":
            per_cat[bench.category] = m
        else:
            metrics = m
        tables.append(per_query_table(bench, scored))
        n_q += len(bench.queries)
        n_g += len(bench.gallery)
        empty = sum(1 for q in bench.queries if any(not t.strip() for t in q.modifiers))
        if empty and bench.protocol != "fashioniq":
            notes.append(f"{empty} queries have an empty modifier (encoded as {EMPTY_MODIFIER!r})")
        if submit and out is not None:
            sub = Path(out) / "submissions" / f"{result_tag(dataset, bench.split, method.name, backbone)}.json"
            if bench.protocol in ("cirr", "world"):
                main, subset = write_cirr_submission(sub, scored.rankings, scored.subset_rankings)
                files.update({"submission": main, "subset submission": subset})
            else:
                files["submission"] = write_circo_submission(sub, scored.rankings, [q.id for q in bench.queries])
    if per_cat:
        metrics = M.fashioniq_summary(per_cat)
    table = pd.concat(tables, ignore_index=True)
    vl = method.vl
    vl_label = f"{vl.name}/{os.path.basename(vl.pretrained) if vl.pretrained else 'random'}"
    report = EvalReport(dataset, benches[0].split, method.name, backbone, metrics, table, n_q, n_g, notes, files,
                        vl_label)
    if out is not None:
        tag = result_tag(dataset, report.split, method.name, backbone)
        files["per-query table"] = str(write_per_query(table, per_query_path(out, dataset, report.split, method.name,
                                                                          backbone)))
        record = {"dataset": dataset, "split": report.split, "method": method.name, "backbone": backbone,
                  "identity": method.identity(), "metrics": metrics, "n_queries": n_q, "n_gallery": n_g,
                  "limit": limit, "notes": notes, "command": command, "date": now_utc(), "machine": machine_info()}
        files["metrics"] = str(Path(out) / "metrics" / f"{tag}.json")
        write_json(files["metrics"], record, indent=2)
    return report
