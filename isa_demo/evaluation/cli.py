"""`python -m isa_demo eval ...` and `python -m isa_demo bench accuracy|plot`."""
from __future__ import annotations

import sys

from .datasets import DATASETS, FASHIONIQ_CATEGORIES

DEFAULT_ROOTS = {"world": "data/world"}
DEFAULT_SPLITS = {"world": "test", "cirr": "val", "fashioniq": "val", "circo": "val"}


def _add_vl_args(p) -> None:
    from ..vl import BUILTIN_NAME

    p.add_argument("--vl-model", default=BUILTIN_NAME, help=f"open_clip model name (default {BUILTIN_NAME})")
    p.add_argument("--vl-pretrained", default="builtin",
                   help="open_clip pretrained tag, a checkpoint path, 'builtin' (default) or 'none' (random weights)")
    p.add_argument("--device", default=None, help="cpu / cuda (default: cuda when available)")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N queries (quick runs)")
    p.add_argument("--top-k", type=int, default=10, help="top-K ids and scores kept per query in the table")
    p.add_argument("--cache-dir", default=None, help="gallery feature cache (default <world>/cache or ./cache)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def register_command(top) -> None:
    p = top.add_parser("eval", help="evaluate a method on the world, CIRR, FashionIQ or CIRCO",
                       description="Evaluate one method on one benchmark with the official protocol: prints the "
                                   "metrics, writes the per-query table (and submission files for test splits).")
    p.add_argument("--dataset", choices=DATASETS, required=True)
    p.add_argument("--root", default=None, help="dataset root in its official layout (world: data/world)")
    p.add_argument("--split", default=None,
                   help="world: test|val; cirr: val|test1; fashioniq: val; circo: val|test (default: test for "
                        "the world, val otherwise)")
    p.add_argument("--method", required=True, help="a registered method (isa_demo.methods) or caption-oracle")
    p.add_argument("--backbone", default=None, help="query-encoder backbone for trained methods")
    p.add_argument("--checkpoint", default=None, help="query-encoder checkpoint for trained methods")
    p.add_argument("--prompt", default=None,
                   help="composition template of the pseudo-token methods (default 'a photo of * that {modifier}'; "
                        "'a photo of *' drops the modifier: how good is the inversion alone)")
    p.add_argument("--categories", nargs="+", choices=FASHIONIQ_CATEGORIES, default=None,
                   help="FashionIQ categories (default: all three)")
    p.add_argument("--image-root", default=None, help="CIRR: folder the split file's paths are relative to")
    p.add_argument("--out", default=None, help="results folder (default assets/results)")
    p.add_argument("--submission", action="store_true", help="also write submission files for a labelled split")
    _add_vl_args(p)
    p.set_defaults(func=_eval)


def register(sub) -> None:
    p = sub.add_parser("accuracy", help="every shipped method/backbone on the world's test split",
                       description="Run every shipped variant and the caption oracle on the world; write "
                                   "assets/results/accuracy.csv (+ accuracy.json provenance).")
    p.add_argument("--world", default="data/world")
    p.add_argument("--split", default="test")
    p.add_argument("--out", default=None, help="results folder (default assets/results)")
    _add_vl_args(p)
    p.set_defaults(func=_accuracy)

    p = sub.add_parser("plot", help="accuracy vs GFLOPs / CPU latency figures (HTML)",
                       description="Plot accuracy.csv against efficiency.csv into one HTML page (or PNGs when "
                                   "kaleido is installed and FILE ends in .png).")
    p.add_argument("--results", default=None,
                   help="folder with accuracy.csv and efficiency.csv (default assets/results)")
    p.add_argument("--out", required=True, help="FILE.html")
    p.add_argument("--metric", default="R@1", help="accuracy column (default R@1)")
    p.add_argument("--highlight", default=None, help="backbone to highlight")
    p.set_defaults(func=_plot)


def _load_vl(args):
    import torch

    from ..vl import load_vl

    pretrained = None if str(args.vl_pretrained).lower() == "none" else args.vl_pretrained
    if pretrained is None:
        torch.manual_seed(0)  # random weights, but the same ones every run
    return load_vl(args.vl_model, pretrained=pretrained, device=args.device)


def _command(args, *words: str) -> str:
    """The command line that reproduces ``args`` (every option spelled out; works however the
    parser was called, from a shell or from ``main([...])``)."""
    import shlex

    parts = ["python", "-m", "isa_demo", *words]
    for key, value in vars(args).items():
        if key in ("func", "command", "subcommand") or value is None or value is False:
            continue
        parts.append("--" + key.replace("_", "-"))
        if value is not True:
            parts += [str(v) for v in value] if isinstance(value, list) else [str(value)]
    return shlex.join(parts)


def _errors():
    from ..methods import QueryError
    from ..vl import VLLoadError
    from ..world import WorldError
    from .datasets import DatasetError
    from .plots import ResultsMissing
    from .runner import EvalError
    from .submission import SubmissionError

    return (DatasetError, EvalError, VLLoadError, WorldError, QueryError, SubmissionError, ResultsMissing)


def _fail(e: Exception) -> int:
    print(f"error: {e}", file=sys.stderr)
    return 2


def _eval(args) -> int:
    from .runner import RESULTS_DIR, build_method, evaluate

    root = args.root or DEFAULT_ROOTS.get(args.dataset)
    if root is None:
        return _fail(ValueError(f"--root is required for {args.dataset}"))
    split = args.split or DEFAULT_SPLITS[args.dataset]
    try:
        vl = _load_vl(args)
        method = build_method(args.method, vl, args.backbone, args.checkpoint, args.prompt)
        report = evaluate(args.dataset, root, split, method, out=args.out or RESULTS_DIR, limit=args.limit,
                          cache_dir=args.cache_dir, top_k=args.top_k, write_submission=args.submission or None,
                          categories=args.categories, image_root=args.image_root, progress=not args.quiet,
                          command=_command(args, "eval"))
    except _errors() as e:
        return _fail(e)
    print(report.format())
    return 0


def _accuracy(args) -> int:
    from .accuracy import bench_accuracy
    from .runner import RESULTS_DIR

    out = args.out or RESULTS_DIR
    try:
        vl = _load_vl(args)
        df, record = bench_accuracy(args.world, vl, split=args.split, out=out, limit=args.limit,
                                    progress=not args.quiet, command=_command(args, "bench", "accuracy"),
                                    top_k=args.top_k, cache_dir=args.cache_dir)
    except _errors() as e:
        return _fail(e)
    cols = [c for c in ["method", "backbone", "R@1", "R@5", "R@10", "R@50", "Rs@1", "mAP@10", "R@1_of_oracle"]
            if c in df]
    print(df[cols].round(3).to_string(index=False))
    print(f"wrote {out}/accuracy.csv and accuracy.json")
    if record["skipped"]:
        print(f"{len(record['skipped'])} variant(s) skipped (see accuracy.json)", file=sys.stderr)
        return 1
    return 0


def _plot(args) -> int:
    from .plots import accuracy_figures, write_figures
    from .runner import RESULTS_DIR

    try:
        figs = accuracy_figures(args.results or RESULTS_DIR, metric=args.metric, highlight=args.highlight)
        paths = write_figures(figs, args.out)
    except (_errors() + (ValueError, RuntimeError)) as e:
        return _fail(e)
    print("wrote " + ", ".join(map(str, paths)))
    return 0
