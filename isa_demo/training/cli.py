"""`python -m isa_demo train vl|isa|masked-ti`: every hyperparameter flag is generated from the
trainer's signature (:func:`isa_demo.options.add_function_args`), so each default is written once."""
from __future__ import annotations

import os

from ..options import add_device_arg, add_function_args, add_vl_args, add_world_arg, function_kwargs

VL_HELP = {
    "name": "registered open_clip config to train",
    "epochs": "passes over the train images (the shipped model's recipe)",
    "batch_size": "images per step", "lr": "peak learning rate (AdamW, cosine)", "weight_decay": "AdamW weight decay",
    "seed": "random seed", "max_images": "use only the first N train images",
    "variants": "fraction of each batch that is a near variant of another member, rendered on the fly",
    "text_negatives": "add NegCLIP-style hard-negative captions (attributes swapped or changed)",
    "captions": "caption grammars: diverse (relative clauses, orders, counts, absence) or the world's own",
    "mix": "how often each kind of near variant and hard-negative caption is drawn: TYPE:WEIGHT,... over colour, "
           "shape, size, position, add, remove, background (unnamed: 1); weigh up what the model confuses",
    "scene_loss": "weight of the scene-graph head on the image embedding (shape/colour/size per cell, background); "
                  "0: the CLIP loss alone",
    "init": "start from this checkpoint's weights instead of random ones (fine-tuning)",
    "pos_scale": "multiply the image tower's initial positional embedding by this (a louder position signal "
                 "from the start; ignored with --init)",
    "precision": "autocast precision: auto (bf16 where the hardware has it), bf16, fp16 (CUDA), fp32",
    "save_every": "steps between two saves of the resumable state (a killed run resumes from the last one)",
}
ISA_HELP = {
    "num_tokens": "pseudo-sentence length L",
    "lar": "local alignment option (none: GCD alone, which measured better; see docs/experiments.md)",
    "lar_weight": "weight of the LAR loss", "tau": "InfoNCE temperature", "steps": "training steps",
    "batch_size": "images per step", "lr": "peak learning rate (AdamW, cosine)",
    "images": "number of unlabeled train images used (with --data: the first N files of a folder, table or COCO "
              "file)",
    "image_size": "light backbone input size (the world's images are 128 px, the VL tower sees 96 px)",
    "seed": "random seed", "precision": "autocast precision: auto (bf16 where the hardware has it), bf16, fp16, fp32",
    "save_every": VL_HELP["save_every"],
    "hard_negatives": "each image's k nearest train images (by the frozen VL features) join the batch's negatives: "
                      "the pseudo sentence must tell a scene from its look-alikes (0: the batch alone)",
    "word_norm": "free: the network sets each pseudo word's norm; vocab: every pseudo word has the mean norm of the "
                 "words the VL model learned, so the text tower reads it at the scale of a real word",
    "diversity": "weight of a term that keeps a sentence's pseudo words apart (their mean squared cosine; 0: off)",
}
MASKED_TI_HELP = {
    "tau": "CAM threshold: pixels above it are masked", "w_qt": "query-target loss weight (0: single-token)",
    "w_orig": "original loss weight",
    "query_text": "text half of the training query: scene graph 'add a large red star at the top left', caption "
                  "noun phrase 'add a large red star', or 'add a star'",
    "temperature": "InfoNCE temperature",
    "images": "number of world train images used (with --data: the first N files of a table or COCO file)",
    "steps": "training steps",
    "batch_size": "pairs per step", "lr": "peak learning rate", "weight_decay": "AdamW weight decay",
    "dropout": "dropout of Phi",
    "fill": "colour of the masked region: the image's median / mean colour, or grey",
    "cam_mode": "layercam: grad x activation of every ViT block, averaged; gradcam: classic Grad-CAM on the last "
                "block; gradxact: grad x activation of the last block",
    "cam_baseline": "the CAM target is cos(image, 'a photo of a NOUN') minus cos(image, this); '' for none",
    "cam_text": "name the noun phrase ('a photo of a large red star') or the noun alone in the CAM text",
    "seed": "random seed",
    "name": "checkpoint name (default from the settings: masked-ti, masked-ti-tau0.2, single-token, ...)",
    "precision": ISA_HELP["precision"], "save_every": VL_HELP["save_every"],
}


def _data_args(p, captions: bool) -> None:
    what = ("image-caption pairs: a CSV/TSV with filepath and title columns, a COCO captions JSON (with "
            "--coco-images), or WebDataset .tar shards with jpg and txt (a folder of images without captions "
            "trains --w-qt 0 only)") if captions else (
            "unlabeled images: a folder (recursive), a CSV/TSV with a filepath column, a COCO captions JSON (with "
            "--coco-images), or WebDataset .tar shards ('shards/{00000..00099}.tar')")
    g = p.add_argument_group("training data other than the built-in world")
    g.add_argument("--data", default=None, metavar="SOURCE",
                   help=f"train on {what} instead of the world's train images; --images N then takes the first N "
                        f"files. Bad files are skipped and listed beside the checkpoint (OUT.skipped.json)")
    g.add_argument("--coco-images", default=None, metavar="DIR", help="the image folder of a COCO captions JSON")
    g.add_argument("--csv-img-key", default="filepath", help="image path column of a CSV/TSV (default %(default)s)")
    g.add_argument("--csv-caption-key", default="title", help="caption column of a CSV/TSV (default %(default)s)")
    g.add_argument("--csv-separator", default=None,
                   help="column separator of the table (default: tab for .tsv, comma otherwise)")
    g.add_argument("--cache", default=None, metavar="DIR",
                   help="feature cache of the frozen VL model, reused by every run with the same VL model "
                        "(default RUNS_DIR/feature-cache)")
    g.add_argument("--workers", type=int, default=min(8, max((os.cpu_count() or 1) - 1, 0)),
                   help="DataLoader processes decoding images (default %(default)s)")


def _data(args):
    from .data import DataError, DataSpec

    if args.data is None:
        for flag in ("coco_images", "cache"):
            if getattr(args, flag):
                raise DataError(f"--{flag.replace('_', '-')} is for --data")
        return None
    return DataSpec(args.data, args.coco_images, args.csv_img_key, args.csv_caption_key, args.csv_separator,
                    args.cache, args.workers)


def _outputs(p, what: str) -> None:
    p.add_argument("--out", default=None, help=f"checkpoint to write (default: {what})")
    p.add_argument("--state", dest="state_path", default=None,
                   help="resumable state file (default: under runs/; rerun the same command to resume)")


def register(sub) -> None:
    from .cam import CAM_MODES, CAM_TEXTS, FILLS
    from .isa import train_isa
    from .masked_ti import QUERY_TEXTS, train_masked_ti
    from .precision import PRECISIONS
    from .vl import CAPTIONS, train_vl

    p = sub.add_parser("vl", help="train the built-in VL model from scratch on the world's captions",
                       description="Train the registered open_clip config on the world's train image-caption "
                                   "pairs (symmetric CLIP loss). Resumable: rerun the same command.")
    add_world_arg(p)
    add_function_args(p, train_vl, VL_HELP, choices={"captions": CAPTIONS, "precision": PRECISIONS})
    _outputs(p, "assets/vl/NAME.safetensors")
    add_device_arg(p)
    p.set_defaults(func=lambda a: _run(train_vl, a, VL_HELP))

    p = sub.add_parser("isa", help="train an ISA query encoder (GCD + LAR) on unlabeled images",
                       description="Train a light backbone + adaptive token learner against the frozen VL model "
                                   "on unlabeled images only: the world's, or --data (a folder, table, COCO file "
                                   "or WebDataset; its frozen VL features cached on disk and reused). Resumable: "
                                   "rerun the same command. Several GPUs: "
                                   "torchrun --nproc_per_node N -m isa_demo train isa ...")
    p.add_argument("--backbone", required=True, help="any timm model name, or 'symmetric' (frozen VL tower)")
    add_world_arg(p)
    add_function_args(p, train_isa, ISA_HELP, choices={"lar": ["late", "vocab", "none"], "precision": PRECISIONS},
                      short={"num_tokens": "-L"})
    _outputs(p, "assets/checkpoints/VL/isa/BACKBONE.safetensors for a built-in VL model, runs/isa/ otherwise")
    add_vl_args(p)
    _data_args(p, captions=False)
    p.set_defaults(func=lambda a: _run(train_isa, a, ISA_HELP, backbone=a.backbone, vl_name=a.vl_model,
                                       vl_pretrained=a.vl_pretrained, data=_data(a)))

    p = sub.add_parser("masked-ti", help="train the masked image-text pair textual inversion (or single-token)",
                       description="Train Phi (VL image feature -> one pseudo word) on the world's train "
                                   "image-caption pairs with CAM-masked images (METHOD.md 4). --w-qt 0 trains the "
                                   "single-token baseline. The frozen features, CAMs and masked features are "
                                   "cached under WORLD/cache/masked_ti/ (with --data: in the feature cache). "
                                   "--data trains on image-caption pairs instead (a table, COCO file or "
                                   "WebDataset). Resumable: rerun the same command. Several GPUs: torchrun "
                                   "--nproc_per_node N -m isa_demo train masked-ti ...")
    add_world_arg(p)
    add_function_args(p, train_masked_ti, MASKED_TI_HELP,
                      choices={"query_text": QUERY_TEXTS, "fill": FILLS, "cam_mode": CAM_MODES, "cam_text": CAM_TEXTS,
                               "precision": PRECISIONS})
    _outputs(p, "assets/checkpoints/VL/masked-ti/NAME.safetensors for a built-in VL model, runs/masked-ti/ otherwise")
    add_vl_args(p)
    _data_args(p, captions=True)
    p.set_defaults(func=lambda a: _run(train_masked_ti, a, MASKED_TI_HELP, cam_baseline=a.cam_baseline or None,
                                       vl_name=a.vl_model, vl_pretrained=a.vl_pretrained, data=_data(a)))

    _release(sub)


def _release(sub) -> None:
    from ..settings import BUILTIN_VL
    from .release import release

    p = sub.add_parser("release", help="retrain the whole shipped release in order, skipping what is up to date",
                       description="The VL model, every ISA encoder, the masked-pair models and the single-token "
                                   "baseline, then the default gallery index, for one built-in VL model. A step "
                                   "whose checkpoint already matches the VL weights and its recipe is skipped; an "
                                   "interrupted step resumes. Steps: "
                                   + ", ".join(s.label for s in release(BUILTIN_VL)) + ".")
    add_world_arg(p)
    p.add_argument("--vl-model", default=BUILTIN_VL,
                   help="built-in VL model whose release to train (default %(default)s)")
    p.add_argument("--only", nargs="+", default=None, metavar="STEP",
                   help="only these kinds (vl, isa, masked-ti, index) or steps ('isa resnet18')")
    p.add_argument("--dry-run", action="store_true", help="only say which steps are up to date")
    add_device_arg(p)
    p.set_defaults(func=_train_release)


def _train_release(args) -> int:
    from .release import train_release

    train_release(args.world, args.vl_model, args.only, args.device, args.dry_run)
    return 0


def _run(trainer, args, helps: dict, **extra) -> int:
    kwargs = {**function_kwargs(args, trainer, helps), "out": args.out, "state_path": args.state_path,
              "device": args.device, **extra}
    trainer(args.world, **kwargs)
    return 0
