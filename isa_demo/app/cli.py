"""``python app.py`` / ``python -m isa_demo app``: serve the demo."""
from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no phoning home from an offline demo

from ..options import add_device_arg, add_vl_args, add_world_arg
from ..settings import RESULTS_DIR

DEFAULT_CONCURRENCY = 4
MAX_UPLOAD = "25mb"


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
    p.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY,
                   help=f"queries run at once (queue default_concurrency_limit, default {DEFAULT_CONCURRENCY})")
    p.add_argument("--max-queue", type=int, default=256, help="requests waiting at most (further ones are refused)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own)")
    add_device_arg(p)


def build_demo(service, concurrency: int = DEFAULT_CONCURRENCY, max_queue: int = 256):
    import gradio as gr

    from .ui import build_ui

    demo = build_ui(service)
    demo.queue(default_concurrency_limit=max(1, int(concurrency)), max_size=max_queue)
    gr.set_static_paths(service.allowed_paths())  # served in place, never copied into the cache
    return demo


def launch(demo, service, host: str = "127.0.0.1", port: int | None = 7860, share: bool = False,
           block: bool = True, quiet: bool = False):
    """Start the server; serves files only from the gallery, the world's test images and the
    app's own assets (``service.allowed_paths()``)."""
    from .ui import CSS, PAGE_JS

    return demo.launch(server_name=host, server_port=port, share=share, allowed_paths=service.allowed_paths(),
                       max_file_size=MAX_UPLOAD, show_error=False, prevent_thread_lock=not block, quiet=quiet,
                       css=CSS, js=PAGE_JS, footer_links=["api"], ssr_mode=False, run_history=False)


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
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    _faiss_single_thread()
    from .service import load_service

    print("loading the VL model and the gallery ...", file=sys.stderr)
    # a missing checkpoint / index / incompatible model is a UserError: isa_demo.cli.run says it in one line
    service = load_service(args.vl_model, args.vl_pretrained, args.index, args.world, args.results,
                           device=args.device, backend=args.backend, uri=args.uri, collection=args.collection)
    service.catalogue.warm_up()
    demo = build_demo(service, args.concurrency, args.max_queue)
    print(f"ready in {time.perf_counter() - t0:.1f} s: {len(service.gallery):,} gallery images, methods "
          f"{', '.join(service.catalogue.method_choices())}", file=sys.stderr)
    launch(demo, service, args.host, args.port, args.share, block=True)
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
