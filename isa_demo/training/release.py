"""``python -m isa_demo train release``: retrain the whole shipped release for a built-in VL model,
in order, skipping what is up to date. Resumable at two levels: a finished step is skipped, an
interrupted one resumes from its trainer's state file.

The release (:func:`release`, in the order a demo needs it): the VL model itself, the lightest ISA
encoder (the app's default), the symmetric ISA variant, the masked-pair model and the single-token
baseline, the masked-pair tau ablations, then the other ISA backbones, and last the default
gallery index of the world's test images. A step is up to date when its checkpoint exists, was
trained for the current weights of the VL model (same identity) and records the step's recipe.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from ..common import read_metadata
from ..settings import BUILTIN_VL, LIGHTEST_BACKBONE, SYMMETRIC


@dataclass(frozen=True)
class Step:
    kind: str  # "vl" | "isa" | "masked-ti" | "index"
    name: str  # backbone, masked-ti checkpoint name, or the VL model's name
    kwargs: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.kind if self.kind in ("vl", "index") else f"{self.kind} {self.name}"


# the VL step's recipe where it is not ``train vl``'s defaults (the v3 recipe). The first model
# predates recorded recipes: its VL step is checked by the file's presence only.
VL_RECIPES = {
    "isa-world-vit": {},
    "isa-world-vit-v2": {"scene_loss": 0.0, "mix": "", "pos_scale": 1.0},
}


def release(vl_name: str) -> list[Step]:
    """The steps of one built-in VL model's release, in order. The lightest encoder is trained
    8,000 steps (measured better than 4,000 against both the first model and v3: docs/experiments.md);
    every other step uses its trainer's defaults."""
    lightest = {"steps": 8000}
    vl = VL_RECIPES.get(vl_name)
    if vl is None:  # train vl's defaults, spelled out so that the step checks the recorded recipe
        import inspect

        from .vl import train_vl

        defaults = inspect.signature(train_vl).parameters
        vl = {k: defaults[k].default for k in ("epochs", "variants", "text_negatives", "captions", "mix",
                                                "scene_loss", "pos_scale")}
    return [
        Step("vl", vl_name, vl),
        Step("isa", LIGHTEST_BACKBONE, lightest),
        Step("isa", SYMMETRIC),
        Step("masked-ti", "masked-ti"),
        Step("masked-ti", "single-token", {"w_qt": 0.0}),
        Step("masked-ti", "masked-ti-tau0.2", {"tau": 0.2}),
        Step("masked-ti", "masked-ti-tau0.4", {"tau": 0.4}),
        Step("isa", "tf_efficientnet_lite0"),
        Step("isa", "mobilenetv3_large_100"),
        Step("isa", "efficientnet_b0"),
        Step("isa", "resnet18"),
        Step("index", "world-test"),
    ]


def _recorded(meta: dict, key: str):
    value = meta.get(key)
    try:
        return json.loads(value)
    except (TypeError, ValueError):
        return value


def _checkpoint(step: Step, vl_name: str):
    from ..models import shipped_checkpoint
    from ..models.masked_ti import shipped_checkpoint as masked_ti_checkpoint
    from ..vl import builtin_checkpoint

    if step.kind == "vl":
        return builtin_checkpoint(vl_name)
    return (shipped_checkpoint if step.kind == "isa" else masked_ti_checkpoint)(step.name, vl_name)


def up_to_date(step: Step, vl_name: str, vl=None) -> bool:
    """Whether ``step``'s shipped output exists for the current VL weights with the step's recipe."""
    from ..vl import same_model

    path = _checkpoint(step, vl_name) if step.kind != "index" else None
    if step.kind == "index":
        from ..index import GalleryIndex
        from ..index.default import index_dir_for

        try:
            where = index_dir_for(vl_name, "builtin")
            return vl is not None and same_model(GalleryIndex.load(where).identity, vl.identity())
        except Exception:
            return False
    if not path.exists():
        return False
    meta = read_metadata(path)
    if step.kind != "vl" and (vl is None or not same_model(json.loads(meta.get("vl", "{}")), vl.identity())):
        return False
    recipe = _recorded(meta, "recipe")
    recipe = recipe if isinstance(recipe, dict) else {}
    return all(recipe.get(k, _recorded(meta, k)) == v for k, v in step.kwargs.items())


def run_step(step: Step, world: str, vl_name: str, device: str | None = None) -> None:
    from .isa import train_isa
    from .masked_ti import train_masked_ti
    from .vl import train_vl

    if step.kind == "vl":
        train_vl(world, name=vl_name, device=device, **step.kwargs)
    elif step.kind == "isa":
        train_isa(world, step.name, vl_name=vl_name, device=device, **step.kwargs)
    elif step.kind == "masked-ti":
        train_masked_ti(world, name=step.name, vl_name=vl_name, device=device, **step.kwargs)
    else:
        from ..index import default_gallery
        from ..index.default import index_dir_for
        from ..vl import load_vl

        default_gallery(load_vl(vl_name, device=device), index_dir=index_dir_for(vl_name, "builtin"))


def train_release(world: str, vl_name: str = BUILTIN_VL, only: list[str] | None = None, device: str | None = None,
                  dry_run: bool = False) -> list[dict]:
    """Run every step of :func:`release` that is not up to date; returns what each step did."""
    from ..vl import load_vl

    done = []
    vl = None
    for step in release(vl_name):
        if only and step.kind not in only and step.label not in only:
            continue
        if step.kind != "vl" and vl is None:
            vl = load_vl(vl_name, device=device)  # after the VL step: the identity to check against
        if up_to_date(step, vl_name, vl):
            done.append({"step": step.label, "status": "up to date"})
        elif dry_run:
            done.append({"step": step.label, "status": "to do"})
        else:
            t0 = time.time()
            run_step(step, world, vl_name, device)
            done.append({"step": step.label, "status": "trained", "seconds": round(time.time() - t0, 1)})
        print(json.dumps(done[-1]), flush=True)
    return done
