"""Mixed precision for every trainer: bf16 autocast on CPUs that have bf16 instructions
(AVX512-BF16 / AMX), bf16 or fp16 autocast on CUDA, fp32 elsewhere or when asked.

``precision`` is ``"auto"`` (the default of every trainer), ``"bf16"``, ``"fp16"`` (CUDA only) or
``"fp32"``. Weights, optimizer state and losses stay fp32; only the forward passes inside
:func:`autocast` run in low precision (no loss scaling is needed for bf16; fp16 on CUDA uses a
``GradScaler``, see :func:`grad_scaler`). ``python -m isa_demo bench precision`` measures the
speedup of each trainer on this machine.
"""
from __future__ import annotations

import contextlib
import functools

import torch

PRECISIONS = ("auto", "bf16", "fp16", "fp32")


@functools.lru_cache(maxsize=None)
def cpu_has_bf16() -> bool:
    """Whether this CPU runs bf16 matrix products natively (AVX512-BF16 or AMX)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
        if "avx512_bf16" in flags or "amx_bf16" in flags:
            return True
    except OSError:
        pass
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:
        return False


def resolve(precision: str, device: str, convolutional: bool = False) -> str:
    """``auto`` -> the fastest safe choice for ``device``; anything else is checked.

    ``convolutional``: the trained network is a convolutional backbone. On a CPU, ``auto`` keeps
    those in fp32: oneDNN's bf16 depthwise and small convolutions are slower than fp32 there
    (measured by ``bench precision``: the lightest ISA backbone ran 1.8x slower in bf16), while
    the transformer trainers (VL model, symmetric ISA, masked-pair text tower) gain."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    cuda = str(device).startswith("cuda")
    if precision == "auto":
        if cuda:
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if cpu_has_bf16() and not convolutional else "fp32"
    if precision == "fp16" and not cuda:
        raise ValueError("fp16 autocast is for CUDA; use bf16 or fp32 on a CPU")
    return precision


def autocast(device: str, precision: str):
    """The autocast context of a training step's forward pass (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast("cuda" if str(device).startswith("cuda") else "cpu", dtype=dtype)


def grad_scaler(device: str, precision: str):
    """A gradient scaler for fp16 on CUDA; disabled (a pass-through) otherwise."""
    return torch.amp.GradScaler("cuda", enabled=precision == "fp16" and str(device).startswith("cuda"))
