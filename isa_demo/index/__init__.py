"""Gallery indexes: any image folder encoded with the VL model into a persistent faiss index."""
from .default import default_gallery
from .encode import IMAGE_EXTENSIONS, GalleryError, scan_folder
from .gallery import GalleryIdentityError, GalleryIndex, describe_identity, same_model
from .store import BACKENDS, Gallery, open_gallery

__all__ = ["BACKENDS", "Gallery", "GalleryIndex", "GalleryError", "open_gallery", "GalleryIdentityError",
           "IMAGE_EXTENSIONS", "default_gallery", "describe_identity", "same_model", "scan_folder"]
