"""`python -m isa_demo bench NAME`: every benchmark, one module each, listed here in one place.

Each module below defines ``register(sub)``, which adds its sub-command; every benchmark prints
a table and writes it (with its provenance) under ``assets/results/`` through
:mod:`isa_demo.evaluation.results`.
"""
from __future__ import annotations

import importlib

BENCHMARKS = ("vl", "accuracy", "plots", "efficiency", "ablation", "precision", "explain", "index", "app", "load",
              "prompts", "train_throughput", "scale", "report")


def register(sub) -> None:
    for name in BENCHMARKS:
        importlib.import_module(f"{__package__}.{name}").register(sub)
