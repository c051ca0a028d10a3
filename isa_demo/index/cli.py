"""`python -m isa_demo index build|add|info` and `python -m isa_demo bench index`."""
from __future__ import annotations

import os
import sys


def register(sub) -> None:
    p = sub.add_parser("build", help="encode an image folder with the VL model into a faiss index",
                       description="Encode every image under DIR (jpg, jpeg, png, webp, bmp, gif; recursive) with the "
                                   "VL model and write a gallery index directory: faiss index, manifest (path, sha256, "
                                   "size), model identity and a report of skipped files. Written atomically.")
    p.add_argument("--images", required=True, metavar="DIR", help="folder of images")
    p.add_argument("--out", required=True, metavar="INDEX", help="index directory to write")
    _model_args(p, default_model="isa-world-vit", default_pretrained="builtin")
    p.add_argument("--factory", default="Flat",
                   help="faiss index_factory string: Flat (exact, default), HNSW32, IVF1024,Flat, ...")
    p.add_argument("--search-params", default=None,
                   help="faiss search parameters for approximate indexes, e.g. efSearch=128 or nprobe=16 "
                        "(default: the smallest reaching --target-recall)")
    p.add_argument("--target-recall", type=float, default=0.95, help="recall@10 to tune approximate search to")
    p.add_argument("--force", action="store_true", help="replace an existing index at --out")
    p.set_defaults(func=_build)

    p = sub.add_parser("add", help="add new images to an index (skips content already indexed)",
                       description="Encode the images under DIR whose content (sha256) is not in the index yet and add "
                                   "them; the index is rewritten atomically. The model defaults to the index's own.")
    p.add_argument("--index", required=True, metavar="INDEX")
    p.add_argument("--images", required=True, metavar="DIR")
    _model_args(p, default_model=None, default_pretrained=None)
    p.set_defaults(func=_add)

    p = sub.add_parser("info", help="describe a gallery index")
    p.add_argument("--index", required=True, metavar="INDEX")
    p.set_defaults(func=_info)


def _model_args(p, default_model, default_pretrained) -> None:
    if default_model is None:
        model_default = pretrained_default = " (default: the model recorded in the index)"
    else:
        model_default, pretrained_default = f" (default: {default_model})", f" (default: {default_pretrained})"
    p.add_argument("--model", default=default_model, help=f"open_clip model name{model_default}")
    p.add_argument("--pretrained", default=default_pretrained,
                   help=f"open_clip tag, checkpoint path, 'builtin' or 'none' (random weights){pretrained_default}")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=min(8, max((os.cpu_count() or 1) - 1, 0)),
                   help="DataLoader processes decoding images (0: in the main process)")
    p.add_argument("--device", default=None, help="cuda / cpu (default: cuda when available)")


def _load_vl(name: str, pretrained: str | None, device: str | None):
    from ..vl import load_vl

    return load_vl(name, None if pretrained in (None, "none") else pretrained, device=device)


def _report(skipped: list[dict], index_path, relative_to_index: bool) -> None:
    if skipped:
        print(f"skipped {len(skipped)} file(s) (all listed in {os.path.join(index_path, 'skipped.json')}):")
        for s in skipped[:20]:
            path = os.path.join(index_path, s["path"]) if relative_to_index else s["path"]
            print(f"  {os.path.relpath(os.path.normpath(path))}: {s['reason']}")
        if len(skipped) > 20:
            print(f"  ... and {len(skipped) - 20} more")


def _errors():
    from ..vl import VLLoadError
    from .encode import GalleryError

    return GalleryError, VLLoadError


def _build(args) -> int:
    from .encode import scan_folder
    from .gallery import GalleryIndex, check_target

    try:
        check_target(args.out, args.force)  # cheap checks before loading the model
        scan_folder(args.images)
        vl = _load_vl(args.model, args.pretrained, args.device)
        g = GalleryIndex.build(args.images, args.out, vl, args.factory, batch_size=args.batch_size,
                               workers=args.workers, search_params=args.search_params,
                               target_recall=args.target_recall, overwrite=args.force)
    except _errors() as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    src = g.meta["sources"][-1]
    print(f"indexed {src['added']} image(s) of {src['files']} into {args.out}")
    if not g.meta["exact"]:
        print(f"recall@10 of {g.factory} vs exact search: {g.meta['recall_at_10']:.4f} "
              f"({g.meta['search_params'] or 'default parameters'}, {g.meta['recall_queries']} sample queries)")
    _report(g.skipped, args.out, relative_to_index=True)
    return 0


def _add(args) -> int:
    from ..vl import builtin_checkpoint
    from .gallery import GalleryIndex

    try:
        g = GalleryIndex.load(args.index)
        ident = g.identity
        name, pretrained = args.model or ident["name"], args.pretrained
        if ident["pretrained"] is None and ident["checkpoint_sha256"] is None:
            raise _errors()[0](f"{args.index} was built with random weights (--pretrained none); new features "
                               f"would not be comparable with its own. Rebuild it with `index build --force`.")
        if pretrained is None:
            pretrained = ident["pretrained"]
            if pretrained and pretrained == builtin_checkpoint(name).name:
                pretrained = "builtin"
            elif pretrained and pretrained.endswith((".safetensors", ".pt", ".pth", ".bin")):
                raise _errors()[0](f"{args.index} was built with checkpoint file {pretrained}; pass its path "
                                   f"with --pretrained")
        vl = _load_vl(name, pretrained, args.device)
        enc = g.add(args.images, vl, batch_size=args.batch_size, workers=args.workers)
    except _errors() as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"added {len(enc.records)} image(s) to {args.index} ({len(g)} in all); "
          f"{enc.known} already indexed, {len(enc.skipped)} skipped")
    if not g.meta["exact"]:
        print(f"recall@10 vs exact search now {g.meta['recall_at_10']:.4f} ({g.meta['search_params']})")
    _report(enc.skipped, args.index, relative_to_index=False)
    return 0


def _info(args) -> int:
    from .gallery import GalleryIndex

    try:
        g = GalleryIndex.load(args.index)
    except _errors() as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(g.info())
    return 0


def register_bench(sub) -> None:
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
    p.add_argument("--out", default="assets/results/index.csv")
    p.set_defaults(func=_bench)


def _bench(args) -> int:
    import faiss

    from .bench import bench_index

    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    df = bench_index(args.n, args.dims, args.factories, args.queries, args.target_recall, args.clusters,
                     args.latency_calls, args.bandwidth_mb, args.seed, args.out or None)
    print(df.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    if args.out:
        print(f"wrote {args.out}")
    return 0
