"""``python -m isa_demo bench app``: the demo's end-to-end latency through its HTTP API.

1. Cold start: ``python app.py`` is started as a subprocess and the clock runs until ``/``
   answers 200 with the page (model, gallery and method loaded: ``app.py`` loads them before it
   listens). Seconds.
2. Sequential: ``/compose`` called ``--sequential`` times (after ``--warmup`` calls) over the
   plain HTTP API (:class:`HttpCompose`: upload the reference, submit, read the event stream):
   p50/p99/mean in ms, end to end (upload, queue, compose, search, JSON back), and the server's
   own ``total_ms`` p50 for comparison. ``sequential_gradio_client``: the same through
   gradio_client's ``Client.predict``, which adds its own polling (it checks for new messages
   every 50 ms); ``api_floor_gradio_client``: gradio_client's round trip to ``/variants`` (no
   work, no upload), i.e. that overhead alone.
3. Concurrent: ``--clients`` threads, each with its own HTTP connection, ``--queries`` calls
   each: errors (must be 0), p50/p99 and throughput.

Queries are the built-in world's test queries (reference file + modifier), cycled. The method
defaults to ISA with the lightest shipped backbone (the one the app offers first). Writes
``assets/results/app.csv`` with a provenance sidecar. The counts are flags so that it can be run
small (``--clients 2 --queries 3 --sequential 5``).
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..options import add_vl_args
from ..settings import REPO, WORLD_DIR

APP_CSV = "app.csv"


def add_bench_args(p) -> None:
    p.add_argument("--clients", type=int, default=16, help="concurrent clients (default 16)")
    p.add_argument("--queries", type=int, default=50, help="queries per concurrent client (default 50)")
    p.add_argument("--sequential", type=int, default=200, help="sequential queries for p50/p99 (default 200)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--method", default=None, help="method (default: isa when shipped, else the app's default)")
    p.add_argument("--backbone", default=None, help="ISA backbone (default: the lightest shipped)")
    p.add_argument("--k", type=int, default=10, help="top-K per query")
    p.add_argument("--url", default=None, help="measure an app that is already running at URL (no cold start)")
    p.add_argument("--concurrency", type=int, default=None, help="the app's --concurrency (default: its own)")
    p.add_argument("--index", default=None, help="passed to app.py")
    add_vl_args(p, model=None, pretrained=None, default_note="passed to app.py; default: the app's", device=False)
    p.add_argument("--startup-timeout", type=float, default=900.0, help="seconds to wait for the app to serve")
    p.add_argument("--world", default=str(WORLD_DIR), help="world whose test queries are sent")
    p.add_argument("--out", default=None, help="results directory (default assets/results)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_page(url: str, timeout: float, proc: subprocess.Popen | None = None) -> float:
    """Seconds until ``url`` answers 200 (raises if the process dies or the time runs out)."""
    import httpx

    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the app exited with code {proc.returncode} before serving")
        try:
            r = httpx.get(url, timeout=2.0)
            if r.status_code == 200 and "<html" in r.text.lower():
                return time.perf_counter() - t0
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not serve within {timeout:.0f} s")


def start_app(port: int, extra: list[str], log_path: str | os.PathLike, timeout: float
              ) -> tuple[subprocess.Popen, float]:
    """Start ``python app.py`` on 127.0.0.1:port; returns the process and its cold-start seconds."""
    cmd = [sys.executable, str(REPO / "app.py"), "--host", "127.0.0.1", "--port", str(port), *extra]
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    log = open(log_path, "w")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        wait_for_page(f"http://127.0.0.1:{port}/", timeout, proc)
    except Exception:
        stop_app(proc)
        log.close()
        tail = Path(log_path).read_text()[-3000:]
        raise RuntimeError(f"app did not start; its log ends with:\n{tail}") from None
    return proc, time.perf_counter() - t0


def stop_app(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def world_queries(world: str | os.PathLike, n: int | None = None) -> list[tuple[str, str]]:
    from ..world import World

    w = World(world)
    paths = {r["name"]: str(w.image_path(r)) for r in w.records("test")}
    qs = [(paths[q["reference"]], q["caption"]) for q in w.queries("test")]
    return qs[:n] if n else qs


def percentiles(ms: list[float]) -> dict:
    a = np.asarray(ms, dtype=np.float64)
    if not len(a):
        return {"p50_ms": float("nan"), "p99_ms": float("nan"), "mean_ms": float("nan")}
    return {"p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)), "mean_ms": float(a.mean())}


class HttpCompose:
    """``/compose`` over the plain HTTP API, as curl would call it: upload the reference
    (``POST gradio_api/upload``), submit (``POST gradio_api/call/compose``), read the result
    from the event stream (``GET gradio_api/call/compose/{event_id}``). No client-side polling.
    A call returns ``(milliseconds, the JSON answer)``, the reference file read inside the time."""

    route = "/gradio_api"

    def __init__(self, url: str):
        import httpx

        self.url = url.rstrip("/") + self.route
        self.http = httpx.Client(timeout=120.0)

    def __call__(self, query, method, backbone, k) -> tuple[float, dict]:
        path, modifier = query
        t = time.perf_counter()
        with open(path, "rb") as f:
            out = self.ask((os.path.basename(path), f.read()), modifier, method, backbone, k)
        return (time.perf_counter() - t) * 1000.0, out

    def ask(self, image: tuple[str, bytes], modifier, method, backbone, k) -> dict:
        import json

        r = self.http.post(f"{self.url}/upload", files={"files": image})
        r.raise_for_status()
        image = {"path": r.json()[0], "meta": {"_type": "gradio.FileData"}}
        r = self.http.post(f"{self.url}/call/compose", json={"data": [image, modifier, method, backbone, k]})
        r.raise_for_status()
        event, data = None, None
        with self.http.stream("GET", f"{self.url}/call/compose/{r.json()['event_id']}") as stream:
            for line in stream.iter_lines():
                if line.startswith("event:"):
                    event = line.split(":", 1)[1].strip()
                elif line.startswith("data:") and event in ("complete", "error"):
                    data = line.split(":", 1)[1].strip()
                    break
        if event != "complete" or data is None:
            raise RuntimeError(f"/compose answered {event}: {data}")
        return json.loads(data)[0]


class RestCompose(HttpCompose):
    """``POST /api/compose`` (:mod:`isa_demo.app.rest`): the reference and the fields in one
    multipart request, the JSON answer in its response."""

    route = "/api/compose"

    def ask(self, image: tuple[str, bytes], modifier, method, backbone, k) -> dict:
        fields = {"modifier": modifier, "method": method, "backbone": backbone or "", "k": str(k)}
        r = self.http.post(self.url, data=fields, files={"image": image})
        if r.status_code != 200:
            raise RuntimeError(f"/api/compose answered {r.status_code}: {r.text[:300]}")
        return r.json()


CLIENTS = {"gradio": HttpCompose, "rest": RestCompose}  # bench load --api


def _call(client, query, method, backbone, k):
    from gradio_client import handle_file

    path, modifier = query
    t = time.perf_counter()
    out = client.predict(handle_file(path), modifier, method, backbone, k, api_name="/compose")
    return (time.perf_counter() - t) * 1000.0, out


def default_choice(info: dict, method: str | None, backbone: str | None) -> tuple[str, str | None]:
    """The method and backbone to measure, from the app's ``/variants``: ISA with the lightest
    shipped backbone when it serves ISA, else ``sum``, else its first method."""
    if method is None:
        method = ("isa" if "isa" in info["methods"] and info["backbones"]
                  else "sum" if "sum" in info["methods"] else info["methods"][0])
    if backbone is None and method == "isa":
        from ..settings import LIGHTEST_BACKBONE as LIGHTEST

        backbone = LIGHTEST if LIGHTEST in info["backbones"] else info["backbones"][0]
    return method, backbone


def measure(url: str, queries: list[tuple[str, str]], clients: int, per_client: int, sequential: int, warmup: int,
            method: str | None, backbone: str | None, k: int) -> tuple[list[dict], dict]:
    from gradio_client import Client

    client = Client(url, verbose=False)
    info = client.predict(api_name="/variants")
    method, backbone = default_choice(info, method, backbone)
    http = HttpCompose(url)
    for i in range(warmup):
        http(queries[i % len(queries)], method, backbone, k)
    rows = []
    for scenario, call in (("sequential", http), ("sequential_gradio_client", lambda *a: _call(client, *a))):
        seq, server = [], []
        for i in range(sequential):
            ms, out = call(queries[i % len(queries)], method, backbone, k)
            seq.append(ms)
            server.append(out["timings_ms"]["total_ms"])
        rows.append({"scenario": scenario, "clients": 1, "queries": sequential, "errors": 0, **percentiles(seq),
                     "throughput_qps": 1000.0 * len(seq) / max(sum(seq), 1e-9),
                     "server_total_ms_p50": float(np.median(server)) if server else float("nan")})
    floor = []  # a round trip to an endpoint that does no work: gradio + gradio_client overhead
    for _ in range(min(sequential, 50)):
        t = time.perf_counter()
        client.predict(api_name="/variants")
        floor.append((time.perf_counter() - t) * 1000.0)
    rows.append({"scenario": "api_floor_gradio_client", "clients": 1, "queries": len(floor), "errors": 0,
                 **percentiles(floor), "throughput_qps": 1000.0 * len(floor) / max(sum(floor), 1e-9),
                 "server_total_ms_p50": 0.0})

    lat: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def worker(c: int) -> None:
        cl = HttpCompose(url)
        for j in range(per_client):
            try:
                ms, _ = cl(queries[(c * per_client + j) % len(queries)], method, backbone, k)
                with lock:
                    lat.append(ms)
            except Exception as e:  # noqa: BLE001
                with lock:
                    errors.append(f"{type(e).__name__}: {e}")

    if clients > 0 and per_client > 0:
        t0 = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(worker, range(clients)))
        wall = time.perf_counter() - t0
        rows.append({"scenario": "concurrent", "clients": clients, "queries": clients * per_client,
                     "errors": len(errors), **percentiles(lat), "throughput_qps": len(lat) / max(wall, 1e-9),
                     "server_total_ms_p50": float("nan")})
    return rows, {"method": method, "backbone": backbone, "errors": errors[:10], "gallery_size": info["gallery_size"]}


def run_bench(clients: int = 16, per_client: int = 50, sequential: int = 200, warmup: int = 5,
              method: str | None = None, backbone: str | None = None, k: int = 10, url: str | None = None,
              app_args: list[str] | None = None, world: str | os.PathLike = WORLD_DIR,
              out: str | os.PathLike | None = None, startup_timeout: float = 900.0):
    """Run the benchmark; returns the table (also written to ``out/app.csv`` unless ``out`` is False)."""
    import pandas as pd

    proc = None
    cold = float("nan")
    log_path = Path(tempfile.gettempdir()) / f"isa-demo-bench-app-{os.getpid()}.log"
    if url is None:
        port = free_port()
        proc, cold = start_app(port, app_args or [], log_path, startup_timeout)
        url = f"http://127.0.0.1:{port}/"
        print(f"cold start: {cold:.1f} s to a serving page")
    try:
        # read after the start: on a fresh clone the app itself renders the world's test split
        queries = world_queries(world, 500)
        rows, meta = measure(url, queries, clients, per_client, sequential, warmup, method, backbone, k)
    finally:
        if proc is not None:
            stop_app(proc)
            log_path.unlink(missing_ok=True)
    rows.insert(0, {"scenario": "cold_start", "clients": 0, "queries": 0, "errors": 0, "p50_ms": float("nan"),
                    "p99_ms": float("nan"), "mean_ms": float("nan"), "throughput_qps": float("nan"),
                    "server_total_ms_p50": float("nan"), "cold_start_s": cold})
    df = pd.DataFrame(rows)
    df.insert(1, "method", meta["method"])
    df.insert(2, "backbone", meta["backbone"] or "")
    df["gallery_size"] = meta["gallery_size"]
    if out is not False:
        from ..evaluation.results import write_table
        from ..settings import RESULTS_DIR

        path = Path(out or RESULTS_DIR) / APP_CSV
        write_table(df, path)
        print(f"wrote {path}")
    if meta["errors"]:
        print("errors (first 10):\n  " + "\n  ".join(meta["errors"]), file=sys.stderr)
    return df


def run_bench_cli(args) -> int:
    extra = []
    for flag in ("index", "vl_model", "vl_pretrained", "concurrency"):
        value = getattr(args, flag, None)
        if value is not None:
            extra += [f"--{flag.replace('_', '-')}", str(value)]
    df = run_bench(args.clients, args.queries, args.sequential, args.warmup, args.method, args.backbone, args.k,
                   args.url, extra, args.world, args.out, args.startup_timeout)
    with_cols = [c for c in ("scenario", "method", "backbone", "clients", "queries", "errors", "p50_ms", "p99_ms",
                             "throughput_qps", "server_total_ms_p50", "cold_start_s") if c in df]
    print(df[with_cols].to_string(index=False, float_format=lambda x: f"{x:.1f}"))
    return 1 if int(df["errors"].sum()) else 0


def register(sub) -> None:
    """``python -m isa_demo bench app``."""
    p = sub.add_parser("app", help="end-to-end latency of the demo through its HTTP API",
                       description="Start `python app.py` (cold start to a serving page, seconds), then time "
                                   "composed queries through the HTTP API with gradio_client: sequential p50/p99 and "
                                   "N concurrent clients x M queries each (errors, p50/p99). Writes "
                                   "assets/results/app.csv.")
    add_bench_args(p)
    p.set_defaults(func=run_bench_cli)
