"""`python -m isa_demo train masked-ti ...` and `python -m isa_demo masking-sheet ...`."""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("masked-ti", help="train the masked image-text pair textual inversion (or single-token)",
                       description="Train Phi (VL image feature -> one pseudo word) on the world's train "
                                   "image-caption pairs with CAM-masked images (METHOD.md 4). --w-qt 0 trains the "
                                   "single-token baseline. The frozen features, CAMs and masked features are "
                                   "cached under WORLD/cache/masked_ti/. Resumable: rerun the same command.")
    p.add_argument("--world", default="data/world")
    p.add_argument("--tau", type=float, default=0.3, help="CAM threshold: pixels above it are masked")
    p.add_argument("--w-qt", type=float, default=1.0, help="query-target loss weight (0: single-token)")
    p.add_argument("--w-orig", type=float, default=1.0, help="original loss weight")
    p.add_argument("--query-text", choices=["scene", "phrase", "noun"], default="scene",
                   help="text half of the training query: scene graph 'add a large red star at the top left', "
                        "caption noun phrase 'add a large red star', or 'add a star'")
    p.add_argument("--temperature", type=float, default=0.05, help="InfoNCE temperature")
    p.add_argument("--images", type=int, default=10000, help="number of world train images used")
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--fill", choices=["median", "mean", "grey"], default="median",
                   help="colour of the masked region: the image's median / mean colour, or grey")
    p.add_argument("--cam-mode", choices=["layercam", "gradcam", "gradxact"], default="layercam",
                   help="layercam: grad x activation of every ViT block, averaged; gradcam: classic Grad-CAM on "
                        "the last block; gradxact: grad x activation of the last block")
    p.add_argument("--cam-baseline", default="a photo",
                   help="the CAM target is cos(image, 'a photo of a NOUN') minus cos(image, this); '' for none")
    p.add_argument("--cam-text", choices=["phrase", "noun"], default="phrase",
                   help="name the noun phrase ('a photo of a large red star') or the noun alone in the CAM text")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default=None, help="checkpoint name (default from the settings: masked-ti, "
                                               "masked-ti-tau0.2, single-token, ...)")
    p.add_argument("--out", default=None, help="output (default: assets/checkpoints/masked-ti/NAME.safetensors)")
    p.add_argument("--state", default=None, help="resumable state file (default: runs/masked-ti/NAME.state.pt)")
    p.add_argument("--vl-model", default=None, help="open_clip model name (default: the built-in model)")
    p.add_argument("--vl-pretrained", default="builtin")
    p.add_argument("--device", default=None)
    p.set_defaults(func=_train)


def _train(args) -> int:
    from .masked_ti import train_masked_ti

    train_masked_ti(args.world, tau=args.tau, w_qt=args.w_qt, w_orig=args.w_orig, query_text=args.query_text,
                    temperature=args.temperature, images=args.images, steps=args.steps, batch_size=args.batch_size,
                    lr=args.lr, dropout=args.dropout, fill=args.fill, cam_mode=args.cam_mode,
                    cam_baseline=args.cam_baseline or None, cam_text=args.cam_text, seed=args.seed,
                    name=args.name, out=args.out, state_path=args.state, vl=_load_vl(args))
    return 0


def register_command(top) -> None:
    p = top.add_parser("masking-sheet", help="PNG sheet of the masked-pair method's noun / CAM / masking",
                       description="Rows of (image, CAM heatmap of the chosen noun, masked image, masked caption "
                                   "and query text) for world images and, optionally, real photos with a "
                                   "COCO-style captions file. CAMs mean something only with a trained VL model.")
    p.add_argument("--world", default="data/world")
    p.add_argument("--split", default="train")
    p.add_argument("--n", type=int, default=8, help="world rows (0: none)")
    p.add_argument("--tau", type=float, default=0.3)
    p.add_argument("--fill", choices=["median", "mean", "grey"], default="median")
    p.add_argument("--cam-mode", choices=["layercam", "gradcam", "gradxact"], default="layercam")
    p.add_argument("--cam-baseline", default="a photo", help="'' for none")
    p.add_argument("--cam-text", choices=["phrase", "noun"], default="phrase")
    p.add_argument("--coco-captions", default=None, help="COCO captions JSON (e.g. .../captions_val2017.json)")
    p.add_argument("--coco-images", default=None, help="folder of the images the captions file names")
    p.add_argument("--n-coco", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/masked-ti/masking-sheet.png")
    p.add_argument("--measure", type=int, default=0, metavar="N",
                   help="also print how well the CAMs find the named object on N world images (scene graphs)")
    p.add_argument("--vl-model", default=None, help="open_clip model name (default: the built-in model)")
    p.add_argument("--vl-pretrained", default="builtin", help="'builtin', a checkpoint path, an open_clip tag, "
                                                                 "or 'none' (random weights: plumbing checks only)")
    p.add_argument("--device", default=None)
    p.set_defaults(func=_sheet)


def _load_vl(args):
    from ..vl import load_vl

    pretrained = None if str(args.vl_pretrained).lower() in ("none", "random") else args.vl_pretrained
    if args.vl_model:
        return load_vl(args.vl_model, pretrained, device=args.device)
    return load_vl(pretrained=pretrained, device=args.device)


def _sheet(args) -> int:
    from ..world import World
    from .masked_ti import masking_sheet, sheet_rows_captions, sheet_rows_world

    vl = _load_vl(args)
    rows = []
    if args.n > 0:
        rows += sheet_rows_world(World(args.world), args.split, args.n, vl.image_size, args.seed)
    if args.coco_captions:
        if not args.coco_images:
            print("--coco-captions needs --coco-images (the folder of its images)")
            return 2
        rows += sheet_rows_captions(args.coco_captions, args.coco_images, args.n_coco, vl.image_size, args.seed)
    if not rows:
        print("nothing to draw: give --n > 0 or --coco-captions/--coco-images")
        return 2
    out = masking_sheet(vl, rows, args.tau, args.out, fill=args.fill, cam_mode=args.cam_mode,
                        cam_baseline=args.cam_baseline or None, cam_text=args.cam_text)
    print(f"wrote {out} ({len(rows)} rows)")
    if args.measure > 0:
        import json

        from .masked_ti import cam_localization

        print(json.dumps(cam_localization(vl, World(args.world), args.split, args.measure, args.cam_mode,
                                          args.cam_baseline or None, args.tau, args.seed, args.cam_text)))
    return 0
