"""`python -m isa_demo index build|add|info`."""
from __future__ import annotations

import os

from ..options import add_vl_args, vl_kwargs


def register(sub) -> None:
    p = sub.add_parser("build", help="encode an image folder with the VL model into a faiss index",
                       description="Encode every image under DIR (jpg, jpeg, png, webp, bmp, gif; recursive) with the "
                                   "VL model and write a gallery index directory: faiss index, manifest (path, sha256, "
                                   "size), model identity and a report of skipped files. Written atomically.")
    p.add_argument("--images", required=True, metavar="DIR", help="folder of images")
    p.add_argument("--out", required=True, metavar="INDEX", help="index directory to write")
    _model_args(p)
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
    _model_args(p, from_index=True)
    p.set_defaults(func=_add)

    p = sub.add_parser("info", help="describe a gallery index")
    p.add_argument("--index", required=True, metavar="INDEX")
    p.set_defaults(func=_info)


def _model_args(p, from_index: bool = False) -> None:
    if from_index:
        add_vl_args(p, model=None, pretrained=None, default_note="default: the model recorded in the index")
    else:
        add_vl_args(p)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=min(8, max((os.cpu_count() or 1) - 1, 0)),
                   help="DataLoader processes decoding images (0: in the main process)")


def _report(skipped: list[dict], index_path, relative_to_index: bool) -> None:
    if skipped:
        print(f"skipped {len(skipped)} file(s) (all listed in {os.path.join(index_path, 'skipped.json')}):")
        for s in skipped[:20]:
            path = os.path.join(index_path, s["path"]) if relative_to_index else s["path"]
            print(f"  {os.path.relpath(os.path.normpath(path))}: {s['reason']}")
        if len(skipped) > 20:
            print(f"  ... and {len(skipped) - 20} more")


def _build(args) -> int:
    from ..vl import load_vl
    from .encode import scan_folder
    from .gallery import GalleryIndex, check_target

    check_target(args.out, args.force)  # cheap checks before loading the model
    scan_folder(args.images)
    vl = load_vl(**vl_kwargs(args))
    g = GalleryIndex.build(args.images, args.out, vl, args.factory, batch_size=args.batch_size,
                           workers=args.workers, search_params=args.search_params,
                           target_recall=args.target_recall, overwrite=args.force)
    src = g.meta["sources"][-1]
    print(f"indexed {src['added']} image(s) of {src['files']} into {args.out}")
    if not g.meta["exact"]:
        print(f"recall@10 of {g.factory} vs exact search: {g.meta['recall_at_10']:.4f} "
              f"({g.meta['search_params'] or 'default parameters'}, {g.meta['recall_queries']} sample queries)")
    _report(g.skipped, args.out, relative_to_index=True)
    return 0


def _add(args) -> int:
    from ..vl import builtin_checkpoint, load_vl
    from .encode import GalleryError
    from .gallery import GalleryIndex

    g = GalleryIndex.load(args.index)
    ident = g.identity
    name, pretrained = args.vl_model or ident["name"], args.vl_pretrained
    if ident["pretrained"] is None and ident["checkpoint_sha256"] is None:
        raise GalleryError(f"{args.index} was built with random weights (--pretrained none); new features "
                           f"would not be comparable with its own. Rebuild it with `index build --force`.")
    if pretrained is None:
        pretrained = ident["pretrained"]
        if pretrained and pretrained == builtin_checkpoint(name).name:
            pretrained = "builtin"
        elif pretrained and pretrained.endswith((".safetensors", ".pt", ".pth", ".bin")):
            raise GalleryError(f"{args.index} was built with checkpoint file {pretrained}; pass its path "
                               f"with --pretrained")
    vl = load_vl(name, pretrained, device=args.device)
    enc = g.add(args.images, vl, batch_size=args.batch_size, workers=args.workers)
    print(f"added {len(enc.records)} image(s) to {args.index} ({len(g)} in all); "
          f"{enc.known} already indexed, {len(enc.skipped)} skipped")
    if not g.meta["exact"]:
        print(f"recall@10 vs exact search now {g.meta['recall_at_10']:.4f} ({g.meta['search_params']})")
    _report(enc.skipped, args.index, relative_to_index=False)
    return 0


def _info(args) -> int:
    from .gallery import GalleryIndex

    g = GalleryIndex.load(args.index)
    print(g.info())
    return 0
