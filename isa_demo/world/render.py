"""Render a scene graph with Pillow (2x supersampled, so edges are anti-aliased)."""
from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from .scene import BACKGROUNDS, COLOURS

IMAGE_SIZE = 128
_SS = 2  # supersampling factor
# object radius as a fraction of the cell size
_RADIUS = {"small": 0.27, "large": 0.43}


def _unit_polygon(shape: str) -> list[tuple[float, float]] | None:
    """Vertices of a shape inscribed in the unit circle (None for the circle)."""
    if shape == "circle":
        return None
    if shape == "square":
        return [(-0.72, -0.72), (0.72, -0.72), (0.72, 0.72), (-0.72, 0.72)]
    if shape == "triangle":
        return [(math.cos(a), math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    if shape == "diamond":
        return [(0, -1), (0.62, 0), (0, 1), (-0.62, 0)]
    if shape == "hexagon":
        return [(math.cos(k * math.pi / 3), math.sin(k * math.pi / 3)) for k in range(6)]
    if shape == "star":
        pts = []
        for k in range(10):
            r = 1.0 if k % 2 == 0 else 0.42
            a = -math.pi / 2 + k * math.pi / 5
            pts.append((r * math.cos(a), r * math.sin(a)))
        return pts
    if shape == "cross":
        t = 0.33
        return [(-t, -1), (t, -1), (t, -t), (1, -t), (1, t), (t, t), (t, 1), (-t, 1), (-t, t), (-1, t), (-1, -t),
                (-t, -t)]
    if shape == "heart":
        pts = []
        for k in range(40):
            a = 2 * math.pi * k / 40
            x = 16 * math.sin(a) ** 3
            y = -(13 * math.cos(a) - 5 * math.cos(2 * a) - 2 * math.cos(3 * a) - math.cos(4 * a))
            pts.append((x / 17.0, (y + 2.5) / 17.0))
        return pts
    raise ValueError(f"unknown shape {shape!r}")


def _shade(rgb, rng, amount):
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in rgb)


def render(scene: dict, rng: np.random.Generator, size: int = IMAGE_SIZE) -> Image.Image:
    """Render ``scene``; ``rng`` draws the jitter (position, scale, rotation, shade)."""
    big = size * _SS
    img = Image.new("RGB", (big, big), _shade(BACKGROUNDS[scene["background"]], rng, 8))
    draw = ImageDraw.Draw(img)
    cell = big / 3.0
    for o in scene["objects"]:
        row, col = divmod(o["cell"], 3)
        cx = (col + 0.5) * cell + rng.uniform(-0.07, 0.07) * cell
        cy = (row + 0.5) * cell + rng.uniform(-0.07, 0.07) * cell
        r = _RADIUS[o["size"]] * cell * rng.uniform(0.92, 1.08)
        colour = _shade(COLOURS[o["colour"]], rng, 12)
        poly = _unit_polygon(o["shape"])
        if poly is None:
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
            continue
        theta = math.radians(rng.uniform(-10, 10))
        c, s = math.cos(theta), math.sin(theta)
        draw.polygon([(cx + r * (x * c - y * s), cy + r * (x * s + y * c)) for x, y in poly], fill=colour)
    return img.resize((size, size), Image.Resampling.BOX)
