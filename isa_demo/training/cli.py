"""`python -m isa_demo train isa ...`"""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("isa", help="train an ISA query encoder (GCD + LAR) on unlabeled world images",
                       description="Train a light backbone + adaptive token learner against the frozen VL model "
                                   "on unlabeled images only. Resumable: rerun the same command.")
    p.add_argument("--backbone", required=True, help="any timm model name, or 'symmetric' (frozen VL tower)")
    p.add_argument("--world", default="data/world")
    p.add_argument("--num-tokens", "-L", type=int, default=4, help="pseudo-sentence length L")
    p.add_argument("--lar", choices=["late", "vocab", "none"], default="none",
                   help="local alignment option (default none: GCD alone, which measured better; see README)")
    p.add_argument("--lar-weight", type=float, default=0.5)
    p.add_argument("--tau", type=float, default=0.05, help="InfoNCE temperature")
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--images", type=int, default=50000, help="number of unlabeled train images used")
    p.add_argument("--image-size", type=int, default=96,
                   help="light backbone input size (the world's images are 128 px, the VL tower sees 96 px)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="checkpoint (default: assets/checkpoints/isa/BACKBONE.safetensors)")
    p.add_argument("--state", default=None, help="resumable state file (default: runs/isa/...)")
    p.add_argument("--vl-model", default=None, help="open_clip model name (default: the built-in model)")
    p.add_argument("--vl-pretrained", default="builtin")
    p.add_argument("--device", default=None)
    p.set_defaults(func=_train)


def _train(args) -> int:
    from .isa import train_isa

    train_isa(args.world, args.backbone, out=args.out, num_tokens=args.num_tokens, steps=args.steps,
              batch_size=args.batch_size, lr=args.lr, lar=args.lar, lar_weight=args.lar_weight, tau=args.tau,
              images=args.images, image_size=args.image_size, seed=args.seed, state_path=args.state, device=args.device,
              vl_name=args.vl_model, vl_pretrained=args.vl_pretrained)
    return 0
