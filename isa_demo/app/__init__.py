"""The Gradio demo: a pure-python service layer (``service``), the layout (``ui``), the command
line (``cli``: ``python app.py`` / ``python -m isa_demo app``) and its benchmark (``bench``)."""
from .service import ComposeResult, DemoService, Hit, InputError, Variant, load_service

__all__ = ["ComposeResult", "DemoService", "Hit", "InputError", "Variant", "load_service"]
