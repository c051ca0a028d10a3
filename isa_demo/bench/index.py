"""``bench index``: exact vs approximate faiss search on synthetic clustered unit vectors.

For each dimension: build time, index bytes, recall@10 against exact search (approximate
indexes tuned to a target recall on one half of the queries, reported on the other), and query
latency p50/p99 at batch 1 and 64. Exact search at batch 1 reads the whole index, so it is also
compared with the memory-bandwidth floor: index bytes / this machine's memory copy bandwidth.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import faiss
import numpy as np
import pandas as pd

from ..index import ann
from ..settings import RESULTS_DIR

K = 10


class Mixture:
    """Unit vectors from a mixture of gaussians: cluster sizes are uneven (gamma weights) and the
    within-cluster noise is anisotropic, with a variance spectrum decaying like real embeddings'
    (std of component j ~ 1/sqrt(j+1), randomly rotated), so nearest neighbours are not trivial
    (isotropic noise) nor hopeless (uniform vectors)."""

    def __init__(self, dim: int, clusters: int = 1000, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.dim = dim
        self.centers = _normalize(rng.standard_normal((clusters, dim), dtype=np.float32))
        w = rng.gamma(2.0, size=clusters)
        self.weights = w / w.sum()
        self.spread = rng.uniform(0.6, 1.2, size=clusters).astype(np.float32)
        scales = 1.0 / np.sqrt(np.arange(1, dim + 1, dtype=np.float32))
        rot, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
        self.noise_map = (scales[:, None] * rot.astype(np.float32)) / np.linalg.norm(scales)

    def sample(self, n: int, seed: int, chunk: int = 100_000) -> np.ndarray:
        rng = np.random.default_rng(seed)
        out = np.empty((n, self.dim), dtype=np.float32)
        for s in range(0, n, chunk):
            m = min(chunk, n - s)
            c = rng.choice(len(self.centers), size=m, p=self.weights)
            noise = rng.standard_normal((m, self.dim), dtype=np.float32) @ self.noise_map
            out[s:s + m] = _normalize(self.centers[c] + self.spread[c, None] * noise)
        return out


def _normalize(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def copy_bandwidth(megabytes: int = 1024, repeats: int = 5) -> float:
    """Memory bandwidth in GB/s seen by one thread copying a large array (bytes read + written)."""
    src = np.ones(megabytes * (1 << 20) // 8, dtype=np.float64)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    best = min(_timed(np.copyto, dst, src) for _ in range(repeats))
    return 2 * src.nbytes / best / 1e9


def _timed(fn, *args) -> float:
    t = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t


def auto_nlist(n: int) -> int:
    """IVF lists: the power of two nearest 4 sqrt(n), with at least 39 training points per list."""
    nlist = 2 ** round(math.log2(max(4 * math.sqrt(n), 1)))
    while nlist > 1 and n < 39 * nlist:
        nlist //= 2
    return nlist


def build(factory: str, x: np.ndarray, seed: int = 0) -> tuple[faiss.Index, float]:
    index = ann.new_index(x.shape[1], factory)
    t = time.perf_counter()
    if not index.is_trained:  # IVF/PQ: k-means on a subsample (faiss would cap it at 256 per list)
        ivf = ann.ivf_of(index)
        nlist = ivf.nlist if ivf is not None else 1
        m = min(len(x), max(64 * nlist, 10_000))
        index.train(x[np.random.default_rng(seed).choice(len(x), size=m, replace=False)])
    index.add(x)
    return index, time.perf_counter() - t


def bench_index(n: int = 1_000_000, dims=(256, 512), factories=("HNSW32", "IVF{nlist},Flat"), queries: int = 1000,
                target_recall: float = 0.95, clusters: int = 1000, latency_calls: int = 200, bandwidth_mb: int = 1024,
                seed: int = 0, out: str | Path | None = None, log=print) -> pd.DataFrame:
    from ..evaluation.results import write_table

    bandwidth = copy_bandwidth(bandwidth_mb)
    threads = faiss.omp_get_max_threads()
    log(f"memory copy bandwidth: {bandwidth:.1f} GB/s (one thread, read + write); faiss threads: {threads}")
    rows = []
    for dim in dims:
        mix = Mixture(dim, clusters, seed)
        t = time.perf_counter()
        x = mix.sample(n, seed + 1)
        q = mix.sample(queries, seed + 2)
        lat_q = mix.sample(max(64 * min(latency_calls, 50), 64), seed + 3)
        log(f"dim {dim}: {n:,} clustered vectors in {time.perf_counter() - t:.1f}s")
        truth = None
        for factory in ["Flat", *factories]:
            factory = factory.format(nlist=auto_nlist(n))
            index, build_s = build(factory, x, seed)
            if truth is None:  # exact search gives the ground truth
                _, truth = index.search(q, K)
                params, recall = "", 1.0
            else:
                half = len(q) // 2
                params, _ = ann.tune(index, q[:half], truth[:half], target_recall)
                recall = ann.recall_at_k(index.search(q[half:], K)[1], truth[half:])
            nbytes = ann.index_bytes(index)
            b1 = ann.latency_ms(index, lat_q, 1, latency_calls, K)
            b64 = ann.latency_ms(index, lat_q, 64, max(latency_calls // 10, 5), K)
            floor = nbytes / (bandwidth * 1e9) * 1e3 if ann.is_exact(factory) else float("nan")
            rows.append({"n": n, "dim": dim, "index": factory, "search_params": params, "build_s": build_s,
                         "index_mb": nbytes / 1e6, "bytes_per_vector": nbytes / n, "recall@10": recall,
                         "b1_p50_ms": b1[0], "b1_p99_ms": b1[1], "b64_p50_ms": b64[0], "b64_p99_ms": b64[1],
                         "b64_qps": 64e3 / b64[0], "floor_ms": floor, "b1_p50_over_floor": b1[0] / floor,
                         "copy_gbps": bandwidth, "threads": threads})
            log(f"  {factory:16s} {params:14s} build {build_s:7.1f}s  recall@10 {recall:.4f}  "
                f"b1 p50 {b1[0]:8.3f} ms  b64 p50 {b64[0]:8.2f} ms")
            del index
            if out:
                write_table(pd.DataFrame(rows), out)  # after every row: a long run keeps what it measured
        del x
    return pd.DataFrame(rows)


def register(sub) -> None:
    p = sub.add_parser("index", help="exact vs approximate faiss search on synthetic clustered vectors",
                       description="Build time, index bytes, recall@10 and query latency (p50/p99, batch 1 and 64) of "
                                   "exact and approximate faiss indexes on n clustered unit vectors per dimension; "
                                   "exact search at batch 1 is compared with the memory-bandwidth floor. Writes "
                                   "assets/results/index.csv (+ .json with command, machine, date).")
    p.add_argument("--n", type=int, default=1_000_000, help="gallery vectors (default 1,000,000)")
    p.add_argument("--dims", type=int, nargs="+", default=[256, 512], help="dimensions (default 256 512)")
    p.add_argument("--factories", nargs="+", default=["HNSW32", "IVF{nlist},Flat"],
                   help="approximate faiss factory strings; {nlist} becomes ~4 sqrt(n) (default: HNSW32 "
                        "IVF{nlist},Flat). Exact search (Flat) is always measured.")
    p.add_argument("--queries", type=int, default=1000, help="queries for recall (half tune, half report)")
    p.add_argument("--target-recall", type=float, default=0.95)
    p.add_argument("--clusters", type=int, default=1000, help="gaussian mixture components")
    p.add_argument("--latency-calls", type=int, default=200, help="timed batch-1 searches (batch 64: a tenth)")
    p.add_argument("--bandwidth-mb", type=int, default=1024, help="array size for the memory copy bandwidth")
    p.add_argument("--threads", type=int, default=None, help="faiss OpenMP threads (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(RESULTS_DIR / "index.csv"))
    p.set_defaults(func=_bench)


def _bench(args) -> int:
    import faiss

    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    df = bench_index(args.n, args.dims, args.factories, args.queries, args.target_recall, args.clusters,
                     args.latency_calls, args.bandwidth_mb, args.seed, args.out or None)
    print(df.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    if args.out:
        print(f"wrote {args.out}")
    return 0
