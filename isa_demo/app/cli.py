"""``python app.py`` / ``python -m isa_demo app``: serve the demo."""
from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no phoning home from an offline demo

from ..options import add_device_arg, add_vl_args, add_world_arg
from ..settings import RESULTS_DIR

DEFAULT_CONCURRENCY = 16
DEFAULT_MAX_BATCH = 16
DEFAULT_MAX_QUEUE = 64
DEFAULT_MAX_FILE_SIZE = "10mb"
DEFAULT_CACHE_TTL = 900  # seconds an upload or other cached file is kept
DEFAULT_CACHE_SWEEP = 300  # seconds between two sweeps of the cache
DEFAULT_SESSIONS = 256  # browser/API sessions whose state the server keeps (gradio's default: 10,000)
DEFAULT_THREADS = 1  # torch CPU threads: concurrent requests, not one operator, are the parallelism


def env_default(name: str, default, kind=str):
    """``ISA_DEMO_{name}`` from the environment (a deployment's settings, e.g. a Space's variables),
    else ``default``."""
    value = os.environ.get(f"ISA_DEMO_{name}")
    return default if value in (None, "") else kind(value)


def add_app_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                   help="interface to listen on (default 127.0.0.1; 0.0.0.0 for every interface)")
    p.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    p.add_argument("--share", action="store_true", help="also open a public gradio.live link (needs the internet)")
    p.add_argument("--index", default=None, metavar="PATH",
                   help="a gallery index made by `python -m isa_demo index build` (default: the built-in world's "
                        "test images)")
    p.add_argument("--backend", choices=("faiss", "milvus"), default="faiss",
                   help="where the gallery lives: a faiss index directory (default) or a Milvus collection (--uri)")
    p.add_argument("--uri", default=None, help="Milvus: a local file (./gallery.db, the embedded milvus-lite) or a "
                                               "server (http://host:19530); needs the 'scale' extra")
    p.add_argument("--collection", default=None, help="Milvus collection (default isa_demo_gallery)")
    add_vl_args(p, device=False)
    add_world_arg(p, help="built world for examples and the inspector")
    p.add_argument("--results", default=str(RESULTS_DIR), metavar="DIR", help="results tables (default: %(default)s)")
    limits = p.add_argument_group("limits for a public deployment (each also an ISA_DEMO_* environment variable)")
    limits.add_argument("--concurrency", type=int, default=env_default("CONCURRENCY", DEFAULT_CONCURRENCY, int),
                        help="queries handled at once (decoded in parallel, encoded and searched in batches); "
                             "ISA_DEMO_CONCURRENCY (default %(default)s)")
    limits.add_argument("--max-batch", type=int, default=env_default("MAX_BATCH", DEFAULT_MAX_BATCH, int),
                        help="most queries whose encoders and search run as one batch; 1: no batching; "
                             "ISA_DEMO_MAX_BATCH (default %(default)s)")
    limits.add_argument("--max-queue", type=int, default=env_default("MAX_QUEUE", DEFAULT_MAX_QUEUE, int),
                        help="requests waiting at most; further ones are refused with 'the server is busy ... retry' "
                             "(HTTP 503); ISA_DEMO_MAX_QUEUE (default %(default)s)")
    limits.add_argument("--max-file-size", default=env_default("MAX_FILE_SIZE", DEFAULT_MAX_FILE_SIZE),
                        help="largest upload accepted, e.g. 10mb, 500kb; ISA_DEMO_MAX_FILE_SIZE (default %(default)s)")
    limits.add_argument("--cache-ttl", type=int, default=env_default("CACHE_TTL", DEFAULT_CACHE_TTL, int),
                        help="seconds an upload or other cached file is kept before it is deleted; 0: kept until the "
                             "server stops; ISA_DEMO_CACHE_TTL (default %(default)s)")
    limits.add_argument("--cache-sweep", type=int, default=env_default("CACHE_SWEEP", DEFAULT_CACHE_SWEEP, int),
                        help="seconds between two deletions of expired cached files; ISA_DEMO_CACHE_SWEEP "
                             "(default %(default)s)")
    limits.add_argument("--max-sessions", type=int, default=env_default("MAX_SESSIONS", DEFAULT_SESSIONS, int),
                        help="sessions whose state is kept in memory, the least recently used dropped first (every "
                             "API call is a session of its own); ISA_DEMO_MAX_SESSIONS (default %(default)s)")
    limits.add_argument("--threads", type=int, default=env_default("THREADS", DEFAULT_THREADS, int),
                        help="torch CPU threads for the query encoders; 1 (the default) leaves the other cores to "
                             "the requests being received, decoded and answered meanwhile (more threads per batch "
                             "make them wait for each other); 0: torch's own choice (one per core); "
                             "ISA_DEMO_THREADS (default %(default)s)")
    add_device_arg(p)


def delete_cache_setting(ttl: int, sweep: int) -> tuple[int, int] | None:
    """gradio's ``delete_cache=(every, older than)`` in seconds, or None (``ttl`` 0: no sweep)."""
    if not ttl or ttl <= 0:
        return None
    return max(1, min(int(sweep), int(ttl))), int(ttl)


def build_demo(service, concurrency: int = DEFAULT_CONCURRENCY, max_queue: int = DEFAULT_MAX_QUEUE,
               delete_cache: tuple[int, int] | None = (DEFAULT_CACHE_SWEEP, DEFAULT_CACHE_TTL)):
    import gradio as gr

    from .ui import build_ui

    demo = build_ui(service, delete_cache=delete_cache)
    demo.queue(default_concurrency_limit=max(1, int(concurrency)), max_size=max(1, int(max_queue)))
    gr.set_static_paths(service.allowed_paths())  # served in place, never copied into the cache
    return demo


def launch(demo, service, host: str = "127.0.0.1", port: int | None = 7860, share: bool = False,
           block: bool = True, quiet: bool = False, max_file_size: str | int = DEFAULT_MAX_FILE_SIZE,
           max_sessions: int = DEFAULT_SESSIONS):
    """Start the server; serves files only from the gallery, the world's test images and the
    app's own assets (``service.allowed_paths()``); ``POST /api/compose`` beside gradio's API
    (:mod:`isa_demo.app.rest`), which refuses as busy past the queue's own ``max_size``."""
    from .rest import compose_route
    from .ui import CSS, PAGE_JS

    # gradio parses --max-file-size in launch(), before it serves: the route reads gradio's bytes
    api = compose_route(service, lambda: demo.max_file_size, demo._queue.max_size or DEFAULT_MAX_QUEUE)
    return demo.launch(server_name=host, server_port=port, share=share, allowed_paths=service.allowed_paths(),
                       max_file_size=max_file_size, show_error=False, prevent_thread_lock=not block, quiet=quiet,
                       css=CSS, js=PAGE_JS, footer_links=["api"], ssr_mode=False, run_history=False,
                       enable_monitoring=False,
                       app_kwargs={"routes": [api]},
                       state_session_capacity=max(1, int(max_sessions)))


def _faiss_single_thread() -> None:
    # one query at a time: OpenMP fan-out costs more than it saves and fights concurrent requests
    try:
        import faiss

        faiss.omp_set_num_threads(1)
    except Exception:
        pass


def serve(args) -> int:
    t0 = time.perf_counter()
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # a clean exit (atexit cleanup) on terminate
    if args.threads and args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    _faiss_single_thread()
    from .service import load_service

    print("loading the VL model and the gallery ...", file=sys.stderr)
    # a missing checkpoint / index / incompatible model is a UserError: isa_demo.cli.run says it in one line
    service = load_service(args.vl_model, args.vl_pretrained, args.index, args.world, args.results,
                           device=args.device, max_batch=args.max_batch, backend=args.backend, uri=args.uri,
                           collection=args.collection)
    service.catalogue.warm_up()
    demo = build_demo(service, args.concurrency, args.max_queue, delete_cache_setting(args.cache_ttl, args.cache_sweep))
    print(f"ready in {time.perf_counter() - t0:.1f} s: {len(service.gallery):,} gallery images, methods "
          f"{', '.join(service.catalogue.method_choices())}", file=sys.stderr)
    launch(demo, service, args.host, args.port, args.share, block=True, max_file_size=args.max_file_size,
           max_sessions=args.max_sessions)
    return 0


def main(argv: list[str] | None = None) -> int:
    from ..options import run

    p = argparse.ArgumentParser(prog="app.py", description="The isa-demo Gradio app (composed image retrieval).")
    add_app_args(p)
    p.set_defaults(func=serve)
    return run(p.parse_args(argv))


def register_command(top) -> None:
    """``python -m isa_demo app ...`` (same flags as ``python app.py``)."""
    p = top.add_parser("app", help="serve the Gradio demo", description="Serve the Gradio demo (same as app.py).")
    add_app_args(p)
    p.set_defaults(func=serve)
