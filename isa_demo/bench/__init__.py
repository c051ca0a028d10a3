"""Benchmarks: one module each, listed in :mod:`isa_demo.bench.cli` (``python -m isa_demo bench NAME``)."""
