"""The frozen vision-language model layer (any open_clip model) and the built-in model."""
from .model import (BUILTIN_NAME, PLACEHOLDER, VLLoadError, VLModel, builtin_checkpoint, encode_text_trimmed,
                    load_vl)

__all__ = ["BUILTIN_NAME", "PLACEHOLDER", "VLLoadError", "VLModel", "builtin_checkpoint", "encode_text_trimmed",
           "load_vl"]
