"""faiss helpers shared by the gallery index and its benchmark.

Indexes are made with ``faiss.index_factory`` over inner product (features are L2-normalized,
so scores are cosine similarities). ``"Flat"`` is exact search; anything else is approximate
and gets its search parameter (HNSW ``efSearch``, IVF ``nprobe``) tuned to a target recall@k
against exact search.
"""
from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

import faiss
import numpy as np

EXACT = "Flat"
EF_SEARCH = (16, 32, 64, 128, 256, 512, 1024, 2048)


def is_exact(factory: str) -> bool:
    return factory.replace(" ", "") == EXACT


def new_index(dim: int, factory: str = EXACT) -> faiss.Index:
    """An empty inner-product index from a faiss factory string (``Flat``, ``HNSW32``, ``IVF1024,Flat``)."""
    try:
        index = faiss.index_factory(int(dim), factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        raise ValueError(f"faiss cannot make an index from factory string {factory!r}: {_faiss_msg(e)}") from None
    ivf = ivf_of(index)
    if ivf is not None and isinstance(faiss.downcast_index(ivf), faiss.IndexIVFPQ):
        # polysemous codes serve Hamming-threshold filtering, which is never used here, and their
        # training (simulated annealing) costs far more than the PQ itself
        faiss.downcast_index(ivf).do_polysemous_training = False
    return index


def as_float32(x) -> np.ndarray:
    """Torch tensor / array ``(N, D)`` -> C-contiguous float32 numpy (a copy, safe to normalize in place)."""
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    return np.array(x, dtype=np.float32, order="C", copy=True)


def train_and_add(index: faiss.Index, x: np.ndarray, factory: str = "", train: np.ndarray | None = None) -> None:
    """Train the index when it needs it (IVF, PQ) on ``train`` (default ``x``), then add ``x``."""
    if not index.is_trained:
        t = x if train is None else train
        ivf = ivf_of(index)
        if ivf is not None and len(t) < ivf.nlist:
            raise ValueError(f"factory {factory or 'IVF'!r} needs at least {ivf.nlist} vectors to train its "
                             f"{ivf.nlist} lists, but there are only {len(t)}; use fewer lists (e.g. "
                             f"IVF{max(1, int(np.sqrt(len(t))))},Flat), HNSW32, or exact search (Flat)")
        try:
            index.train(t)
        except RuntimeError as e:
            raise ValueError(f"cannot train faiss index {factory!r} on {len(t)} vectors: {_faiss_msg(e)}") from None
    if len(x):
        index.add(x)


def all_vectors(index: faiss.Index) -> np.ndarray:
    """Every stored vector (exact for Flat, HNSW and IVF-Flat storage; lossy for PQ/SQ codes)."""
    try:
        return index.reconstruct_n(0, index.ntotal)
    except RuntimeError:
        ivf = ivf_of(index)
        if ivf is None:
            raise
        ivf.make_direct_map()
        return index.reconstruct_n(0, index.ntotal)


# ---------------------------------------------------------------------- search parameters
REFINE_K_FACTORS = (2, 4, 8, 16)


def _base_values(index: faiss.Index) -> list[str] | None:
    """The ``nprobe`` / ``efSearch`` settings of an index, cheapest first, or None."""
    ivf = ivf_of(index)
    if ivf is not None:
        return [f"nprobe={p}" for p in [p for p in (1 << i for i in range(20)) if p < ivf.nlist] + [ivf.nlist]]
    if _hnsw(index) is not None:
        return [f"efSearch={v}" for v in EF_SEARCH]
    return None


def is_refined(index: faiss.Index) -> bool:
    return isinstance(faiss.downcast_index(index), faiss.IndexRefine)


def search_parameter(index: faiss.Index) -> list[str] | None:
    """The search parameter settings trading speed for recall, cheapest first (faiss
    ParameterSpace strings), or None when there is nothing to tune. A refined index (``Refine``,
    ``RFlat``) also tries re-ranking more candidates (``k_factor_rf``) at each ``nprobe``."""
    values = _base_values(index)
    if values is not None and is_refined(index):
        values = [f"{v},k_factor_rf={k}" for v in values for k in REFINE_K_FACTORS]
    return values


def set_search_params(index: faiss.Index, params: str) -> None:
    """Apply ``"efSearch=64"`` / ``"nprobe=16"`` (faiss ParameterSpace syntax); ``""`` is a no-op."""
    if params:
        try:
            faiss.ParameterSpace().set_index_parameters(index, params)
        except RuntimeError as e:
            raise ValueError(f"faiss search parameters {params!r} do not apply to this index: {_faiss_msg(e)}") \
                from None


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of the exact top-k found in the approximate top-k (ids of -1 never match)."""
    k = truth.shape[1]
    hit = (found[:, :, None] == truth[:, None, :]) & (truth[:, None, :] >= 0)
    return float(hit.any(1).sum(1).mean() / k)


def tune(index: faiss.Index, queries: np.ndarray, truth: np.ndarray, target: float) -> tuple[str, float]:
    """Smallest search parameter value reaching ``target`` recall@k on ``queries`` (or the largest
    value tried). Returns the parameter string (applied to ``index``) and the recall reached."""
    values = search_parameter(index)
    if values is None:
        _, found = index.search(queries, truth.shape[1])
        return "", recall_at_k(found, truth)
    for params in values:
        set_search_params(index, params)
        _, found = index.search(queries, truth.shape[1])
        recall = recall_at_k(found, truth)
        if recall >= target:
            break
    return params, recall


SWEEP_K_FACTORS = (256, 128, 64, 32, 16, 8, 4, 2)
SATURATED = 0.001  # a doubling of nprobe / efSearch that adds less recall than this: the codes limit it


def latency_ms(index: faiss.Index, queries: np.ndarray, batch: int, calls: int, k: int = 10,
               threads: int | None = None) -> tuple[float, float]:
    """p50, p99 of the wall time of ``calls`` searches of ``batch`` queries each (ms), after one
    warm-up; on ``threads`` OpenMP threads (1: as the app searches; None: faiss's current setting)."""
    before = faiss.omp_get_max_threads()
    if threads:
        faiss.omp_set_num_threads(threads)
    try:
        index.search(queries[:batch], k)
        times = []
        for c in range(calls):
            s = (c * batch) % max(len(queries) - batch + 1, 1)
            t = time.perf_counter()
            index.search(queries[s:s + batch], k)
            times.append(time.perf_counter() - t)
    finally:
        faiss.omp_set_num_threads(before)
    ms = np.asarray(times) * 1e3
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def tune_fastest(index: faiss.Index, queries: np.ndarray, truth: np.ndarray, target: float,
                 latency_queries: np.ndarray, k_factors: Sequence[int] = SWEEP_K_FACTORS, slower: float = 2.0,
                 log: Callable[[str], None] | None = None) -> tuple[str, float, list[dict]]:
    """The search setting with the lowest batch-1 latency among those reaching ``target``
    recall@k on ``queries`` (the tuning set: report recall on other queries).

    For each ``k_factor_rf`` (refined indexes only; largest first) the smallest ``nprobe`` /
    ``efSearch`` reaching the target is found by doubling (then halfway back), from the value the previous (larger)
    ``k_factor_rf`` needed (fewer re-ranked candidates never need fewer probes); a sweep stops early when a doubling
    adds under ``SATURATED`` recall (the codes, not the probes, limit it) or when the next doubling
    (twice this batched search's cost) would cost more than ``slower`` times the cheapest candidate
    found so far (it cannot win). Each candidate's batch-1 p50 on one thread is then timed on ``latency_queries``.
    Returns the parameters (applied to ``index``), the recall they reached on ``queries``, and
    every setting tried (``params``, ``recall``, ``batch_ms_per_query``, ``b1_p50_ms`` for
    candidates). When no setting reaches the target, the one with the highest recall is returned.
    """
    k = truth.shape[1]
    base = _base_values(index)
    if base is None:
        _, found = index.search(queries, k)
        return "", recall_at_k(found, truth), []
    kfs = sorted({int(f) for f in k_factors}, reverse=True) if is_refined(index) else [None]
    tried: list[dict] = []
    best_cost = float("inf")
    start = 0

    def trial(v: str, kf: int | None) -> dict:
        params = v if kf is None else f"{v},k_factor_rf={kf}"
        set_search_params(index, params)
        t = time.perf_counter()
        _, found = index.search(queries, k)
        cost = (time.perf_counter() - t) * 1e3 / len(queries)
        row = {"params": params, "recall": recall_at_k(found, truth), "batch_ms_per_query": cost}
        tried.append(row)
        if log:
            log(f"    {params}: recall@{k} {row['recall']:.4f}, {cost:.3f} ms/query batched")
        return row

    for kf in kfs:
        prev = -1.0
        for j in range(start, len(base)):
            row = trial(base[j], kf)
            if row["recall"] >= target:
                name, hi = base[j].split("=")
                lo = int(base[j - 1].split("=")[1]) if j else int(hi)
                if int(hi) - lo >= 2:  # halfway back to the previous value (192 between 128 and 256)
                    mid = trial(f"{name}={(lo + int(hi)) // 2}", kf)
                    row = mid if mid["recall"] >= target else row
                row["candidate"] = True
                best_cost = min(best_cost, row["batch_ms_per_query"])
                start = j  # fewer candidates re-ranked need at least as many probes
                break
            if row["recall"] - prev < SATURATED or 2 * row["batch_ms_per_query"] > slower * best_cost:
                break
            prev = row["recall"]
    candidates = [r for r in tried if r.get("candidate")]
    for r in candidates:
        set_search_params(index, r["params"])
        r["b1_p50_ms"] = latency_ms(index, latency_queries, 1, len(latency_queries), k, threads=1)[0]
        if log:
            log(f"    candidate {r['params']}: batch-1 p50 {r['b1_p50_ms']:.3f} ms")
    pick = min(candidates, key=lambda r: r["b1_p50_ms"]) if candidates else max(tried, key=lambda r: r["recall"])
    set_search_params(index, pick["params"])
    return pick["params"], pick["recall"], tried


def sample_recall(index: faiss.Index, vectors: np.ndarray, params: str | None = None, target: float = 0.95,
                  k: int = 10, n_queries: int = 1000, seed: int = 0) -> dict:
    """Recall@k of ``index`` against exact search, with a sample of ``vectors`` themselves as queries.

    With ``params`` the given search parameters are applied and measured; otherwise the search
    parameter is tuned to ``target`` on one half of the sample and recall is reported on the other.
    """
    n = len(vectors)
    k = min(k, n)
    rng = np.random.default_rng(seed)
    q = vectors[rng.choice(n, size=min(n_queries, n), replace=False)]
    _, truth = faiss.knn(q, vectors, k, metric=faiss.METRIC_INNER_PRODUCT)
    return recall_against(index, q, truth, params, target)


def recall_against(index: faiss.Index, q: np.ndarray, truth: np.ndarray, params: str | None = None,
                   target: float = 0.95) -> dict:
    """:func:`sample_recall` with the exact top-k ``truth`` of queries ``q`` already known."""
    k = truth.shape[1]
    if params is None and len(q) >= 2:
        half = len(q) // 2
        params, _ = tune(index, q[:half], truth[:half], target)
        q, truth = q[half:], truth[half:]
    set_search_params(index, params or "")
    _, found = index.search(q, k)
    return {"search_params": params or "", "recall_at_10": recall_at_k(found, truth), "recall_queries": len(q),
            "recall_k": k}


def index_bytes(index: faiss.Index) -> int:
    return int(faiss.serialize_index(index).nbytes)


# ---------------------------------------------------------------------- indexes larger than one array
def chunked_knn(q: np.ndarray, chunks: Iterable[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-``k`` of ``q`` over vectors that come in chunks (ids count on across
    chunks), holding one chunk at a time: ``(scores, ids)``, ids -1 where fewer than k vectors."""
    best_s = np.full((len(q), k), -np.inf, dtype=np.float32)
    best_i = np.full((len(q), k), -1, dtype=np.int64)
    start = 0
    for x in chunks:
        if len(x):
            s, i = faiss.knn(q, np.ascontiguousarray(x, dtype=np.float32), min(k, len(x)),
                             metric=faiss.METRIC_INNER_PRODUCT)
            s, i = np.concatenate([best_s, s], 1), np.concatenate([best_i, np.where(i >= 0, i + start, -1)], 1)
            order = np.argsort(-s, axis=1, kind="stable")[:, :k]
            best_s, best_i = np.take_along_axis(s, order, 1), np.take_along_axis(i, order, 1)
        start += len(x)
    return best_s, best_i


def sample_rows(chunks: Iterable[np.ndarray], n_total: int, sizes: Sequence[int], seed: int = 0) -> list[np.ndarray]:
    """Uniform samples without replacement (one per entry of ``sizes``, each capped by what there
    is, drawn independently) of rows of vectors that come in chunks, in one pass holding one
    chunk at a time."""
    rng = np.random.default_rng(seed)
    groups = [np.sort(rng.choice(n_total, size=min(m, n_total), replace=False)) for m in sizes]
    out: list[list[np.ndarray]] = [[] for _ in sizes]
    start, dim = 0, 0
    for x in chunks:
        dim = x.shape[1] if x.ndim == 2 else dim
        for g, rows in zip(groups, out):
            sel = g[(g >= start) & (g < start + len(x))] - start
            if len(sel):
                rows.append(np.asarray(x[sel], dtype=np.float32))
        start += len(x)
    return [np.concatenate(r) if r else np.empty((0, dim), np.float32) for r in out]


def build_from_chunks(dim: int, factory: str, chunks: Callable[[], Iterable[np.ndarray]], train: np.ndarray | None,
                      on_disk: str | os.PathLike | None = None, progress: Callable[[int], None] | None = None
                      ) -> faiss.Index:
    """An index filled chunk by chunk from ``chunks()`` (a fresh iterable of ``(n, dim)`` float32
    arrays per call), trained first on ``train`` when it needs training (IVF, PQ).

    ``on_disk``: a file for the inverted lists of an IVF index (faiss ``OnDiskInvertedLists``):
    each chunk is added to a copy of the trained empty index and written as a block, then the
    blocks are merged into that file, so the lists never need to fit in memory. Reading the
    index back needs ``faiss.IO_FLAG_ONDISK_SAME_DIR`` (the file stays next to the index)."""
    index = new_index(dim, factory)
    if not index.is_trained:
        if train is None or not len(train):
            raise ValueError(f"factory {factory!r} needs training vectors")
        train_and_add(index, np.empty((0, dim), np.float32), factory, train=train)
    if on_disk is None:
        for x in chunks():
            index.add(np.ascontiguousarray(x, dtype=np.float32))
            if progress:
                progress(len(x))
        return index
    if ivf_of(index) is None or "Refine" in factory or "RFlat" in factory:
        raise ValueError(f"on-disk inverted lists need an IVF index without refinement; {factory!r} is not one")
    from faiss.contrib.ondisk import merge_ondisk

    on_disk = Path(on_disk)
    blocks, start = [], 0
    try:
        for j, x in enumerate(chunks()):
            block = faiss.clone_index(index)
            block.add_with_ids(np.ascontiguousarray(x, dtype=np.float32), np.arange(start, start + len(x)))
            blocks.append(str(on_disk.with_name(f"{on_disk.name}.block{j:05d}")))
            faiss.write_index(block, blocks[-1])
            del block
            start += len(x)
            if progress:
                progress(len(x))
        merge_ondisk(index, blocks, str(on_disk))
    finally:
        for b in blocks:
            Path(b).unlink(missing_ok=True)
    return index


def ivf_of(index):
    """The IVF part of an index (also behind a pre-transform), or None."""
    try:
        return faiss.extract_index_ivf(index)
    except (RuntimeError, AttributeError):
        return None


def _hnsw(index):
    idx = faiss.downcast_index(index)
    return idx.hnsw if hasattr(idx, "hnsw") else None


def _faiss_msg(e: Exception) -> str:
    """The useful line of a faiss C++ exception text."""
    text = str(e).strip()
    m = re.search(r" at \S+:\d+: (.*)", text)  # "Error in <function> at <file>:<line>: <message>"
    return (m.group(1) if m else text.splitlines()[-1] if text else type(e).__name__).strip()
