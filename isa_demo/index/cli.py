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
    p.add_argument("--out", metavar="INDEX", help="index directory to write (the faiss backend)")
    _model_args(p)
    p.add_argument("--factory", default="Flat",
                   help="faiss index_factory string: Flat (exact, default), HNSW32, IVF1024,Flat, "
                        "IVF4096,PQ32x8,Refine(SQ8) (large galleries), ...")
    g = p.add_argument_group("large galleries (the 'scale' extra: pip install -r requirements-scale.txt)")
    g.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="encode in this process (local, default) or on Ray (ray): a local Ray, or the cluster at "
                        "--ray-address; writes embedding shards first (resumable), then the index shard by shard")
    g.add_argument("--ray-address", default=None, metavar="ADDRESS",
                   help="a Ray cluster (host:port, ray://host:10001 or auto; default: start a local Ray)")
    g.add_argument("--ray-workers", type=int, default=None, metavar="N",
                   help="model actors (default: one per GPU of the cluster, else its CPUs less one)")
    g.add_argument("--work", default=None, metavar="DIR",
                   help="embedding shards of --engine ray (default .INDEX.shards next to --out); kept when a run "
                        "fails, so the same command resumes; removed when the index is written")
    g.add_argument("--on-disk", action="store_true",
                   help="IVF factories: keep the inverted lists in index.ivfdata beside the index (memory-mapped) "
                        "instead of in memory (--engine ray)")
    g.add_argument("--train-size", type=int, default=262_144,
                   help="vectors sampled to train IVF/PQ factories (--engine ray; default %(default)s)")
    g.add_argument("--backend", choices=("faiss", "milvus"), default="faiss",
                   help="store the gallery as a faiss index directory (--out, default) or in Milvus (--uri)")
    g.add_argument("--uri", default=None, help="Milvus: a local file (./gallery.db: the embedded milvus-lite) or a "
                                               "server (http://host:19530)")
    g.add_argument("--collection", default=None, help="Milvus collection (default isa_demo_gallery)")
    g.add_argument("--milvus-index", default="FLAT", choices=("FLAT", "IVF_FLAT", "HNSW", "AUTOINDEX"),
                   help="Milvus index type (default FLAT: exact search)")
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

    p = sub.add_parser("export", help="copy a faiss gallery index into a Milvus collection",
                       description="Store the vectors, manifest and model identity of a gallery index in Milvus (the "
                                   "same ids), so `python app.py --backend milvus --uri URI` serves it.")
    p.add_argument("--index", required=True, metavar="INDEX")
    p.add_argument("--uri", required=True, help="a local file (./gallery.db: milvus-lite) or http://host:19530")
    p.add_argument("--collection", default=None, help="Milvus collection (default isa_demo_gallery)")
    p.add_argument("--milvus-index", default="FLAT", choices=("FLAT", "IVF_FLAT", "HNSW", "AUTOINDEX"))
    p.add_argument("--force", action="store_true", help="replace an existing collection")
    p.set_defaults(func=_export)

    p = sub.add_parser("info", help="describe a gallery index (or a Milvus gallery: --backend milvus --uri URI)")
    p.add_argument("--index", metavar="INDEX")
    _backend_args(p)
    p.set_defaults(func=_info)


def _backend_args(p) -> None:
    p.add_argument("--backend", choices=("faiss", "milvus"), default="faiss")
    p.add_argument("--uri", default=None, help="Milvus URI (--backend milvus)")
    p.add_argument("--collection", default=None, help="Milvus collection (default isa_demo_gallery)")


def _model_args(p, from_index: bool = False) -> None:
    if from_index:
        add_vl_args(p, model=None, pretrained=None, default_note="default: the model recorded in the index")
    else:
        add_vl_args(p)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=min(8, max((os.cpu_count() or 1) - 1, 0)),
                   help="DataLoader processes decoding images (0: in the main process)")


def _report(skipped: list[dict], index_path, relative_to_index: bool, listed: bool = True) -> None:
    if skipped:
        where = f" (all listed in {os.path.join(index_path, 'skipped.json')})" if listed else ""
        print(f"skipped {len(skipped)} file(s){where}:")
        for s in skipped[:20]:
            path = os.path.join(index_path, s["path"]) if relative_to_index else s["path"]
            print(f"  {os.path.relpath(os.path.normpath(path))}: {s['reason']}")
        if len(skipped) > 20:
            print(f"  ... and {len(skipped) - 20} more")


def _build(args) -> int:
    from ..vl import load_vl
    from .encode import GalleryError, scan_folder
    from .gallery import GalleryIndex, check_target

    if args.backend == "milvus":
        return _build_milvus(args)
    if not args.out:
        raise GalleryError("index build needs --out INDEX (or --backend milvus --uri URI)")
    if args.on_disk and args.engine != "ray":
        raise GalleryError("--on-disk builds the index shard by shard: use it with --engine ray")
    check_target(args.out, args.force)  # cheap checks before loading the model
    scan_folder(args.images)
    if args.engine == "ray":
        from ..common import require_extra

        require_extra("ray.data", "the Ray engine (--engine ray)")
    vl = load_vl(**vl_kwargs(args))
    if args.engine == "ray":
        g = GalleryIndex.build_ray(args.images, args.out, vl, args.factory, address=args.ray_address,
                                   workers=args.ray_workers, batch_size=args.batch_size, work=args.work,
                                   on_disk=args.on_disk, train_size=args.train_size, search_params=args.search_params,
                                   target_recall=args.target_recall, overwrite=args.force)
    else:
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


def _build_milvus(args) -> int:
    from ..vl import load_vl
    from . import milvus
    from .encode import GalleryError, scan_folder

    if not args.uri:
        raise GalleryError("--backend milvus needs --uri (a local file such as ./gallery.db, or http://host:19530)")
    collection = args.collection or milvus.DEFAULT_COLLECTION
    milvus.check_target(milvus.connect(args.uri), args.uri, collection, args.force)  # before loading the model
    scan_folder(args.images)
    vl = load_vl(**vl_kwargs(args))
    g = milvus.build(args.images, args.uri, vl, collection, engine=args.engine, index_type=args.milvus_index,
                     overwrite=args.force, batch_size=args.batch_size, workers=args.workers,
                     ray_address=args.ray_address, ray_workers=args.ray_workers, work=args.work)
    src = g.meta["sources"][-1]
    print(f"stored {src['added']} image(s) of {src['files']} in Milvus collection {collection} at {args.uri}")
    _report([{**s, "path": str(s["path"])} for s in g.skipped], ".", relative_to_index=False, listed=False)
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


def _export(args) -> int:
    from . import milvus
    from .gallery import GalleryIndex

    g = GalleryIndex.load(args.index)
    m = milvus.from_index(g, args.uri, args.collection or milvus.DEFAULT_COLLECTION, index_type=args.milvus_index,
                          overwrite=args.force)
    print(f"stored {len(m):,} vectors of {args.index} in Milvus collection {m.collection} at {args.uri}")
    return 0


def _info(args) -> int:
    from .store import open_gallery

    print(open_gallery(args.index, backend=args.backend, uri=args.uri, collection=args.collection).info())
    return 0
