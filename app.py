"""The isa-demo Gradio app: ``python app.py [--host --port --share --index PATH --vl-model NAME --vl-pretrained TAG]``.

Thin on purpose: everything lives in :mod:`isa_demo.app` (service layer, layout, command line).
"""
from isa_demo.app.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
