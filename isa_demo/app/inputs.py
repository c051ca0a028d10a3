"""The user's inputs, checked: the reference image and the modifier text.

Every bad input becomes an :class:`InputError` whose message is for the user; an unusual but
usable one (CMYK, animated, a modifier too long for the text tower) becomes a notice.
"""
from __future__ import annotations

import os
import re
import unicodedata
import warnings
from typing import Any

from PIL import Image

from ..common import MAX_IMAGE_PIXELS, ImageError, load_image
from ..errors import UserError
from ..methods import QueryError, clean_modifier
from ..methods.base import MAX_MODIFIER_CHARS


class InputError(UserError, ValueError):
    """A query the demo cannot run as given; the message is for the user (no stack trace)."""


def is_pathlike(x) -> bool:
    return isinstance(x, (str, os.PathLike))


# ---------------------------------------------------------------------------------------- image
def describe_image_source(source) -> list[str]:
    """Friendly notes on what decoding will do to an unusual image (no decoding here)."""
    notes = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = source if isinstance(source, Image.Image) else (Image.open(source) if is_pathlike(source) else None)
    except Exception:
        return notes
    if img is None:
        return notes
    try:
        if getattr(img, "is_animated", False):
            notes.append(f"animated image ({getattr(img, 'n_frames', '?')} frames): the first frame is used")
        mode = img.mode
        if mode == "CMYK":
            notes.append("CMYK image: converted to RGB")
        elif mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            notes.append(f"{'16-bit' if mode.startswith('I;16') else 'high bit-depth'} image: scaled to 8-bit RGB")
        elif mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
            notes.append("transparent image: flattened onto a white background")
        elif mode in ("L", "1"):
            notes.append("greyscale image: used as RGB")
    finally:
        if img is not source:
            img.close()
    return notes


def upload_name(image) -> str:
    """The uploaded file's own name (never the folder the server keeps it in), or ''."""
    return os.path.basename(os.fspath(image)) if is_pathlike(image) else ""


UNREADABLE = ("not a readable image{name}: it may be damaged, cut short, or not a picture at all; "
              "upload a PNG, JPEG, GIF or WebP image")


def load_reference(image) -> Any:
    """The reference as an RGB PIL image, or :class:`InputError` with a message for the user: what
    is wrong and what to do, with the file's own name at most (no server path, no exception class)."""
    if image is None or (isinstance(image, str) and not image.strip()):
        raise InputError("no reference image: upload or paste one, or pick an example image")
    name = upload_name(image)
    name = f" (“{name}”)" if name else ""
    if is_pathlike(image) and not os.path.exists(image):
        raise InputError(f"the reference image{name} is no longer on the server (uploads are deleted after a while); "
                         f"upload it again")
    try:
        with warnings.catch_warnings():  # load_image refuses such images itself, with a message
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return load_image(image)
    except ImageError as e:
        if "too large" in str(e):  # "image is too large: WxH pixels (limit N pixels)"
            size = re.search(r"\d+x\d+ pixels", str(e))
            size = f"{size.group()}; " if size else ""
            raise InputError(f"the reference image cannot be used: image is too large ({size}the limit is "
                             f"{MAX_IMAGE_PIXELS / 1e6:.0f} megapixels): scale it down and upload it again") from None
        raise InputError("the reference image cannot be used: " + UNREADABLE.format(name=name)) from None
    except MemoryError:
        raise InputError("the reference image cannot be used: it is too large to decode; scale it down and "
                         "upload it again") from None
    except FileNotFoundError:
        raise InputError("the reference image did not arrive (the upload is missing); upload it again") from None
    except Exception:  # any other decoder failure is still the file's fault
        raise InputError("the reference image cannot be used: " + UNREADABLE.format(name=name)) from None


def first_frame(path) -> tuple[Any, int]:
    """``(the first frame as an RGB image, frame count)`` of an animated image file, ``(None, 1)``
    for anything else (what the search uses, for the preview to show the same still)."""
    if not is_pathlike(path):
        return None, 1
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                frames = int(getattr(img, "n_frames", 1) or 1)
                if not getattr(img, "is_animated", False) or frames < 2:
                    return None, 1
        return load_image(path), frames
    except Exception:  # unreadable: the search will say so
        return None, 1


# ---------------------------------------------------------------------------------------- text
def strip_controls(text: str) -> str:
    """Drop control characters (keep tabs/newlines for the whitespace collapse, and format
    characters such as emoji joiners)."""
    return "".join(c for c in text if c in "\t\n\r" or unicodedata.category(c) != "Cc")


class ModifierCheck:
    """Cleans a modifier for one VL model's tokenizer and says what the text tower will make of it."""

    def __init__(self, vl):
        self.vl = vl
        self._overhead: dict[str, int] = {}

    def count_tokens(self, text: str) -> int:
        tok = self.vl.tokenizer
        if hasattr(tok, "encode"):
            try:
                return len(tok.encode(text))
            except Exception:
                pass
        ids = tok([text], context_length=4096)[0]
        return max(int((ids != 0).sum()) - 2, 0)

    def text_capacity(self, method) -> int:
        """How many modifier tokens the text tower sees for this method: the context minus
        start/end tokens, and for pseudo-token methods minus the prompt around the modifier
        (``a photo of * that``) and the extra ``L - 1`` pseudo words."""
        ctx = int(self.vl.context_length) - 2
        if method.num_words:
            prompt = method.prompt.format(modifier="").strip()
            if prompt not in self._overhead:
                self._overhead[prompt] = self.count_tokens(prompt)
            ctx -= self._overhead[prompt] + (method.num_words - 1)
        return max(ctx, 1)

    def _truncated(self, text: str, capacity: int) -> str | None:
        tok = self.vl.tokenizer
        try:
            return tok.decode(tok.encode(text)[:capacity]).strip()
        except Exception:
            return None

    def __call__(self, modifier: str | None, method) -> tuple[str, list[str]]:
        """A cleaned modifier and notices, or :class:`InputError` (empty)."""
        notices = []
        if modifier is not None and not isinstance(modifier, str):
            modifier = str(modifier)
        raw = strip_controls(modifier or "")
        try:
            text = clean_modifier(raw)
        except QueryError as e:
            raise InputError(str(e)) from None
        if len(" ".join(raw.split())) > MAX_MODIFIER_CHARS:
            notices.append(f"the modifier is longer than {MAX_MODIFIER_CHARS} characters; only the first "
                           f"{MAX_MODIFIER_CHARS} are used")
        n = self.count_tokens(text)
        cap = self.text_capacity(method)
        if n > cap:
            kept = self._truncated(text, cap)
            shown = f": the text encoder reads “{kept}”" if kept else ""
            notices.append(f"the modifier has {n} tokens but the text encoder has room for {cap} here (context "
                           f"{self.vl.context_length} minus the prompt and start/end tokens), so it was truncated"
                           f"{shown}")
        if any(ord(c) > 127 for c in text):
            from ..vl import BUILTIN_NAME

            why = ("the built-in model only learned the world's English vocabulary, so they probably mean little to it"
                   if self.vl.name == BUILTIN_NAME or not self.vl.pretrained else
                   "CLIP-style text towers are trained mostly on English, so expect weaker matches")
            notices.append(f"the modifier contains non-Latin characters or emoji: they are encoded (byte-level BPE), "
                           f"but {why}")
        return text, notices

    def ignored(self, modifier: str | None) -> str:
        """The modifier handed to a method that ignores it: cleaned the same way, and may be empty."""
        try:
            return clean_modifier(strip_controls(modifier or ""))
        except QueryError:
            return ""
