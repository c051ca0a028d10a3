"""The frozen vision-language model layer (any open_clip model) and the built-in model.

Only the model: it imports nothing above ``world``/``common`` (its trainer is
:mod:`isa_demo.training.vl`, its retrieval benchmark :mod:`isa_demo.bench.vl`)."""
from .model import (
    BUILTIN_NAME,
    PLACEHOLDER,
    VLLoadError,
    VLModel,
    builtin_checkpoint,
    describe_identity,
    encode_text_trimmed,
    identity_mismatch,
    load_vl,
    same_model,
)

__all__ = ["BUILTIN_NAME", "PLACEHOLDER", "VLLoadError", "VLModel", "builtin_checkpoint", "describe_identity",
           "encode_text_trimmed", "identity_mismatch", "load_vl", "same_model"]
