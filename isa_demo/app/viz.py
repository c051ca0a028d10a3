"""Pure numpy/PIL pictures and text for the demo: attention overlays, pseudo-word tables, timings."""
from __future__ import annotations

import html
import re
from typing import Sequence

import numpy as np
from PIL import Image

# a perceptual dark-blue -> red -> yellow ramp (inferno-like), interpolated; no matplotlib needed
_RAMP = np.array([[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66], [245, 125, 21],
                  [250, 193, 39], [252, 255, 164]], dtype=np.float64)


def colormap(x: np.ndarray) -> np.ndarray:
    """Values in [0, 1] ``(h, w)`` -> uint8 RGB ``(h, w, 3)``."""
    x = np.clip(np.nan_to_num(np.asarray(x, dtype=np.float64)), 0.0, 1.0) * (len(_RAMP) - 1)
    lo = np.floor(x).astype(int).clip(0, len(_RAMP) - 2)
    frac = (x - lo)[..., None]
    return (_RAMP[lo] * (1 - frac) + _RAMP[lo + 1] * frac).round().astype(np.uint8)


def attention_overlays(image: Image.Image, maps: np.ndarray, size: int = 160, alpha: float = 0.55) -> list[np.ndarray]:
    """One RGB picture per token: the reference with its spatial attention map ``(L, h, w)`` on top.

    Each map is min-max scaled on its own (a softmax over positions: only its shape matters) and
    upsampled bilinearly to ``size``."""
    maps = np.asarray(maps, dtype=np.float64)
    if maps.ndim == 2:
        maps = maps[None]
    if maps.ndim != 3 or maps.shape[0] == 0:
        return []
    base = np.asarray(image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC), dtype=np.float64)
    out = []
    for m in maps:
        m = np.nan_to_num(m)
        lo, hi = float(m.min()), float(m.max())
        m = (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)
        heat = Image.fromarray((m * 255).astype(np.uint8)).resize((size, size), Image.Resampling.BILINEAR)
        heat = colormap(np.asarray(heat, dtype=np.float64) / 255.0).astype(np.float64)
        out.append((base * (1 - alpha) + heat * alpha).round().clip(0, 255).astype(np.uint8))
    return out


PROMPT_SHOWN = 160  # characters of the composed prompt shown before an ellipsis


def pseudo_words_markdown(words: Sequence[Sequence[tuple[str, float]]] | None, prompt: str | None = None,
                          method: str = "This method") -> str:
    """The pseudo sentence as a markdown table: token -> nearest vocabulary words (cosine); the
    composed prompt above it, shortened with an ellipsis (and saying so) when it is long."""
    if not words:
        return f"_{md_escape(method)} has no pseudo words to decode: it does not turn the image into words._"
    lines = []
    if prompt:
        shown = prompt if len(prompt) <= PROMPT_SHOWN else prompt[:PROMPT_SHOWN - 1].rstrip() + "…"
        lines.append(f"Composed prompt: `{shown.replace('`', ' ')}`")
        if shown != prompt:
            lines.append(f"<sub>(shortened here: the prompt has {len(prompt):,} characters; the notice above says "
                         "how much of it the text encoder reads)</sub>")
        lines.append("")
    lines += ["| token | nearest vocabulary words (cosine) |", "|---|---|"]
    for i, toks in enumerate(words, 1):
        cells = ", ".join(f"**{md_escape(w)}** ({c:.2f})" if j == 0 else f"{md_escape(w)} ({c:.2f})"
                          for j, (w, c) in enumerate(toks))
        lines.append(f"| s{i} | {cells} |")
    return "\n".join(lines)


def attention_note(method: str, has_words: bool, failed: bool = False) -> str:
    """What the attention panel says when there is nothing to draw."""
    if failed:
        return ("_No attention maps: the explanation could not be computed for this query (the results are not "
                "affected)._")
    if has_words:
        return (f"_{md_escape(method)} has no attention maps: it makes its pseudo word from the image's global "
                "feature at once, not by looking at image regions, so there is no spatial map to show._")
    return (f"_{md_escape(method)} has no attention maps: it does not turn the image into pseudo words "
            "(it compares whole-image and text features)._")


def token_captions(words: Sequence[Sequence[tuple[str, float]]] | None, n: int) -> list[str]:
    out = []
    for i in range(n):
        top = words[i][0][0] if words and i < len(words) and words[i] else ""
        out.append(f"s{i + 1}" + (f" ≈ {top}" if top else ""))
    return out


TIMING_LABELS = {
    "image_decode_ms": "image decode",
    "query_image_encoder_ms": "query image encoder",
    "text_encoder_ms": "text encoder",
    "query_encoders_ms": "image + text encoders (together)",
    "search_ms": "gallery search",
    "total_ms": "total (this query)",
    "explain_ms": "explanation (extra, not in total)",
}


def timings_markdown(timings: dict[str, float], how: str = "") -> str:
    rows = ["| stage | ms |", "|---|---:|"]
    for key, label in TIMING_LABELS.items():
        if key in timings:
            value = timings[key]
            rows.append(f"| {'**' + label + '**' if key == 'total_ms' else label} | {value:.1f} |")
    if how:
        rows.append(f"\n<sub>{html.escape(how)}</sub>")
    return "\n".join(rows)


def notices_markdown(notices: Sequence[str]) -> str:
    return "\n".join(f"> ℹ️ {md_escape(n)}" for n in notices) if notices else ""


def notice_markdown(message: str) -> str:
    """A warning for the page: the message as plain text (never Markdown or HTML)."""
    return f"> ⚠️ **{md_escape(message)}**"


_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~:&$=\"'])")


def md_escape(text) -> str:
    """``text`` shown as itself in Markdown: every punctuation character backslash-escaped, so that
    nothing in it becomes a link, emphasis, code, HTML, a table cell break or an autolinked URL
    (``http\\://`` is not a URL); line breaks become spaces."""
    return _MD_SPECIAL.sub(r"\\\1", " ".join(str(text).split()))
