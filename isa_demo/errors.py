"""The one base for every error a user can cause.

Anything raised as a :class:`UserError` carries a message written for the person who typed the
command or used the page: what happened and what to do. The command line's entry point and the
app each catch it in exactly one place and show the message, never a traceback. Errors that are
not ``UserError`` are bugs and keep their traceback.

Each subclass also derives from the built-in exception it always was (``ValueError``,
``RuntimeError``, ``FileNotFoundError``), so existing ``except`` clauses keep working.
"""
from __future__ import annotations


class UserError(Exception):
    """Bad input, a missing file, an incompatible checkpoint: the message is for the user."""


class ImageError(UserError, ValueError):
    """An input image that cannot be used (corrupt, truncated, too large, not an image)."""


class QueryError(UserError, ValueError):
    """Bad query input (empty modifier, bad prompt template ...)."""


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be used: another format, backbone, L or VL model, or corrupt."""


class VLLoadError(UserError, RuntimeError):
    """A VL model that cannot be loaded (unknown name, missing or mismatched weights)."""


class IntegrityError(UserError, ValueError):
    """A file whose content no longer matches the checksum written with it (damaged on disk, cut
    short, edited): it is refused rather than read, so that nothing answers with wrong numbers."""
