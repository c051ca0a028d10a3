"""`python -m isa_demo train vl` and `python -m isa_demo bench vl`."""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("vl", help="train the built-in VL model from scratch on the world's captions",
                       description="Train the registered open_clip config on the world's train image-caption "
                                   "pairs (symmetric CLIP loss). Resumable: rerun the same command.")
    p.add_argument("--world", default="data/world")
    p.add_argument("--name", default="isa-world-vit", help="registered open_clip config")
    p.add_argument("--out", default=None, help="safetensors output (default: assets/vl/NAME.safetensors)")
    p.add_argument("--epochs", type=float, default=2.5,
                   help="passes over the train images (default 2.5, the shipped model's)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--state", default=None, help="resumable state file (default runs/vl/NAME.state.pt)")
    p.add_argument("--max-images", type=int, default=None, help="use only the first N train images")
    p.add_argument("--device", default=None)
    p.set_defaults(func=_train)


def _train(args) -> int:
    from .train import train_vl

    train_vl(args.world, out=args.out, name=args.name, epochs=args.epochs, batch_size=args.batch_size,
             lr=args.lr, seed=args.seed, state_path=args.state, device=args.device, max_images=args.max_images)
    return 0


def register_bench(sub) -> None:
    p = sub.add_parser("vl", help="caption<->image retrieval of the VL model on the world (scene level)",
                       description="Scene-level caption->image and image->caption Recall@1/5/10 on a world split; "
                                   "writes assets/results/vl_retrieval.csv.")
    p.add_argument("--world", default="data/world")
    p.add_argument("--split", default="test")
    p.add_argument("--vl-model", default="isa-world-vit")
    p.add_argument("--vl-pretrained", default="builtin")
    p.add_argument("--out", default="assets/results/vl_retrieval.csv")
    p.add_argument("--device", default=None)
    p.set_defaults(func=_bench)


def _bench(args) -> int:
    from ..common import write_table
    from ..world import World
    from .evaluate import evaluate_vl
    from .model import load_vl

    pretrained = None if args.vl_pretrained == "none" else args.vl_pretrained
    df = evaluate_vl(load_vl(args.vl_model, pretrained, device=args.device), World(args.world), args.split)
    print(df.to_string(index=False, float_format="%.4f"))
    if args.out:
        write_table(df, args.out)
        print(f"wrote {args.out}")
    return 0
