"""`python -m isa_demo eval ...`: one method on one benchmark with its official protocol.

:func:`add_eval_args` / :func:`load_eval_vl` are shared with ``bench accuracy`` and ``bench prompts``."""
from __future__ import annotations

from ..errors import UserError
from ..options import add_vl_args, command_line, vl_kwargs
from ..settings import RESULTS_DIR, WORLD_DIR
from .datasets import DATASETS, FASHIONIQ_CATEGORIES

DEFAULT_ROOTS = {"world": str(WORLD_DIR)}
DEFAULT_SPLITS = {"world": "test", "cirr": "val", "fashioniq": "val", "circo": "val"}


def add_eval_args(p) -> None:
    add_vl_args(p)
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N queries (quick runs)")
    p.add_argument("--top-k", type=int, default=10, help="top-K ids and scores kept per query in the table")
    p.add_argument("--cache-dir", default=None, help="gallery feature cache (default <world>/cache or ./cache)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def load_eval_vl(args):
    """The VL model of an evaluation; random weights ("none") are seeded, the same on every run."""
    import torch

    from ..settings import parse_pretrained
    from ..vl import load_vl

    if parse_pretrained(args.vl_pretrained) is None:
        torch.manual_seed(0)
    return load_vl(**vl_kwargs(args))


def register_command(top) -> None:
    p = top.add_parser("eval", help="evaluate a method on the world, CIRR, FashionIQ or CIRCO",
                       description="Evaluate one method on one benchmark with the official protocol: prints the "
                                   "metrics, writes the per-query table (and submission files for test splits).")
    p.add_argument("--dataset", choices=DATASETS, required=True)
    p.add_argument("--root", default=None, help=f"dataset root in its official layout (world: {WORLD_DIR})")
    p.add_argument("--split", default=None,
                   help="world: test|val; cirr: val|test1; fashioniq: val; circo: val|test (default: test for "
                        "the world, val otherwise)")
    p.add_argument("--method", required=True,
                   help="a registered method (isa_demo.methods), caption-oracle, or inversion-oracle (the "
                        "reference's caption composed with the modifier: the ceiling of the pseudo-token methods)")
    p.add_argument("--backbone", default=None, help="query-encoder backbone for trained methods")
    p.add_argument("--checkpoint", default=None, help="query-encoder checkpoint for trained methods")
    p.add_argument("--prompt", default=None,
                   help="composition template of the pseudo-token methods (default 'a photo of * that {modifier}'; "
                        "'a photo of *' drops the modifier: how good is the inversion alone)")
    p.add_argument("--categories", nargs="+", choices=FASHIONIQ_CATEGORIES, default=None,
                   help="FashionIQ categories (default: all three)")
    p.add_argument("--image-root", default=None, help="CIRR: folder the split file's paths are relative to")
    p.add_argument("--out", default=str(RESULTS_DIR), help="results folder")
    p.add_argument("--submission", action="store_true", help="also write submission files for a labelled split")
    add_eval_args(p)
    p.set_defaults(func=_eval)


def _eval(args) -> int:
    from .runner import build_method, evaluate

    root = args.root or DEFAULT_ROOTS.get(args.dataset)
    if root is None:
        raise UserError(f"--root is required for {args.dataset}")
    split = args.split or DEFAULT_SPLITS[args.dataset]
    vl = load_eval_vl(args)
    method = build_method(args.method, vl, args.backbone, args.checkpoint, args.prompt)
    report = evaluate(args.dataset, root, split, method, out=args.out, limit=args.limit,
                      cache_dir=args.cache_dir, top_k=args.top_k, write_submission=args.submission or None,
                      categories=args.categories, image_root=args.image_root, progress=not args.quiet,
                      command=command_line(args, "eval"))
    print(report.format())
    return 0
