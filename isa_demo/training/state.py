"""Resumable training state, saved atomically and loaded safely (``weights_only=True``)."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from ..common import atomic_path
from ..errors import CheckpointError
from ..settings import BUILTIN_VL, RUNS_DIR


def output_paths(kind: str, tag: str, vl, shipped: Path, out=None, state=None) -> tuple[Path, Path]:
    """Where a trainer writes its checkpoint and its resumable state, unless told.

    The checkpoint goes to the shipped path (``assets/``) only when training for the built-in VL
    model's shipped weights; for any other VL model (a pretrained tag, random weights) it goes to
    ``RUNS_DIR/kind/TAG--VLNAME.safetensors``, so an experiment never overwrites a shipped model.
    The state goes to ``RUNS_DIR/kind/TAG[--VLNAME].state.pt`` (VLNAME for every model but the
    default built-in one), and records the VL model it was trained for (:func:`load_state` checks it)."""
    suffix = "" if vl.is_builtin else f"--{vl.name}"
    default_out = shipped if vl.is_builtin else RUNS_DIR / kind / f"{tag}{suffix}.safetensors"
    state_suffix = "" if vl.is_builtin and vl.name == BUILTIN_VL else f"--{vl.name}"
    return Path(out or default_out), Path(state or RUNS_DIR / kind / f"{tag}{state_suffix}.state.pt")


def save_state(path: str | os.PathLike, step: int, model: torch.nn.Module, optimizer, scheduler=None,
               extra: dict | None = None) -> None:
    state = {"step": step, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict() if scheduler is not None else None, "extra": extra or {}}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_state(path: str | os.PathLike, model: torch.nn.Module, optimizer, scheduler=None,
               vl: dict | None = None) -> tuple[int, dict]:
    """Restore a state saved by :func:`save_state`; returns ``(step, extra)``. Missing file: step 0.

    ``vl``: the identity of the VL model this run trains for; a state saved for another one (or
    without one recorded) is refused, never resumed: its weights fit the other model."""
    path = Path(path)
    if not path.exists():
        return 0, {}
    state = torch.load(path, map_location="cpu", weights_only=True)
    if vl is not None:
        from ..vl.model import describe_identity, same_model

        found = (state.get("extra") or {}).get("vl")
        if not found or not same_model(found, vl):
            raise CheckpointError(f"{path} holds a run for the VL model {describe_identity(found)}, not for "
                                  f"{describe_identity(vl)}; delete it or pass another --state")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state.get("scheduler") is not None:
        scheduler.load_state_dict(state["scheduler"])
    print(f"resumed from {path} at step {state['step']}")
    return int(state["step"]), state.get("extra") or {}


def cosine_schedule(optimizer, warmup: int, total: int):
    import math

    def factor(step):
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
