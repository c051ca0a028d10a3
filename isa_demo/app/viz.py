"""Pure numpy/PIL pictures and text for the demo: attention overlays, pseudo-word tables, timings."""
from __future__ import annotations

import html
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


def pseudo_words_markdown(words: Sequence[Sequence[tuple[str, float]]] | None, prompt: str | None = None) -> str:
    """The pseudo sentence as a markdown table: token -> nearest vocabulary words (cosine)."""
    if not words:
        return "_This method has no pseudo sentence to decode._"
    lines = []
    if prompt:
        lines.append(f"Composed prompt: `{prompt.replace('`', '')}`\n")
    lines += ["| token | nearest vocabulary words (cosine) |", "|---|---|"]
    for i, toks in enumerate(words, 1):
        cells = ", ".join(f"**{_md(w)}** ({c:.2f})" if j == 0 else f"{_md(w)} ({c:.2f})"
                          for j, (w, c) in enumerate(toks))
        lines.append(f"| s{i} | {cells} |")
    return "\n".join(lines)


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
    return "\n".join(f"> ℹ️ {_md(n)}" for n in notices) if notices else ""


def _md(text: str) -> str:
    """Escape text for a markdown table cell."""
    return html.escape(str(text)).replace("|", "\\|").replace("*", "\\*").replace("_", "\\_")
