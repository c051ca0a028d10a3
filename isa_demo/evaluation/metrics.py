"""Retrieval metrics exactly as the official evaluation code computes them (METHOD.md 7).

All functions work on plain arrays: a score matrix ``(Q, N)`` (query x gallery, higher is
better), the rankings derived from it (gallery indices best first), and ground truths given as
gallery indices. Rankings sort by descending score; ties keep gallery order (a stable sort), so
results are deterministic. Metrics are percentages, as the official scripts print them.

- CIRR: the reference is removed from its own ranking; Recall@K counts a query when a ground
  truth is in the top K; subset Recall@K ranks only ``img_set.members`` minus the reference.
- FashionIQ: Recall@10/50 per category over that category's gallery, reference kept; the
  summary is the mean over categories and the average of the two means.
- CIRCO: no removal; ``AP@k = sum_{i<=k} P@i * rel_i / min(k, #GT)``, mAP@k its mean.
- The built-in world: CIRR's Recall@K and subset Recall@K and CIRCO's mAP@K, all on one ranking with
  the reference removed (on the world the reference is never a correct answer).
"""
from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import numpy as np

RECALL_KS = (1, 5, 10, 50)
SUBSET_KS = (1, 2, 3)
FASHIONIQ_KS = (10, 50)
MAP_KS = (5, 10, 25, 50)


def _numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x)


def rank(scores, exclude: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
    """Gallery indices best first, one row per query ``(Q, N)``.

    ``exclude``: one gallery index per query, removed from that query's ranking (CIRR's
    reference); the result is then ``(Q, N - 1)``.
    """
    scores = _numpy(scores)
    if scores.ndim != 2:
        raise ValueError(f"scores must be (queries, gallery), got shape {scores.shape}")
    order = np.argsort(-scores, axis=1, kind="stable")
    if exclude is None:
        return order
    exclude = np.asarray(exclude).reshape(-1)
    if exclude.shape[0] != order.shape[0]:
        raise ValueError(f"{exclude.shape[0]} excluded indices for {order.shape[0]} queries")
    keep = order != exclude[:, None]
    if not bool((keep.sum(1) == order.shape[1] - 1).all()):
        raise ValueError("every excluded index must be a gallery index")
    return order[keep].reshape(order.shape[0], order.shape[1] - 1)


def relevance(order: np.ndarray, ground_truth: Sequence[Iterable[int]], k: int | None = None) -> np.ndarray:
    """``(Q, k)`` booleans: is the gallery image at each rank a ground truth of its query."""
    order = np.asarray(order)[:, :k]
    if len(ground_truth) != order.shape[0]:
        raise ValueError(f"{len(ground_truth)} ground-truth sets for {order.shape[0]} rankings")
    return np.stack([np.isin(row, np.fromiter(gt, dtype=np.int64)) for row, gt in zip(order, ground_truth)]) \
        if order.shape[0] else np.zeros(order.shape, dtype=bool)


def first_relevant_rank(rel: np.ndarray) -> np.ndarray:
    """1-based rank of the first ground truth per query; ``inf`` when none is ranked."""
    rel = np.asarray(rel, dtype=bool)
    hit = rel.any(1)
    return np.where(hit, rel.argmax(1) + 1, np.inf).astype(float)


def recall_at_k(first_ranks: np.ndarray, ks: Sequence[int] = RECALL_KS, prefix: str = "R") -> dict[str, float]:
    """Recall@K (percent): share of queries whose first ground truth ranks within K."""
    first_ranks = np.asarray(first_ranks, dtype=float)
    if first_ranks.size == 0:
        raise ValueError("no queries to score")
    return {f"{prefix}@{k}": float(100.0 * np.mean(first_ranks <= k)) for k in ks}


def subset_ranking(order: np.ndarray, members: Sequence[Iterable[int]]) -> list[np.ndarray]:
    """Each query's ranking restricted to its subset members, in ranking order. ``order`` should
    already exclude the reference (it is then dropped from the subset too, as officially)."""
    return [row[np.isin(row, np.fromiter(m, dtype=np.int64))] for row, m in zip(np.asarray(order), members)]


def subset_first_rank(sub_orders: Sequence[np.ndarray], ground_truth: Sequence[Iterable[int]]) -> np.ndarray:
    """1-based rank of the first ground truth within each subset ranking (``inf`` if absent)."""
    out = np.full(len(sub_orders), np.inf)
    for i, (row, gt) in enumerate(zip(sub_orders, ground_truth)):
        hits = np.flatnonzero(np.isin(row, np.fromiter(gt, dtype=np.int64)))
        if hits.size:
            out[i] = hits[0] + 1
    return out


def average_precision_at_k(rel: np.ndarray, n_gt: Sequence[int] | np.ndarray, k: int) -> np.ndarray:
    """Per-query ``AP@k = sum_{i<=k} P@i * rel_i / min(k, #GT)`` (CIRCO's definition)."""
    rel = np.asarray(rel, dtype=float)[:, :k]
    n_gt = np.asarray(n_gt, dtype=float)
    if (n_gt <= 0).any():
        raise ValueError("AP needs at least one ground truth per query")
    precisions = np.cumsum(rel, axis=1) * rel / np.arange(1, rel.shape[1] + 1)
    return precisions.sum(1) / np.minimum(n_gt, k)


def map_at_k(rel: np.ndarray, n_gt: Sequence[int] | np.ndarray, ks: Sequence[int] = MAP_KS) -> dict[str, float]:
    """mAP@k (percent) for each k; ``rel`` must cover at least ``max(ks)`` ranks (or the gallery)."""
    return {f"mAP@{k}": float(100.0 * average_precision_at_k(rel, n_gt, k).mean()) for k in ks}


# ------------------------------------------------------------------------ fast paths from scores
# The same results as sorting the whole gallery (``rank``), without the sort: the runner uses
# these on large galleries; tests check them against the full-sort path, ties included.
def _masked(scores, exclude) -> np.ndarray:
    s = _numpy(scores).astype(np.float32, copy=True)
    if exclude is not None:
        s[np.arange(s.shape[0]), np.asarray(exclude).reshape(-1)] = -np.inf
    return s


def top_k(scores, k: int, exclude: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
    """The first ``k`` columns of ``rank(scores, exclude)``, in O(N) per query."""
    s = _masked(scores, exclude)
    n_q, n = s.shape
    k = min(k, n - (exclude is not None))
    if k <= 0:
        return np.zeros((n_q, 0), dtype=np.int64)
    part = np.argpartition(-s, k - 1, axis=1)[:, :k]
    kth = np.take_along_axis(s, part, 1).min(1)
    out = np.empty((n_q, k), dtype=np.int64)
    for i in range(n_q):
        cand = np.flatnonzero(s[i] >= kth[i])  # ascending index: the stable sort keeps ties in gallery order
        out[i] = cand[np.argsort(-s[i, cand], kind="stable")[:k]]
    return out


def first_relevant_rank_from_scores(scores, ground_truth: Sequence[Iterable[int]],
                                    exclude: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
    """``first_relevant_rank(relevance(rank(scores, exclude), ground_truth))`` without sorting:
    the best ground truth's rank is the count of images scored above it (ties: lower index)."""
    s = _masked(scores, exclude)
    ex = None if exclude is None else np.asarray(exclude).reshape(-1)
    out = np.full(s.shape[0], np.inf)
    for i, gt in enumerate(ground_truth):
        gt = np.fromiter(gt, dtype=np.int64)
        gt = gt[(gt >= 0) & (gt != (ex[i] if ex is not None else -1))]
        if not gt.size:
            continue
        best = gt[np.lexsort((gt, -s[i, gt]))[0]]
        v = s[i, best]
        out[i] = (s[i] > v).sum() + (s[i, :best] == v).sum() + 1
    return out


def subset_ranking_from_scores(scores, members: Sequence[Iterable[int]],
                               exclude: Sequence[int] | np.ndarray | None = None) -> list[np.ndarray]:
    """``subset_ranking(rank(scores, exclude), members)`` by sorting only the members."""
    s = _numpy(scores)
    ex = None if exclude is None else np.asarray(exclude).reshape(-1)
    out = []
    for i, m in enumerate(members):
        m = np.unique(np.fromiter(m, dtype=np.int64))
        if ex is not None:
            m = m[m != ex[i]]
        out.append(m[np.lexsort((m, -s[i, m]))])
    return out


# ------------------------------------------------------------------------ whole protocols at once
def cirr_metrics(scores, reference: Sequence[int], ground_truth: Sequence[Iterable[int]],
                 members: Sequence[Iterable[int]] | None = None) -> dict[str, float]:
    """CIRR Recall@1/5/10/50 (reference removed) and, with ``members``, subset Recall@1/2/3."""
    order = rank(scores, exclude=reference)
    out = recall_at_k(first_relevant_rank(relevance(order, ground_truth)), RECALL_KS)
    if members is not None:
        out.update(recall_at_k(subset_first_rank(subset_ranking(order, members), ground_truth), SUBSET_KS, "Rs"))
    return out


def fashioniq_metrics(scores, target: Sequence[int]) -> dict[str, float]:
    """FashionIQ Recall@10/50 for one category (reference kept; ``target`` -1 = not in gallery)."""
    order = rank(scores)
    return recall_at_k(first_relevant_rank(relevance(order, [[t] for t in target])), FASHIONIQ_KS)


def fashioniq_summary(per_category: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Per-category values as ``{cat}/R@K``, their means ``mean/R@K``, and ``average`` of the means."""
    out: dict[str, float] = {}
    for cat, m in per_category.items():
        out.update({f"{cat}/{k}": v for k, v in m.items()})
    for k in FASHIONIQ_KS:
        out[f"mean/R@{k}"] = float(np.mean([m[f"R@{k}"] for m in per_category.values()]))
    out["average"] = float(np.mean([out[f"mean/R@{k}"] for k in FASHIONIQ_KS]))
    return out


def circo_metrics(scores, ground_truth: Sequence[Sequence[int]],
                  exclude: Sequence[int] | np.ndarray | None = None) -> dict[str, float]:
    """mAP@5/10/25/50: CIRCO's rule is the full ranking (``exclude`` None); the world's removes
    the reference (``exclude`` = reference indices), as its Recall@K does."""
    order = rank(scores, exclude)[:, :max(MAP_KS)]
    return map_at_k(relevance(order, ground_truth), [len(g) for g in ground_truth], MAP_KS)
