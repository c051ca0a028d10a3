"""isa-demo: asymmetric zero-shot composed image retrieval (ISA and friends), demo and toolkit."""
__version__ = "0.1.0"
