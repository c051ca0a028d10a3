"""``python -m isa_demo bench load``: the demo under sustained load, round after round.

Starts ``python app.py`` (as ``bench app`` does, with its own fresh gradio cache folder), then
runs rounds: ``--clients`` concurrent clients (each its own HTTP connection) composing back to
back for ``--seconds``; ``--rounds`` such rounds, then one round for each of ``--also-clients``
(the 16 clients the throughput target is stated for). The rounds run once per ``--api``:
``gradio``, gradio's plain HTTP API (:class:`isa_demo.bench.app.HttpCompose`: upload, submit,
read the event stream: three requests through gradio's queue), and ``rest``, the app's
``POST /api/compose`` (:class:`isa_demo.bench.app.RestCompose`: one multipart request). Per round: queries
answered, errors (any answer other than a result), throughput, p50/p99/mean latency, the mean
batch size the server reports (concurrent queries encoded and searched together), the server's
RSS after the round and its growth over the previous round of the same size, and the size of
the cache folder (uploads and other cached files; bounded by the app's ``--cache-ttl``).

Writes ``assets/results/load.csv`` (with a provenance sidecar). Run small to check it works:
``--clients 4 --seconds 5 --rounds 2 --also-clients 2``.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..options import add_vl_args
from ..settings import WORLD_DIR
from .app import CLIENTS, default_choice, free_port, percentiles, start_app, stop_app, world_queries

LOAD_CSV = "load.csv"


def rss_mb(pid: int | None) -> float:
    """Resident memory of a process in MB (NaN when unknown)."""
    if pid is None:
        return float("nan")
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    try:
        import psutil

        return psutil.Process(pid).memory_info().rss / 1e6
    except Exception:  # noqa: BLE001 - no psutil, no such process
        return float("nan")


def folder_size(path: str | os.PathLike | None) -> tuple[float, int]:
    """``(MB, files)`` under ``path`` (NaN, 0 when unknown)."""
    if path is None or not os.path.isdir(path):
        return float("nan"), 0
    total, files = 0, 0
    for root, _, names in os.walk(path):
        for n in names:
            try:
                total += os.lstat(os.path.join(root, n)).st_size
                files += 1
            except OSError:
                pass
    return total / 1e6, files


def load_round(url: str, queries: list[tuple[str, str]], clients: int, seconds: float, method: str,
               backbone: str | None, k: int, api: str = "gradio") -> dict:
    """``clients`` threads composing back to back over ``api`` for ``seconds``; one row."""
    lat: list[float] = []
    batches: list[int] = []
    errors: list[str] = []
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds

    def client(c: int) -> None:
        http = CLIENTS[api](url)
        i = c
        while time.perf_counter() < deadline:
            try:
                ms, out = http(queries[i % len(queries)], method, backbone, k)
                with lock:
                    lat.append(ms)
                    batches.append(int(out.get("batch_size", 1)))
            except Exception as e:  # noqa: BLE001 - counted and reported
                with lock:
                    errors.append(f"{type(e).__name__}: {str(e)[:200]}")
            i += clients

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    wall = time.perf_counter() - t0
    return {"clients": clients, "seconds": round(wall, 2), "queries": len(lat), "errors": len(errors),
            "throughput_qps": len(lat) / max(wall, 1e-9), **percentiles(lat),
            "batch_mean": sum(batches) / len(batches) if batches else float("nan"), "first_errors": errors[:3]}


def run_load(url: str, queries, clients: int = 32, seconds: float = 60.0, rounds: int = 3,
             also_clients: list[int] | None = None, method: str | None = None, backbone: str | None = None,
             k: int = 10, pid: int | None = None, cache_dir: str | os.PathLike | None = None,
             apis: tuple[str, ...] = ("gradio", "rest")):
    """The rounds against a serving app, for each of ``apis``; returns ``(rows, meta)``."""
    from gradio_client import Client

    info = Client(url, verbose=False).predict(api_name="/variants")
    method, backbone = default_choice(info, method, backbone)
    for api in apis:
        warm = CLIENTS[api](url)
        for i in range(3):
            warm(queries[i % len(queries)], method, backbone, k)
    plan = [(api, n) for api in apis for n in [clients] * rounds + list(also_clients or [])]
    rows, last_rss, errors = [], {}, []
    for r, (api, n) in enumerate(plan, 1):
        row = load_round(url, queries, n, seconds, method, backbone, k, api)
        errors += row.pop("first_errors")
        rss = rss_mb(pid)
        prev = last_rss.get((api, n))
        cache_mb, cache_files = folder_size(cache_dir)
        rows.append({"round": r, "api": api, **row, "server_rss_mb": rss,
                     "rss_growth_pct": (rss - prev) / prev * 100.0 if prev else float("nan"),
                     "cache_mb": cache_mb, "cache_files": cache_files})
        last_rss[api, n] = rss
        print(f"round {r}: {api}, {n} clients, {row['queries']} queries in {row['seconds']:.0f} s, "
              f"{row['throughput_qps']:.1f}/s, p50 {row['p50_ms']:.0f} ms, p99 {row['p99_ms']:.0f} ms, "
              f"errors {row['errors']}, batch {row['batch_mean']:.1f}, RSS {rss:.0f} MB, cache {cache_mb:.1f} MB",
              file=sys.stderr)
    return rows, {"method": method, "backbone": backbone, "gallery_size": info["gallery_size"], "errors": errors}


def run_bench(clients: int = 32, seconds: float = 60.0, rounds: int = 3, also_clients: list[int] | None = None,
              method: str | None = None, backbone: str | None = None, k: int = 10, url: str | None = None,
              pid: int | None = None, cache_dir: str | None = None, app_args: list[str] | None = None,
              world: str | os.PathLike = WORLD_DIR, out: str | os.PathLike | None = None,
              startup_timeout: float = 900.0, apis: tuple[str, ...] = ("gradio", "rest")):
    """Start the app (unless ``url``), run the rounds, write ``out/load.csv`` (unless ``out`` is False)."""
    import pandas as pd

    proc, own_cache = None, None
    log_path = Path(tempfile.gettempdir()) / f"isa-demo-bench-load-{os.getpid()}.log"
    if url is None:
        own_cache = tempfile.mkdtemp(prefix="isa-demo-load-cache-")
        cache_dir = own_cache
        port = free_port()
        env = os.environ.get("GRADIO_TEMP_DIR")
        os.environ["GRADIO_TEMP_DIR"] = own_cache  # the app's cache folder: its size is measured
        try:
            proc, cold = start_app(port, app_args or [], log_path, startup_timeout)
        finally:
            if env is None:
                os.environ.pop("GRADIO_TEMP_DIR", None)
            else:
                os.environ["GRADIO_TEMP_DIR"] = env
        url, pid = f"http://127.0.0.1:{port}/", proc.pid
        print(f"app serving after {cold:.1f} s", file=sys.stderr)
    try:
        queries = world_queries(world, 500)
        rows, meta = run_load(url, queries, clients, seconds, rounds, also_clients, method, backbone, k, pid,
                              cache_dir, tuple(apis))
    finally:
        if proc is not None:
            stop_app(proc)
            log_path.unlink(missing_ok=True)
        if own_cache:
            shutil.rmtree(own_cache, ignore_errors=True)
    df = pd.DataFrame(rows)
    df.insert(1, "method", meta["method"])
    df.insert(2, "backbone", meta["backbone"] or "")
    df["gallery_size"] = meta["gallery_size"]
    if out is not False:
        from ..evaluation.results import write_table
        from ..settings import RESULTS_DIR

        path = Path(out or RESULTS_DIR) / LOAD_CSV
        write_table(df, path)
        print(f"wrote {path}")
    if meta["errors"]:
        print("errors (first ones):\n  " + "\n  ".join(meta["errors"][:10]), file=sys.stderr)
    return df


def run_bench_cli(args) -> int:
    extra = []
    for flag in ("index", "vl_model", "vl_pretrained", "concurrency", "max_batch", "max_queue", "threads"):
        value = getattr(args, flag, None)
        if value is not None:
            extra += [f"--{flag.replace('_', '-')}", str(value)]
    df = run_bench(args.clients, args.seconds, args.rounds, args.also_clients, args.method, args.backbone, args.k,
                   args.url, args.pid, args.cache_dir, extra, args.world, args.out, args.startup_timeout, args.api)
    cols = ["round", "api", "clients", "queries", "errors", "throughput_qps", "p50_ms", "p99_ms", "batch_mean",
            "server_rss_mb", "rss_growth_pct", "cache_mb"]
    print(df[cols].to_string(index=False, float_format=lambda x: f"{x:.1f}"))
    return 1 if int(df["errors"].sum()) else 0


def register(sub) -> None:
    """``python -m isa_demo bench load``."""
    p = sub.add_parser("load", help="sustained load: N concurrent clients for D seconds, R rounds",
                       description="Start `python app.py`, then R rounds of N concurrent clients calling /compose "
                                   "for D seconds each over loopback (and one round per --also-clients): "
                                   "throughput, p50/p99, errors, the server's RSS after each round, the cache "
                                   "folder's size. Writes assets/results/load.csv.")
    p.add_argument("--clients", type=int, default=32, help="concurrent clients per round (default 32)")
    p.add_argument("--seconds", type=float, default=60.0, help="length of a round (default 60)")
    p.add_argument("--rounds", type=int, default=3, help="rounds with --clients (default 3)")
    p.add_argument("--also-clients", type=int, nargs="*", default=[16],
                   help="one more round for each of these client counts (default: 16, the target's)")
    p.add_argument("--api", nargs="+", choices=["gradio", "rest"], default=["gradio", "rest"],
                   help="the APIs loaded, one after the other (default both): gradio's (upload, submit, event "
                        "stream) and the app's one-request POST /api/compose")
    p.add_argument("--method", default=None, help="method (default: isa when shipped, else the app's default)")
    p.add_argument("--backbone", default=None, help="ISA backbone (default: the lightest shipped)")
    p.add_argument("--k", type=int, default=10, help="top-K per query")
    p.add_argument("--url", default=None, help="load an app that is already running at URL (no start)")
    p.add_argument("--pid", type=int, default=None, help="with --url: the app's process id, for its RSS")
    p.add_argument("--cache-dir", default=None, help="with --url: the app's GRADIO_TEMP_DIR, for its size")
    p.add_argument("--concurrency", type=int, default=None, help="the app's --concurrency (default: its own)")
    p.add_argument("--max-batch", type=int, default=None, help="the app's --max-batch (default: its own)")
    p.add_argument("--max-queue", type=int, default=None, help="the app's --max-queue (default: its own)")
    p.add_argument("--threads", type=int, default=None, help="the app's --threads (default: its own)")
    p.add_argument("--index", default=None, help="passed to app.py")
    add_vl_args(p, model=None, pretrained=None, default_note="passed to app.py; default: the app's", device=False)
    p.add_argument("--startup-timeout", type=float, default=900.0, help="seconds to wait for the app to serve")
    p.add_argument("--world", default=str(WORLD_DIR), help="world whose test queries are sent")
    p.add_argument("--out", default=None, help="results directory (default assets/results)")
    p.set_defaults(func=run_bench_cli)
