"""Where a gallery lives, behind one interface: a faiss index directory (the default) or a
Milvus collection. Both give ``len``, ``dim``, ``identity``, ``meta``, ``engine`` (a phrase for
the UI), ``search(queries, k) -> (scores, ids)``, ``path_of(id)``, ``ids_with_content(sha256)``,
``image_roots()`` and ``info()``; the app and the search code use nothing else, so they never
ask which backend they hold.
"""
from __future__ import annotations

import os
from typing import Protocol

import numpy as np

from .encode import GalleryError

BACKENDS = ("faiss", "milvus")


class Gallery(Protocol):
    meta: dict

    def __len__(self) -> int: ...
    @property
    def dim(self) -> int: ...
    @property
    def identity(self) -> dict: ...
    @property
    def engine(self) -> str: ...
    def search(self, queries, k: int = 10) -> tuple[np.ndarray, np.ndarray]: ...
    def path_of(self, i: int) -> os.PathLike: ...
    def ids_with_content(self, sha256: str) -> list[int]: ...
    def image_roots(self) -> list[str]: ...
    def info(self) -> str: ...


def open_gallery(index: str | os.PathLike | None = None, *, backend: str = "faiss", uri: str | None = None,
                 collection: str | None = None, expected_identity: dict | None = None) -> Gallery:
    """A faiss index directory (``index``) or, with ``backend="milvus"``, the collection
    ``collection`` at Milvus ``uri``; with ``expected_identity`` one made by another model is refused."""
    if backend == "faiss":
        if index is None:
            raise GalleryError("the faiss backend needs an index directory (--index PATH)")
        from .gallery import GalleryIndex

        return GalleryIndex.load(index, expected_identity=expected_identity)
    if backend == "milvus":
        if not uri:
            raise GalleryError("the Milvus backend needs --uri (a local file such as ./gallery.db for milvus-lite, "
                               "or http://host:19530 for a server)")
        from .milvus import DEFAULT_COLLECTION, MilvusGallery

        return MilvusGallery.load(uri, collection or DEFAULT_COLLECTION, expected_identity=expected_identity)
    raise GalleryError(f"unknown gallery backend {backend!r}; choose one of {', '.join(BACKENDS)}")
