"""faiss helpers shared by the gallery index and its benchmark.

Indexes are made with ``faiss.index_factory`` over inner product (features are L2-normalized,
so scores are cosine similarities). ``"Flat"`` is exact search; anything else is approximate
and gets its search parameter (HNSW ``efSearch``, IVF ``nprobe``) tuned to a target recall@k
against exact search.
"""
from __future__ import annotations

import re

import faiss
import numpy as np

EXACT = "Flat"
EF_SEARCH = (16, 32, 64, 128, 256, 512, 1024, 2048)


def is_exact(factory: str) -> bool:
    return factory.replace(" ", "") == EXACT


def new_index(dim: int, factory: str = EXACT) -> faiss.Index:
    """An empty inner-product index from a faiss factory string (``Flat``, ``HNSW32``, ``IVF1024,Flat``)."""
    try:
        return faiss.index_factory(int(dim), factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        raise ValueError(f"faiss cannot make an index from factory string {factory!r}: {_faiss_msg(e)}") from None


def as_float32(x) -> np.ndarray:
    """Torch tensor / array ``(N, D)`` -> C-contiguous float32 numpy (a copy, safe to normalize in place)."""
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    return np.array(x, dtype=np.float32, order="C", copy=True)


def train_and_add(index: faiss.Index, x: np.ndarray, factory: str = "") -> None:
    """Train the index when it needs it (IVF, PQ) on ``x``, then add ``x``."""
    if not index.is_trained:
        ivf = ivf_of(index)
        if ivf is not None and len(x) < ivf.nlist:
            raise ValueError(f"factory {factory or 'IVF'!r} needs at least {ivf.nlist} vectors to train its "
                             f"{ivf.nlist} lists, but there are only {len(x)}; use fewer lists (e.g. "
                             f"IVF{max(1, int(np.sqrt(len(x))))},Flat), HNSW32, or exact search (Flat)")
        try:
            index.train(x)
        except RuntimeError as e:
            raise ValueError(f"cannot train faiss index {factory!r} on {len(x)} vectors: {_faiss_msg(e)}") from None
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
def search_parameter(index: faiss.Index) -> tuple[str, list[int]] | None:
    """The parameter trading speed for recall, with the values to try (ascending), or None."""
    ivf = ivf_of(index)
    if ivf is not None:
        return "nprobe", [p for p in (1 << i for i in range(20)) if p < ivf.nlist] + [ivf.nlist]
    if _hnsw(index) is not None:
        return "efSearch", list(EF_SEARCH)
    return None


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
    param = search_parameter(index)
    if param is None:
        _, found = index.search(queries, truth.shape[1])
        return "", recall_at_k(found, truth)
    name, values = param
    for v in values:
        params = f"{name}={v}"
        set_search_params(index, params)
        _, found = index.search(queries, truth.shape[1])
        recall = recall_at_k(found, truth)
        if recall >= target:
            break
    return params, recall


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
