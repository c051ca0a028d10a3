"""Small shared helpers: devices, atomic writes, hashing, safe image loading."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from PIL import Image, ImageOps, ImageSequence

from .errors import CheckpointError, ImageError, IntegrityError, UserError

# Largest image we agree to decode (pixels). Above this Pillow's decompression-bomb
# guard would only warn; we refuse instead, so a 20000x20000 upload costs nothing.
MAX_IMAGE_PIXELS = 40_000_000
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS


class MissingExtraError(UserError, ImportError):
    """A feature whose packages are an optional extra that is not installed."""


def require_extra(module: str, feature: str, extra: str = "scale"):
    """Import ``module`` (a package of an optional extra), or say how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingExtraError(
            f"{feature} needs {module.split('.')[0]}, which is not installed ({e}); install the {extra!r} extra: "
            f"pip install -r requirements-{extra}.txt (or pip install -e \".[{extra}]\")") from None


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; move it into place only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = None) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=indent))


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def read_metadata(path: str | os.PathLike) -> dict:
    """The string metadata of a safetensors file (its header only; no tensors are read); a file
    whose header cannot be read is a :class:`CheckpointError`."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except FileNotFoundError:
        raise
    except Exception as e:  # noqa: BLE001 - SafetensorError, a damaged header, not a safetensors file
        raise CheckpointError(f"checkpoint {Path(path).name} cannot be read ({_first_line(e)}): it is damaged "
                              f"or not a safetensors file; restore or retrain it") from None


def _first_line(e: BaseException) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0][:200]


# ----------------------------------------------------------------------------- content checksums
CHECKSUM = "content_sha256"  # a safetensors checkpoint's metadata key: its tensors and other metadata


def state_digest(state: dict, metadata: dict | None = None) -> str:
    """sha256 over a state dict's names, dtypes, shapes and bytes and the other metadata entries
    (everything but :data:`CHECKSUM` itself): what :func:`save_checkpoint` seals a file with."""
    import torch

    h = hashlib.sha256()
    meta = {k: v for k, v in (metadata or {}).items() if k != CHECKSUM}
    h.update(json.dumps(meta, sort_keys=True).encode())
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"\0{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_checkpoint(state: dict, path: str | os.PathLike, metadata: dict) -> Path:
    """Write a safetensors checkpoint atomically, sealed with its :func:`state_digest`."""
    from safetensors.torch import save_file

    meta = {**{k: v for k, v in metadata.items() if k != CHECKSUM}}
    meta[CHECKSUM] = state_digest(state, meta)
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=meta)
    return Path(path)


def load_checkpoint(path: str | os.PathLike) -> tuple[dict, dict]:
    """``(state, metadata)`` of a safetensors checkpoint, or :class:`CheckpointError` /
    :class:`IntegrityError`: unreadable, or its content no longer what it was sealed with
    (checkpoints written before the seal are read as they are)."""
    from safetensors.torch import load_file

    meta = read_metadata(path)
    try:
        state = load_file(str(path))
    except Exception as e:  # noqa: BLE001 - a damaged file
        raise CheckpointError(f"checkpoint {Path(path).name} cannot be read ({_first_line(e)}): it is damaged; "
                              f"restore or retrain it") from None
    if CHECKSUM in meta and state_digest(state, meta) != meta[CHECKSUM]:
        raise IntegrityError(f"checkpoint {Path(path).name} is damaged: its content does not match the checksum "
                             f"it was saved with; restore it or retrain it (it was not used)")
    return state, meta


def verify_file(path: str | os.PathLike, expected: str | None, what: str) -> None:
    """Refuse ``path`` (:class:`IntegrityError`) when ``expected`` is a sha256 it no longer has."""
    if expected and file_sha256(path) != expected:
        raise IntegrityError(f"{what} {Path(path).name} is damaged: its content does not match the checksum "
                             f"written with it; it was not used. Restore it, or write it again")


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def load_image(source: Any, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Open a path / file object / PIL image / array as an RGB PIL image, or raise ImageError.

    Honours EXIF orientation, takes the first frame of animations, flattens alpha onto
    white, converts CMYK / 16-bit / palette images to 8-bit RGB, and refuses images larger
    than ``max_pixels`` before decoding them.
    """
    import numpy as np

    if source is None:
        raise ImageError("no image given")
    if isinstance(source, np.ndarray):
        arr = source
        if arr.dtype != np.uint8:
            arr = np.clip(arr.astype("float64") / max(float(arr.max()), 1.0) * 255.0, 0, 255).astype("uint8")
        source = Image.fromarray(arr)
    try:
        img = source if isinstance(source, Image.Image) else Image.open(source)
        w, h = img.size
        if w * h > max_pixels:
            raise ImageError(f"image is too large: {w}x{h} pixels (limit {max_pixels:,} pixels)")
        if getattr(img, "is_animated", False):
            img = next(iter(ImageSequence.Iterator(img))).copy()
        img = ImageOps.exif_transpose(img)
        img.load()
    except ImageError:
        raise
    except Image.DecompressionBombError as e:  # pragma: no cover - guarded above
        raise ImageError(f"image is too large: {e}") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"not a readable image ({type(e).__name__}: {e})") from e
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype="float64")
        arr = arr / max(arr.max(), 1.0) * 255.0
        img = Image.fromarray(arr.astype("uint8"), "L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        bg = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(bg, img)
    return img.convert("RGB")


def machine_info() -> dict:
    """Where a number was measured: platform, CPU model, cores, torch, accelerator."""
    import platform

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"platform": platform.platform(), "cpu": cpu, "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
            "gpu": gpu}


def provenance() -> dict:
    """Command, machine and date, recorded beside every results table."""
    import shlex
    import sys
    import time

    m = machine_info()
    return {"command": "python -m isa_demo " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
            "machine": f"{m['cpu']}, {m['cpu_count']} cores, torch {m['torch']}, threads {m['torch_threads']}, "
                       f"gpu {m['gpu'] or 'none'}",
            "date": time.strftime("%Y-%m-%d")}


# ----------------------------------------------------------------------------- checkpoint storage
WEIGHTS = "int8 per output channel for weight tensors of >= 4096 elements, fp16 otherwise"
INT8_MIN_NUMEL = 4096
SCALE = ".int8_scale"


def pack_state(state: dict) -> dict:
    """Storage form of a state dict: conv kernels and weight matrices of at least ``INT8_MIN_NUMEL``
    elements as symmetric int8 per output channel (``round(w / s)``, ``s = max|w| / 127``, the
    scales beside them in fp32), other floats (biases, norms, small tensors) as fp16. About half
    the size of fp16; the accuracy is unchanged (see docs/experiments.md: checkpoint format). Used by the query-encoder
    checkpoints and the built-in VL model's token embedding."""
    out = {}
    for k, v in state.items():
        v = v.detach()
        if not v.is_floating_point():
            out[k] = v.contiguous()
        elif v.ndim >= 2 and v.numel() >= INT8_MIN_NUMEL:
            import torch

            flat = v.float().reshape(v.shape[0], -1)
            scale = flat.abs().amax(1).clamp_min(1e-12) / 127
            out[k] = torch.round(flat / scale[:, None]).to(torch.int8).reshape(v.shape).contiguous()
            out[k + SCALE] = scale.contiguous()
        else:
            out[k] = v.half().contiguous()
    return out


def unpack_state(state: dict) -> dict:
    """Inverse of :func:`pack_state` (fp32 tensors); plain fp16/fp32 state dicts pass through."""
    out = {}
    for k, v in state.items():
        if k.endswith(SCALE):
            continue
        if k + SCALE in state:
            out[k] = v.float() * state[k + SCALE].float().view(-1, *([1] * (v.ndim - 1)))
        else:
            out[k] = v.float() if v.is_floating_point() else v
    return out
