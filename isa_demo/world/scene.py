"""Scene graphs of the built-in world: vocabulary, sampling, captions and modifications.

A scene is ``{"background": str, "objects": [{"shape", "colour", "size", "cell"}, ...]}``
with 1-3 objects in distinct cells of a 3x3 grid and distinct shapes (so "the star" always
names one object). Objects are kept sorted by cell, which makes :func:`scene_key` canonical.
"""
from __future__ import annotations

import copy
import json

import numpy as np

SHAPES = ["circle", "square", "triangle", "star", "heart", "hexagon", "diamond", "cross"]
COLOURS = {
    "red": (215, 40, 40),
    "orange": (245, 140, 25),
    "yellow": (240, 215, 35),
    "green": (40, 165, 60),
    "cyan": (40, 200, 215),
    "blue": (40, 70, 220),
    "purple": (140, 50, 190),
    "pink": (245, 135, 195),
}
BACKGROUNDS = {"grey": (128, 128, 128), "black": (22, 22, 22), "white": (240, 240, 240), "beige": (214, 198, 158)}
SIZES = ["small", "large"]
CELL_NAMES = ["top left", "top", "top right", "left", "centre", "right", "bottom left", "bottom", "bottom right"]
CELL_PHRASES = [
    "at the top left", "at the top", "at the top right",
    "on the left", "in the centre", "on the right",
    "at the bottom left", "at the bottom", "at the bottom right",
]
MOD_TYPES = ["colour", "shape", "size", "position", "add", "remove", "background"]
ALL_MOD_TYPES = MOD_TYPES + ["pair"]
MAX_OBJECTS = 3


def scene_key(scene: dict) -> str:
    """Canonical string of a scene graph: equal keys <=> same scene."""
    objs = sorted(scene["objects"], key=lambda o: o["cell"])
    return json.dumps({"background": scene["background"], "objects": objs}, sort_keys=True, separators=(",", ":"))


def _choice(rng: np.random.Generator, seq):
    return seq[int(rng.integers(len(seq)))]


def _normalise(scene: dict) -> dict:
    scene["objects"].sort(key=lambda o: o["cell"])
    return scene


def random_object(rng, used_cells=(), used_shapes=()) -> dict:
    cells = [c for c in range(9) if c not in used_cells]
    shapes = [s for s in SHAPES if s not in used_shapes]
    return {
        "shape": _choice(rng, shapes),
        "colour": _choice(rng, list(COLOURS)),
        "size": _choice(rng, SIZES),
        "cell": int(_choice(rng, cells)),
    }


def random_scene(rng: np.random.Generator, n_objects: int | None = None) -> dict:
    n = int(rng.integers(1, MAX_OBJECTS + 1)) if n_objects is None else n_objects
    objs: list[dict] = []
    for _ in range(n):
        objs.append(random_object(rng, [o["cell"] for o in objs], [o["shape"] for o in objs]))
    return _normalise({"background": _choice(rng, list(BACKGROUNDS)), "objects": objs})


# ----------------------------------------------------------------------------- captions
def describe_object(o: dict, with_location: bool = True) -> str:
    text = f"a {o['size']} {o['colour']} {o['shape']}"
    return f"{text} {CELL_PHRASES[o['cell']]}" if with_location else text


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def caption(scene: dict, rng: np.random.Generator | None = None) -> str:
    """The canonical caption, or (with ``rng``) one of several paraphrases for training."""
    objs = list(scene["objects"])
    bg = scene["background"]
    if rng is None:
        return f"{_join([describe_object(o) for o in objs])} on a {bg} background"
    order = rng.permutation(len(objs))
    body = _join([describe_object(objs[i]) for i in order])
    template = int(rng.integers(4))
    if template == 0:
        return f"{body} on a {bg} background"
    if template == 1:
        return f"a {bg} background with {body}"
    if template == 2:
        return f"a photo of {body} on a {bg} background"
    return f"{body}, the background is {bg}"


# ----------------------------------------------------------------------------- modifications
def _ref(o: dict, rng) -> str:
    """A referring expression for an object; shapes are unique within a scene."""
    return f"the {o['shape']}" if rng.random() < 0.5 else f"the {o['colour']} {o['shape']}"


def _mod_colour(scene, rng, exclude):
    objs = [o for o in scene["objects"] if o["cell"] not in exclude]
    if not objs:
        return None
    o = _choice(rng, objs)
    new = _choice(rng, [c for c in COLOURS if c != o["colour"]])
    ref = _ref(o, rng)
    text = _choice(rng, [
        f"make {ref} {new}", f"turn {ref} {new}", f"change the colour of {ref} to {new}",
        f"paint {ref} {new}", f"{ref} should be {new}",
    ])
    out = copy.deepcopy(scene)
    next(x for x in out["objects"] if x["cell"] == o["cell"])["colour"] = new
    return out, text, {o["cell"]}


def _mod_shape(scene, rng, exclude):
    objs = [o for o in scene["objects"] if o["cell"] not in exclude]
    if not objs:
        return None
    o = _choice(rng, objs)
    new = _choice(rng, [s for s in SHAPES if s not in {x["shape"] for x in scene["objects"]}])
    ref = _ref(o, rng)
    text = _choice(rng, [
        f"replace {ref} with a {o['colour']} {new}", f"turn {ref} into a {new}",
        f"change {ref} to a {new}", f"make {ref} a {new}", f"swap {ref} for a {o['size']} {o['colour']} {new}",
    ])
    out = copy.deepcopy(scene)
    next(x for x in out["objects"] if x["cell"] == o["cell"])["shape"] = new
    return out, text, {o["cell"]}


def _mod_size(scene, rng, exclude):
    objs = [o for o in scene["objects"] if o["cell"] not in exclude]
    if not objs:
        return None
    o = _choice(rng, objs)
    ref = _ref(o, rng)
    if o["size"] == "small":
        new, options = "large", [f"make {ref} bigger", f"enlarge {ref}", f"make {ref} large", f"{ref} should be larger"]
    else:
        new, options = "small", [f"make {ref} smaller", f"shrink {ref}", f"make {ref} small",
                                 f"{ref} should be smaller"]
    out = copy.deepcopy(scene)
    next(x for x in out["objects"] if x["cell"] == o["cell"])["size"] = new
    return out, _choice(rng, options), {o["cell"]}


_STEPS = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}


def _mod_position(scene, rng, exclude):
    objs = [o for o in scene["objects"] if o["cell"] not in exclude]
    free = [c for c in range(9) if c not in {o["cell"] for o in scene["objects"]}]
    if not objs or not free:
        return None
    o = _choice(rng, objs)
    ref = _ref(o, rng)
    r, c = divmod(o["cell"], 3)
    relative = [(d, (r + dr) * 3 + c + dc) for d, (dr, dc) in _STEPS.items()
                if 0 <= r + dr < 3 and 0 <= c + dc < 3 and (r + dr) * 3 + c + dc in free]
    if relative and rng.random() < 0.3:
        direction, cell = _choice(rng, relative)
        text = f"move {ref} one step {direction}"
    else:
        cell = int(_choice(rng, free))
        text = _choice(rng, [f"move {ref} to the {CELL_NAMES[cell]}", f"put {ref} {CELL_PHRASES[cell]}",
                             f"place {ref} {CELL_PHRASES[cell]} instead"])
    out = copy.deepcopy(scene)
    next(x for x in out["objects"] if x["cell"] == o["cell"])["cell"] = int(cell)
    return _normalise(out), text, {o["cell"], int(cell)}


def _mod_add(scene, rng, exclude):
    if len(scene["objects"]) >= MAX_OBJECTS:
        return None
    used = {o["cell"] for o in scene["objects"]} | set(exclude)
    if len(used) >= 9:
        return None
    new = random_object(rng, used, [o["shape"] for o in scene["objects"]])
    desc = f"{new['size']} {new['colour']} {new['shape']} {CELL_PHRASES[new['cell']]}"
    text = _choice(rng, [f"add a {desc}", f"put a {desc}", f"there should also be a {desc}", f"include a {desc}"])
    out = copy.deepcopy(scene)
    out["objects"].append(new)
    return _normalise(out), text, {new["cell"]}


def _mod_remove(scene, rng, exclude):
    objs = [o for o in scene["objects"] if o["cell"] not in exclude]
    if len(scene["objects"]) < 2 or not objs:
        return None
    o = _choice(rng, objs)
    ref = _ref(o, rng)
    text = _choice(rng, [f"remove {ref}", f"take away {ref}", f"delete {ref}", f"get rid of {ref}", f"without {ref}"])
    out = copy.deepcopy(scene)
    out["objects"] = [x for x in out["objects"] if x["cell"] != o["cell"]]
    return out, text, {o["cell"]}


def _mod_background(scene, rng, exclude):
    if "background" in exclude:
        return None
    new = _choice(rng, [b for b in BACKGROUNDS if b != scene["background"]])
    text = _choice(rng, [f"make the background {new}", f"change the background to {new}",
                         f"use a {new} background", f"put it on a {new} background"])
    out = copy.deepcopy(scene)
    out["background"] = new
    return out, text, {"background"}


_MODS = {
    "colour": _mod_colour, "shape": _mod_shape, "size": _mod_size, "position": _mod_position,
    "add": _mod_add, "remove": _mod_remove, "background": _mod_background,
}


def modify(scene: dict, mod_type: str, rng: np.random.Generator):
    """Apply a modification; return ``(target_scene, modifier_text, type_label)`` or None.

    ``pair`` applies two single modifications that touch different objects (or one object and
    the background) and joins their phrases with "and".
    """
    if mod_type != "pair":
        res = _MODS[mod_type](scene, rng, set())
        return None if res is None else (res[0], res[1], mod_type)
    first, second = rng.choice(MOD_TYPES, size=2, replace=True)
    if first == second == "background":
        return None
    res1 = _MODS[first](scene, rng, set())
    if res1 is None:
        return None
    res2 = _MODS[second](res1[0], rng, res1[2])
    if res2 is None:
        return None
    return res2[0], f"{res1[1]} and {res2[1]}", f"pair:{first}+{second}"


def near_variant(scene: dict, rng: np.random.Generator, avoid: set[str]) -> dict | None:
    """A scene one random single modification away from ``scene`` whose key is not in ``avoid``."""
    for _ in range(50):
        res = _MODS[_choice(rng, MOD_TYPES)](scene, rng, set())
        if res is not None and scene_key(res[0]) not in avoid:
            return res[0]
    return None
