"""The demo's service layer: pure python, no Gradio. The UI (``ui.py``), the HTTP API and the
tests all go through :class:`DemoService`, which puts together one part per job:

- :class:`~isa_demo.app.catalogue.Catalogue` (``service.catalogue``): which variants are offered
  for the loaded VL model, the UI's choices for them, the methods loaded on first use.
- :class:`~isa_demo.app.compose.Composer` (``service.composer``): input checks, a composed query
  and the gallery search with per-stage timings, its explanation, the comparison of two choices.
- :class:`~isa_demo.app.inspector.Inspector` (``service.inspector``): example queries, the
  failure-case inspector and the accuracy-versus-cost plot, from the results tables.

and keeps here what concerns the server as a whole: which folders it may serve
(:meth:`DemoService.allowed_paths`) and what it reports about itself (:meth:`DemoService.describe`).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

from ..methods import Variant
from ..settings import BUILTIN_PRETRAINED, RESULTS_DIR, WORLD_DIR, WORLD_SPLIT, parse_pretrained
from .catalogue import Catalogue
from .compose import MAX_K, Composer, ComposeResult
from .inspector import Inspector

ASSETS_DIR = Path(__file__).resolve().parent / "assets"


class DemoService:
    """Everything the demo does, without any UI.

    ``gallery``: a :class:`isa_demo.index.Gallery` (a faiss :class:`~isa_demo.index.GalleryIndex` or a
    Milvus collection: ``search``, ``path_of``, ``ids_with_content``, ``image_roots``).
    ``world``: an :class:`isa_demo.world.World` with the test split, for example references and
    the failure-case inspector (None: those parts say they are unavailable). ``variants``:
    ``create_method`` argument dicts or :class:`Variant` values to offer (default: the shipped ones).
    ``max_batch``: most concurrent queries encoded and searched as one batch
    (:class:`isa_demo.app.batching.QueryBatcher`).
    """

    def __init__(self, vl, gallery, world=None, *, results_dir: str | os.PathLike = RESULTS_DIR,
                 variants: Sequence[dict | Variant] | None = None, world_split: str = WORLD_SPLIT,
                 gallery_label: str = "gallery", method_factory: Callable | None = None, max_batch: int = 16):
        self.vl = vl
        self.gallery = gallery
        self.world = world
        self.world_split = world_split
        self.gallery_label = gallery_label
        self.catalogue = Catalogue(vl, variants, method_factory)
        self.composer = Composer(vl, gallery, self.catalogue, max_batch)
        self.inspector = Inspector(world, self.catalogue, results_dir, world_split)

    # the two queries the HTTP API answers
    def compose(self, image, modifier: str | None, method: str, backbone: str | None = None, k: int = 10,
                explain: bool = True, exclude_reference: bool = True) -> ComposeResult:
        """One composed query: :meth:`Composer.compose <isa_demo.app.compose.Composer.compose>`."""
        return self.composer.compose(image, modifier, method, backbone, k, explain, exclude_reference)

    def compare(self, image, modifier, a: tuple[str, str | None], b: tuple[str, str | None], k: int = 10
                ) -> tuple[ComposeResult, ComposeResult, str]:
        """One query through two choices: :meth:`Composer.compare <isa_demo.app.compose.Composer.compare>`."""
        return self.composer.compare(image, modifier, a, b, k)

    def cross_ranks(self, a: ComposeResult, b: ComposeResult) -> dict:
        """Where each result of one ranks under the other: :meth:`Composer.cross_ranks
        <isa_demo.app.compose.Composer.cross_ranks>`."""
        return self.composer.cross_ranks(a, b)

    # ------------------------------------------------------------------ the server
    def allowed_paths(self) -> list[str]:
        """Folders the web server may serve: the gallery's image folders, the world's test images
        (examples, inspector) and the app's own assets. Nothing else."""
        roots: list[str] = list(self.gallery.image_roots())
        if self.world is not None:
            roots.append(str(self.world.root / "images" / self.world_split))
        if ASSETS_DIR.exists():
            roots.append(str(ASSETS_DIR))
        out = []
        for r in roots:
            r = os.path.abspath(r)
            if r not in out and os.path.isdir(r):
                out.append(r)
        return out

    def describe(self) -> dict:
        """What the ``/variants`` endpoint answers: the VL model, the gallery, the choices, and the
        variants this VL model cannot serve (``{"isa resnet18": why}``)."""
        c = self.catalogue
        return {"vl": self.vl.identity(), "gallery": str(getattr(self.gallery, "path", "")),
                "gallery_engine": self.gallery.engine,
                "gallery_size": len(self.gallery), "methods": c.method_choices(), "backbones": c.all_backbones(),
                "unavailable": c.describe_unavailable(), "max_k": MAX_K}


# ---------------------------------------------------------------------------------------- loading
def load_service(model: str | None = None, pretrained: str | None = BUILTIN_PRETRAINED, index: str | None = None,
                 world_dir: str | os.PathLike | None = WORLD_DIR, results_dir: str | os.PathLike = RESULTS_DIR,
                 device: str | None = None, progress: Callable | None = None, max_batch: int = 16,
                 backend: str = "faiss", uri: str | None = None, collection: str | None = None) -> DemoService:
    """Load the VL model and the gallery: the built-in world's test split, a faiss ``index``
    directory, or (``backend="milvus"``) a Milvus collection at ``uri``."""
    from ..vl import BUILTIN_NAME, load_vl

    model = model or BUILTIN_NAME
    pretrained = parse_pretrained(pretrained)
    vl = load_vl(model, pretrained, device=device)
    world = None
    if index or backend != "faiss":
        from ..index import open_gallery

        gallery = open_gallery(index, backend=backend, uri=uri, collection=collection,
                               expected_identity=vl.identity())
        label = str(index) if backend == "faiss" else f"Milvus collection {gallery.collection} at {uri}"
    else:
        from ..index import default_gallery

        kw = {}
        if not (model == BUILTIN_NAME and pretrained == BUILTIN_PRETRAINED):
            # another VL model gets its own index of the world's test images, never the shipped one
            # (random weights differ on every start: a throw-away index)
            import tempfile

            if pretrained is None:
                import atexit
                import shutil

                kw["index_dir"] = Path(tempfile.mkdtemp(prefix="isa-demo-random-gallery-"))
                atexit.register(shutil.rmtree, kw["index_dir"], ignore_errors=True)
            else:
                from ..index.default import index_dir_for

                kw["index_dir"] = index_dir_for(model, pretrained)
        gallery = default_gallery(vl, progress=progress, **kw)
        label = "the built-in world's test images"
    if world_dir is not None:
        try:
            from ..world import World

            w = World(world_dir)
            if WORLD_SPLIT in w.meta.get("splits_done", []):
                world = w
        except Exception:
            world = None
    return DemoService(vl, gallery, world, results_dir=results_dir, gallery_label=label, max_batch=max_batch)
