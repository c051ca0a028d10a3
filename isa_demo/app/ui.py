"""The Gradio layout: tabs, components and event wiring around a :class:`DemoService`, one
function per tab or panel (:func:`compose_tab`, :func:`efficiency_panel`, :func:`compare_tab`,
:func:`failures_tab`, :func:`about_tab`, :func:`api_endpoints`).

Every handler goes through :func:`guarded`, the app's one place that turns an exception into a
message: a :class:`isa_demo.errors.UserError` (bad input, a missing table) shows its own message
(a ``gr.Warning`` toast plus a persistent note next to the results); anything else is a bug,
logged with its traceback on the server and shown as one line. Named API endpoints:
``/compose`` and ``/compare`` (JSON: ids, names, scores, timings, notices) and ``/variants``.
"""
from __future__ import annotations

import functools
import logging
import os
import traceback
from dataclasses import dataclass
from typing import Callable

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # an offline demo: no phoning home

import gradio as gr  # noqa: E402

from ..errors import UserError  # noqa: E402
from .compose import MAX_K  # noqa: E402
from .service import DemoService  # noqa: E402
from .viz import attention_overlays, notices_markdown, pseudo_words_markdown, timings_markdown, token_captions  # noqa: E402

log = logging.getLogger("isa_demo.app")

TITLE = "isa-demo: asymmetric zero-shot composed image retrieval"
EXAMPLE_MODIFIERS = ["make the circle red", "remove the star", "add a small green square at the bottom right",
                     "make the background black", "replace the star with a heart", "move the star to the left",
                     "make the triangle larger"]
COSTS = {"GFLOPs": "gflops", "CPU latency (ms)": "cpu_ms_p50"}
CSS = """
#results .caption-label, #inspector-top .caption-label {font-variant-numeric: tabular-nums;}
#notice blockquote {margin: 0.2em 0;}
"""
PRIVATE = {"api_visibility": "private"}


class ReferenceImage(gr.Image):
    """``gr.Image`` whose preprocessing never raises: a file Pillow cannot open (corrupt,
    truncated, a decompression bomb) is handed over as its upload path, so that the service can
    say what is wrong with it instead of the UI showing a bare "Error"."""

    is_template = True  # use the stock Image frontend

    def preprocess(self, payload):
        try:
            return super().preprocess(payload)
        except Exception:
            path = getattr(payload, "path", None)
            return str(path) if path else None


# ---------------------------------------------------------------------------------------- errors
def guarded(on_error: Callable[[str], object]):
    """Decorate a handler: a :class:`UserError` becomes ``on_error(its message)``; any other
    exception is logged with its traceback and becomes ``on_error(one line)``."""
    def wrap(fn):
        @functools.wraps(fn)
        def handler(*args):
            try:
                return fn(*args)
            except UserError as e:
                message = str(e)
            except Exception as e:  # noqa: BLE001 - a bug: the log gets the traceback, the page one line
                log.error("unexpected error in the demo:\n%s", traceback.format_exc())
                message = f"something went wrong on the server ({type(e).__name__}); the query was not run"
            return on_error(message)
        return handler
    return wrap


def _notice(message: str, warn: bool = True) -> str:
    if warn:
        gr.Warning(message)
    return f"> ⚠️ **{message}**"


def _api_error(message: str):
    raise gr.Error(message, print_exception=False)


# ---------------------------------------------------------------------------------------- pieces
@dataclass
class Choices:
    """The method and backbone choices every tab offers; the backbone is for ISA only."""

    methods: list[str]
    default_method: str
    backbones: list[str]
    default_backbone: str | None

    @classmethod
    def of(cls, service: DemoService) -> "Choices":
        c = service.catalogue
        return cls(c.method_choices(), c.default_method(), c.all_backbones(), c.default_backbone())

    def has_backbone(self, method: str | None) -> bool:
        return bool(self.backbones) and method == "isa"

    def pair(self, method_label: str, backbone_label: str, method: str | None = None, backbone: str | None = None,
             method_id: str | None = None, backbone_id: str | None = None) -> tuple[gr.Dropdown, gr.Dropdown]:
        """A method dropdown and its backbone dropdown (enabled only while the method is ISA)."""
        method = method or self.default_method
        m = gr.Dropdown(self.methods, value=method, label=method_label, elem_id=method_id)
        b = gr.Dropdown(self.backbones, value=backbone or self.default_backbone, label=backbone_label,
                        interactive=self.has_backbone(method), elem_id=backbone_id)
        m.change(lambda v: gr.update(interactive=self.has_backbone(v)), m, b, queue=False, **PRIVATE)
        return m, b


def _result_items(result) -> list[tuple[str, str]]:
    return [(h.path, f"#{h.rank} · {h.score:.3f}") for h in result.hits]


def _explain_outputs(result) -> tuple[str, list]:
    ex = result.explanation or {}
    words = ex.get("pseudo_words")
    if ex.get("error"):
        md = f"_The explanation failed: {ex['error']}_"
    else:
        md = pseudo_words_markdown(words, ex.get("prompt"))
    maps = ex.get("attention")
    overlays = []
    if maps is not None and result.reference is not None:
        pics = attention_overlays(result.reference, maps)
        overlays = list(zip(pics, token_captions(words, len(pics))))
    return md, overlays


# ---------------------------------------------------------------------------------------- layout
def build_ui(service: DemoService, title: str = TITLE) -> gr.Blocks:
    choices = Choices.of(service)
    info = service.describe()
    with gr.Blocks(title=title, analytics_enabled=False) as demo:
        gr.Markdown(
            f"## {title}\nA small query model turns the reference image into a *pseudo sentence*; the frozen "
            f"vision-language model reads “a photo of S that *modifier*” and the gallery "
            f"({info['gallery_size']:,} images: {service.gallery_label}) is searched with its image features. "
            f"VL model: `{info['vl'].get('name')}`.")
        if info["unavailable"]:
            gr.Markdown("Not available with this VL model: " + "; ".join(
                f"{name} ({why})" for name, why in info["unavailable"].items()))
        with gr.Tabs():
            query = compose_tab(demo, service, choices)
            compare_inputs = compare_tab(service, choices, query)
            failures_tab(demo, service, choices)
            about_tab(service)
        api_endpoints(service, query, compare_inputs)
    return demo


def compose_tab(demo: gr.Blocks, service: DemoService, choices: Choices) -> list:
    """Reference, modifier, method, backbone, top-K -> results, pseudo words, attention, timings;
    the accuracy-versus-cost panel below. Returns the query inputs ``[image, modifier, method,
    backbone, k]`` (the ``/compose`` endpoint and the Compare tab's copy button use them)."""
    examples = service.inspector.example_queries(12)

    @guarded(lambda message: ([], _notice(message), "", [], ""))
    def run(image, modifier, method, backbone, k):
        r = service.compose(image, modifier, method, backbone, k)
        words, overlays = _explain_outputs(r)
        name = f"{r.method} · {r.backbone}" if r.backbone else r.method
        head = f"**{name}**: top {len(r.hits)} of {len(service.gallery):,}"
        note = "\n\n".join(x for x in (head, notices_markdown(r.notices)) if x)
        return _result_items(r), note, words, overlays, timings_markdown(r.timings_ms, r.timing_note)

    def pick_example(evt: gr.SelectData):
        ex = examples[evt.index] if isinstance(evt.index, int) and evt.index < len(examples) else None
        if ex is None:
            return gr.update(), gr.update()
        return ex["image"], ex["modifier"]

    with gr.Tab("Compose", id="compose"):
        with gr.Row():
            with gr.Column(scale=2, min_width=320):
                ref = ReferenceImage(label="Reference image (upload or paste)", type="filepath", image_mode=None,
                                     sources=["upload", "clipboard"], height=240, elem_id="reference")
                ex_gallery = gr.Gallery(value=[(e["image"], e["mod_type"]) for e in examples],
                                        label="Example references: click one to use it", columns=6, height=150,
                                        allow_preview=False, elem_id="examples", visible=bool(examples),
                                        object_fit="contain")
                modifier = gr.Textbox(label="Modifier: what should change", elem_id="modifier",
                                      placeholder="make the circle red", lines=1, max_lines=4)
                gr.Examples([[m] for m in EXAMPLE_MODIFIERS], inputs=[modifier], label="Example modifiers")
                with gr.Row():
                    method, backbone = choices.pair("Method", "Light backbone (ISA)", method_id="method",
                                                    backbone_id="backbone")
                k = gr.Slider(1, MAX_K, value=10, step=1, label="Top-K", elem_id="topk")
                search = gr.Button("Search", variant="primary", elem_id="search")
            with gr.Column(scale=3, min_width=400):
                notice = gr.Markdown(elem_id="notice")
                results = gr.Gallery(label="Results (rank · score)", columns=5, height=420, elem_id="results",
                                     object_fit="contain", allow_preview=True)
                with gr.Row():
                    with gr.Column(scale=3):
                        words = gr.Markdown(elem_id="pseudo-words")
                        attention = gr.Gallery(label="What each pseudo word looks at (attention)", columns=4,
                                               height=180, allow_preview=False, elem_id="attention",
                                               object_fit="contain")
                    with gr.Column(scale=2):
                        timings = gr.Markdown(elem_id="timings")
        efficiency_panel(demo, service, method, backbone)

    inputs, outputs = [ref, modifier, method, backbone, k], [results, notice, words, attention, timings]
    search.click(run, inputs, outputs, concurrency_id="query", **PRIVATE)
    modifier.submit(run, inputs, outputs, concurrency_id="query", **PRIVATE)
    ex_gallery.select(pick_example, None, [ref, modifier], queue=False, **PRIVATE)
    return inputs


def efficiency_panel(demo: gr.Blocks, service: DemoService, method: gr.Dropdown, backbone: gr.Dropdown) -> None:
    """Accuracy against the query image encoder's cost, the chosen ISA backbone highlighted."""
    @guarded(lambda message: (gr.update(value=None, visible=False), _notice(message, warn=False),
                              gr.update(value=None, visible=False)))
    def show(method_choice, backbone_choice, cost):
        highlight = service.catalogue.highlighted_backbone(method_choice, backbone_choice)
        fig, table, note = service.inspector.efficiency(highlight, COSTS.get(cost, "gflops"))
        return (gr.update(value=fig, visible=fig is not None), note,
                gr.update(value=table, visible=table is not None))

    gr.Markdown("### Accuracy vs cost of the query models")
    with gr.Row():
        with gr.Column(scale=1):
            cost = gr.Radio(list(COSTS), value="GFLOPs", label="Cost axis", elem_id="cost")
            plot = gr.Plot(elem_id="efficiency-plot", show_label=False)
        with gr.Column(scale=1):
            note = gr.Markdown(elem_id="efficiency-note")
            table = gr.Dataframe(interactive=False, elem_id="efficiency-table", max_height=380)
    inputs, outputs = [method, backbone, cost], [plot, note, table]
    for comp in inputs:
        comp.change(show, inputs, outputs, **PRIVATE)
    demo.load(show, inputs, outputs, **PRIVATE)


def compare_tab(service: DemoService, choices: Choices, query: list) -> list:
    """One query through two method/backbone choices side by side. Returns its inputs
    ``[image, modifier, method A, backbone A, method B, backbone B, k]`` (for ``/compare``)."""

    @guarded(lambda message: (_notice(message), [], "", [], ""))
    def run(image, modifier, method_a, backbone_a, method_b, backbone_b, k):
        ra, rb, summary = service.compare(image, modifier, (method_a, backbone_a), (method_b, backbone_b), k)
        notes = notices_markdown(sorted(set(ra.notices) | set(rb.notices)))
        return (f"{summary}\n\n{notes}", _result_items(ra), timings_markdown(ra.timings_ms, ra.timing_note),
                _result_items(rb), timings_markdown(rb.timings_ms, rb.timing_note))

    with gr.Tab("Compare", id="compare"):
        with gr.Row():
            with gr.Column(scale=2, min_width=320):
                ref = ReferenceImage(label="Reference image", type="filepath", image_mode=None,
                                     sources=["upload", "clipboard"], height=220, elem_id="c-reference")
                modifier = gr.Textbox(label="Modifier", elem_id="c-modifier", placeholder="make the circle red")
                copy = gr.Button("Use the Compose tab's query", size="sm")
                with gr.Row():
                    m_a, b_a = choices.pair("A: method", "A: backbone (ISA)")
                second = ("sum" if choices.default_method != "sum" or "image-only" not in choices.methods
                          else "image-only")
                with gr.Row():
                    m_b, b_b = choices.pair("B: method", "B: backbone (ISA)", method=second,
                                            backbone=choices.backbones[-1] if choices.backbones else None)
                k = gr.Slider(1, MAX_K, value=10, step=1, label="Top-K")
                go = gr.Button("Compare", variant="primary", elem_id="compare")
            with gr.Column(scale=4):
                note = gr.Markdown()
                with gr.Row():
                    with gr.Column():
                        g_a = gr.Gallery(label="A", columns=3, height=380, object_fit="contain", elem_id="compare-a")
                        t_a = gr.Markdown()
                    with gr.Column():
                        g_b = gr.Gallery(label="B", columns=3, height=380, object_fit="contain", elem_id="compare-b")
                        t_b = gr.Markdown()

    inputs = [ref, modifier, m_a, b_a, m_b, b_b, k]
    copy.click(lambda a, b: (a, b), query[:2], [ref, modifier], queue=False, **PRIVATE)
    go.click(run, inputs, [note, g_a, t_a, g_b, t_b], concurrency_id="query", **PRIVATE)
    return inputs


def failures_tab(demo: gr.Blocks, service: DemoService, choices: Choices) -> None:
    """The failure-case inspector: a method's per-query table of the world's test split; a row
    opens its reference, ground truth and top-K."""
    inspector = service.inspector

    @guarded(lambda message: (_notice(message, warn=False), gr.update(value=None), None))
    def load(method, backbone, mod_type, order):
        shown, full = inspector.failure_table(method, backbone, mod_type, order)
        ranked = shown["rank"].notna().sum() if "rank" in shown else 0
        note = f"{len(shown)} queries ({mod_type}); ground truth ranked for {ranked}. Click a row to inspect it."
        return note, shown, full

    @guarded(lambda message: (_notice(message, warn=False), None, [], []))
    def inspect(full, k, evt: gr.SelectData):
        if full is None or not len(full):
            return "_Load a table first._", None, [], []
        qid = None
        if evt.row_value:
            qid = evt.row_value[0]
        elif isinstance(evt.index, (list, tuple)) and evt.index:
            qid = full.iloc[int(evt.index[0])]["query_id"]
        rows = full[full["query_id"].astype(str) == str(qid)]
        if rows.empty:
            return "_That row is not in the table._", None, [], []
        d = inspector.failure_detail(rows.iloc[0].to_dict(), int(k))
        rank = f"rank of the first ground truth: **{d['rank']}**" if d["rank"] else "no ground truth in the ranking"
        md = (f"**Query {d['query_id']}** ({d['mod_type']}): “{d['modifier']}”  \n{rank}; reference "
              f"`{d['reference_name']}`")
        gts = [(t["path"], t["name"]) for t in d["targets"] if t["path"]]
        top = [(t["path"], f"#{t['rank']} · {t['score']:.3f}{' · ✓ ground truth' if t['is_gt'] else ''}")
               for t in d["top"] if t["path"]]
        return md, d["reference"], gts, top

    with gr.Tab("Failure cases", id="failures"):
        gr.Markdown("Every query of the world's test split as the method ranked it "
                    "(`assets/results/per_query/`). Worst first: sorted by the rank of the first ground "
                    "truth. Click a row for the reference, the ground truth and the top-K.")
        with gr.Row():
            method, backbone = choices.pair("Method", "Backbone (ISA)", method_id="f-method")
            mod_type = gr.Dropdown(inspector.mod_types(), value="all", label="Modification type")
            order = gr.Radio(["worst first", "best first"], value="worst first", label="Sort by rank")
            k = gr.Slider(1, 10, value=10, step=1, label="Top-K shown")
        note = gr.Markdown()
        state = gr.State(None)
        with gr.Row():
            with gr.Column(scale=4):
                table = gr.Dataframe(interactive=False, max_height=560, elem_id="failure-table", wrap=True,
                                     column_widths=["9%", "21%", "48%", "11%", "11%"])
            with gr.Column(scale=4):
                detail = gr.Markdown()
                with gr.Row():
                    ref = gr.Image(label="Reference", interactive=False, height=180)
                    gts = gr.Gallery(label="Ground truth", columns=3, height=180, allow_preview=False)
                top = gr.Gallery(label="Top-K (✓ = ground truth)", columns=5, height=300, elem_id="inspector-top",
                                 object_fit="contain")

    inputs = [method, backbone, mod_type, order]
    for comp in inputs:
        comp.change(load, inputs, [note, table, state], **PRIVATE)
    demo.load(load, inputs, [note, table, state], **PRIVATE)
    table.select(inspect, [state, k], [detail, ref, gts, top], **PRIVATE)


def about_tab(service: DemoService) -> None:
    d = service.describe()
    with gr.Tab("About", id="about"):
        gr.Markdown(f"""
### What this demo runs
- **Gallery**: {d['gallery_size']:,} images ({service.gallery_label}), indexed with the frozen VL model's image
  tower (`{d['vl'].get('name')}`); search is a faiss inner-product search over the precomputed features.
- **Methods**: {', '.join(d['methods'])}. ISA backbones: {', '.join(d['backbones']) or 'none shipped yet'}.
- **Timings** are wall-clock for this very query on the server: image decode; query image encoder and text encoder
  timed separately for methods whose two stages are two encoders (ISA: backbone + token learner, then the text tower on
  “a photo of S that *modifier*”; masked-pair methods: VL image tower + Phi, then the text tower); the sum
  baseline's two encoders are timed together; search; and the total. The explanation panels (pseudo words,
  attention) are computed after the query and timed separately.
- The reference image is left out of its own results when it is a gallery image (as in CIRR).

### HTTP API
```python
from gradio_client import Client, handle_file
c = Client("http://HOST:PORT/")
r = c.predict(handle_file("ref.png"), "make the circle red", "isa", "{d['backbones'][0] if d['backbones'] else ''}", 10,
              api_name="/compose")
r["ids"], r["scores"], r["timings_ms"]
```
""")


def api_endpoints(service: DemoService, query: list, compare_inputs: list) -> None:
    """The named endpoints for gradio_client and plain HTTP: ``/compose``, ``/compare``, ``/variants``."""

    @guarded(_api_error)
    def compose(image, modifier, method, backbone, k):
        return service.compose(image, modifier, method, backbone, k, explain=False).to_json()

    @guarded(_api_error)
    def compare(image, modifier, method_a, backbone_a, method_b, backbone_b, k):
        ra, rb, summary = service.compare(image, modifier, (method_a, backbone_a), (method_b, backbone_b), k)
        return {"a": ra.to_json(), "b": rb.to_json(), "summary": summary}

    def variants() -> dict:
        """Methods, ISA backbones, the gallery and the VL model this app serves."""
        return service.describe()

    out = gr.JSON(visible=False)  # hidden API-only wiring
    compose_btn, compare_btn = gr.Button(visible=False), gr.Button(visible=False)
    compose_btn.click(compose, query, out, api_name="compose", concurrency_id="query",
                      api_description="Composed query -> JSON: ids, names, scores, timings_ms, notices")
    compare_btn.click(compare, compare_inputs, out, api_name="compare", concurrency_id="query",
                      api_description="Two methods on the same query -> JSON")
    gr.api(variants, api_name="variants")
