"""Gallery indexes: any image folder encoded with the VL model into a persistent faiss index (or a
Milvus collection).

The names below load on first use (PEP 562), so ``isa_demo.index.ann`` (faiss and numpy only)
can be imported without the VL stack: the scale benchmark measures a build's memory that way.
"""
import importlib

_EXPORTS = {"default_gallery": "default", "IMAGE_EXTENSIONS": "encode", "GalleryError": "encode",
            "scan_folder": "encode", "GalleryIdentityError": "gallery", "GalleryIndex": "gallery",
            "describe_identity": "gallery", "same_model": "gallery", "BACKENDS": "store", "Gallery": "store",
            "open_gallery": "store"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value
