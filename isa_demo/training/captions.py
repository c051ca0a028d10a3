"""Training captions for the VL model: many true descriptions of one scene, and hard negatives.

Only scene descriptions are made here, never an edit: no (reference, target) pair and none of
the world's modifier phrasings ("make ...", "remove ...", "add ...", "without ...") appear, so
nothing of the benchmark's query language leaks into VL training.

:func:`describe` returns a true caption of a scene drawn from several grammars: the world's own
four templates, relative clauses ("a scene that has ..."), other attribute orders ("a red star
that is large"), location first ("at the top left, a large red star"), an object count ("three
shapes: ..."), and true statements of absence about the same image ("... with no circle",
"there is no green shape"). Every caption names every object with all its attributes, so it
still tells the scene from its near variants.

:func:`negative` returns a caption of a *different* scene in the same grammar and word order
(NegCLIP-style hard negative): two objects' colours, shapes or cells swapped, or one attribute of
one object changed. Binding (which colour belongs to which shape where) is what it tests.
"""
from __future__ import annotations

import copy

import numpy as np

from ..world.scene import CELL_PHRASES, COLOURS, SHAPES, SIZES, caption

NUMBERS = ["no", "one", "two", "three"]


def _pick(rng: np.random.Generator, seq):
    return seq[int(rng.integers(len(seq)))]


def _object(o: dict, style: int) -> str:
    size, colour, shape, where = o["size"], o["colour"], o["shape"], CELL_PHRASES[o["cell"]]
    if style == 0:
        return f"a {size} {colour} {shape} {where}"
    if style == 1:
        return f"a {colour} {size} {shape} {where}"
    if style == 2:
        return f"a {colour} {shape} that is {size}, {where}"
    return f"{where}, a {size} {colour} {shape}"


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _absence(scene: dict, rng: np.random.Generator) -> str:
    shapes = [s for s in SHAPES if s not in {o["shape"] for o in scene["objects"]}]
    colours = [c for c in COLOURS if c not in {o["colour"] for o in scene["objects"]}]
    if rng.random() < 0.5:
        shape = _pick(rng, shapes)
        return _pick(rng, [f"with no {shape}", f"and there is no {shape}", f"but no {shape}"])
    colour = _pick(rng, colours)
    return _pick(rng, [f"with no {colour} shape", f"and nothing is {colour}", f"and no shape is {colour}"])


def describe(scene: dict, rng: np.random.Generator, form: dict | None = None) -> str:
    """A true caption of ``scene``; ``form`` (from :func:`draw_form`) fixes the grammar so that a
    negative can be written the same way."""
    form = form or draw_form(scene, rng)
    if form["grammar"] == "world":
        return caption(scene, np.random.default_rng(form["seed"]))
    objs = scene["objects"]
    order = [i for i in form["order"] if i < len(objs)] + [i for i in range(len(objs)) if i not in form["order"]]
    body = _join([_object(objs[i], form["style"]) for i in order])
    bg = scene["background"]
    g = form["grammar"]
    if g == "relative":
        text = f"{form['head']} {body}, on a {bg} background"
    elif g == "count":
        n = len(objs)
        text = f"{NUMBERS[n]} shape{'s' if n > 1 else ''} on a {bg} background: {body}"
    else:
        text = f"{body} on a {bg} background"
    if form["absence"]:
        text = f"{text}, {_absence(scene, np.random.default_rng(form['seed']))}"
    return text


def draw_form(scene: dict, rng: np.random.Generator) -> dict:
    """The grammar choices of one caption (shared by a caption and its negative)."""
    grammar = _pick(rng, ["world", "world", "relative", "count", "plain"])
    return {"grammar": grammar, "seed": int(rng.integers(2**31)), "style": int(rng.integers(4)),
            "order": [int(i) for i in rng.permutation(len(scene["objects"]))],
            "head": _pick(rng, ["a scene that has", "an image that shows", "a picture which contains",
                                "a photo that has"]),
            "absence": grammar != "world" and rng.random() < 0.4}


# the perturbations of :func:`perturb` that each modification type of a training mix weighs
PERTURBATIONS = {"colour": ("colour", "swap_colour"), "shape": ("shape", "swap_shape"), "size": ("size",),
                 "position": ("cell", "swap_cell")}


def perturb(scene: dict, rng: np.random.Generator, weights: dict[str, float] | None = None) -> dict:
    """A scene that differs from ``scene`` in binding or in one attribute of one object; ``weights``
    (modification type -> weight, see :data:`PERTURBATIONS`) makes some kinds more frequent."""
    out = copy.deepcopy(scene)
    objs = out["objects"]
    kinds = [k for t, ks in PERTURBATIONS.items() for k in ks if len(objs) > 1 or not k.startswith("swap")]
    p = np.array([(weights or {}).get(next(t for t, ks in PERTURBATIONS.items() if k in ks), 1.0) for k in kinds])
    for _ in range(20):
        kind = _pick(rng, kinds) if len(set(p)) == 1 else kinds[int(rng.choice(len(kinds), p=p / p.sum()))]
        if kind.startswith("swap"):
            i, j = rng.choice(len(objs), size=2, replace=False)
            key = kind.split("_")[1]
            if objs[i][key] == objs[j][key]:
                continue
            objs[i][key], objs[j][key] = objs[j][key], objs[i][key]
            return out
        o = objs[int(rng.integers(len(objs)))]
        if kind == "colour":
            o["colour"] = _pick(rng, [c for c in COLOURS if c != o["colour"]])
        elif kind == "shape":
            o["shape"] = _pick(rng, [s for s in SHAPES if s not in {x["shape"] for x in objs}])
        elif kind == "size":
            o["size"] = _pick(rng, [s for s in SIZES if s != o["size"]])
        else:
            free = [c for c in range(9) if c not in {x["cell"] for x in objs}]
            o["cell"] = int(_pick(rng, free))
        return out
    return out


def negative(scene: dict, rng: np.random.Generator, form: dict, weights: dict[str, float] | None = None) -> str:
    """A hard-negative caption: a perturbed scene in the same grammar and object order."""
    return describe(perturb(scene, rng, weights), rng, form)
