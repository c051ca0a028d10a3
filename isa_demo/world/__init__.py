"""The built-in world: a deterministic CSS/CLEVR-like scene generator with CIR queries."""
from .build import SIZES, World, WorldError, build_world, plan_split
from .render import IMAGE_SIZE, render
from .scene import ALL_MOD_TYPES, MOD_TYPES, caption, modify, random_scene, scene_key

__all__ = ["SIZES", "World", "WorldError", "build_world", "plan_split", "IMAGE_SIZE", "render",
           "ALL_MOD_TYPES", "MOD_TYPES", "caption", "modify", "random_scene", "scene_key"]
