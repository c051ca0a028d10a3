"""Where things live and the project-wide defaults: the one place for both.

Every path below is absolute and can be moved by an environment variable, so a deployment (a
Space, a CI runner) relocates data without touching code:

===========================  ==========================  ==========================================
setting                      environment variable        default
===========================  ==========================  ==========================================
``WORLD_DIR``                ``ISA_DEMO_WORLD``          ``<repo>/data/world``
``RESULTS_DIR``              ``ISA_DEMO_RESULTS``        ``<repo>/assets/results``
``RUNS_DIR``                 ``ISA_DEMO_RUNS``           ``<repo>/runs`` (resumable training state)
``GALLERIES_DIR``            ``ISA_DEMO_GALLERIES``      ``<repo>/galleries``
===========================  ==========================  ==========================================

Shipped artifacts (``ASSETS_DIR`` and below) are part of the release and are not relocated.
The command line's defaults are these same objects (``--world`` defaults to ``WORLD_DIR``), so
``data/world`` means the same folder on the command line and in the app.
"""
from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ASSETS_DIR = REPO / "assets"
VL_ASSETS_DIR = ASSETS_DIR / "vl"
CHECKPOINTS_DIR = ASSETS_DIR / "checkpoints"  # CHECKPOINTS_DIR / VL_NAME / {isa,masked-ti} / NAME.safetensors


def _dir(env: str, default: Path) -> Path:
    value = os.environ.get(env, "").strip()
    return Path(value).expanduser().resolve() if value else default


WORLD_DIR = _dir("ISA_DEMO_WORLD", REPO / "data" / "world")
RESULTS_DIR = _dir("ISA_DEMO_RESULTS", ASSETS_DIR / "results")
RUNS_DIR = _dir("ISA_DEMO_RUNS", REPO / "runs")
GALLERIES_DIR = _dir("ISA_DEMO_GALLERIES", REPO / "galleries")
DEFAULT_INDEX_DIR = GALLERIES_DIR / "world-test"

# the built-in VL model and the lightest (default) query encoder
BUILTIN_VL = "isa-world-vit"
BUILTIN_PRETRAINED = "builtin"
SYMMETRIC = "symmetric"  # the ISA variant whose query encoder is the VL image tower itself
LIGHTEST_BACKBONE = "mobilenetv3_small_100"
WORLD_SPLIT = "test"  # the split the app's gallery, examples and inspector use



def checkpoint_dir(kind: str, vl_name: str | None = None) -> Path:
    """Where the shipped query models of one kind (``isa``, ``masked-ti``) trained for one built-in
    VL model live: each VL model has its own release, so a new VL model never overwrites the
    checkpoints of the previous one."""
    return CHECKPOINTS_DIR / (vl_name or BUILTIN_VL) / kind


# words that mean "no pretrained weights" (random init) wherever a pretrained tag is read
NO_PRETRAINED = ("none", "random", "")


def parse_pretrained(value: str | None) -> str | None:
    """A pretrained tag as given by a user -> the tag, or None for random weights.

    The one place that reads "none": ``None``, ``"none"``, ``"random"`` and ``""`` (any case,
    surrounding spaces ignored) all mean random weights."""
    if value is None:
        return None
    text = str(value).strip()
    return None if text.lower() in NO_PRETRAINED else text
