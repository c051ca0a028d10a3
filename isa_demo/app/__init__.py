"""The Gradio demo: a pure-python service layer (``service``: ``catalogue``, ``compose``,
``inspector``, ``inputs``), the layout (``ui``), the command line (``cli``: ``python app.py`` /
``python -m isa_demo app``); its benchmark is :mod:`isa_demo.bench.app`."""
from ..methods import Variant
from .compose import ComposeResult, Hit
from .inputs import InputError
from .service import DemoService, load_service

__all__ = ["ComposeResult", "DemoService", "Hit", "InputError", "Variant", "load_service"]
