"""The Gradio layout: tabs, components and event wiring around a :class:`DemoService`, one
function per tab or panel (:func:`compose_tab`, :func:`efficiency_panel`, :func:`compare_tab`,
:func:`isa_demo.app.failures.failures_tab`, :func:`about_tab`, :func:`api_endpoints`); the pieces
they share (messages, choices, the page's CSS and script) are in :mod:`isa_demo.app.widgets`.

Every handler goes through :func:`guarded`, the app's one place that turns an exception into a
message: a :class:`isa_demo.errors.UserError` (bad input, a missing table) shows its own message
(a ``gr.Warning`` toast plus a persistent note next to the results), as text, never as Markdown;
anything else is a bug, logged with its traceback on the server and shown as one line. Top-K is
checked by the service (:func:`isa_demo.app.compose.check_k`), the same for the page and the API,
and the slider always shows the K the results were searched with. Named API endpoints:
``/compose`` and ``/compare`` (JSON: ids, names, scores, timings, notices) and ``/variants``.
"""
from __future__ import annotations

import logging
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # an offline demo: no phoning home

import gradio as gr  # noqa: E402

from ..bench.plots import display_name, rank_moves_figure  # noqa: E402
from .compose import MAX_K, check_k  # noqa: E402
from .failures import failures_tab  # noqa: E402
from .inputs import InputError  # noqa: E402
from .service import DemoService  # noqa: E402
from .viz import (  # noqa: E402
    attention_note,
    attention_overlays,
    md_escape,
    notices_markdown,
    pseudo_words_markdown,
    timings_markdown,
    token_captions,
)
from .widgets import (  # noqa: E402
    CSS,
    NO_LATEX,
    PAGE_JS,
    PRIVATE,  # noqa: E402
    Choices,
    DemoBlocks,
    ReferenceImage,
    TopK,
    api_error,
    guarded,
    notice,
    preprocessed,
    reference_input,
    shown_k_js,
    still_reference,
    top_k_slider,
    typed_k_js,
)

__all__ = ["CSS", "PAGE_JS", "DemoBlocks", "ReferenceImage", "TopK", "build_ui", "guarded"]

log = logging.getLogger("isa_demo.app")

TITLE = "isa-demo: asymmetric zero-shot composed image retrieval"
EXAMPLE_MODIFIERS = ["make the circle red", "remove the star", "add a small green square at the bottom right",
                     "make the background black", "replace the star with a heart", "move the star to the left",
                     "make the triangle larger"]
COSTS = {"GFLOPs": "gflops", "CPU latency (ms)": "cpu_ms_p50"}


def _result_items(result, other: list | None = None, tag: str = "", depth: int = 0) -> list[tuple[str, str]]:
    """Gallery items: ``#rank · score``, and with ``other`` (ranks under the other method) where
    each result ranks there: ``B #4`` / ``B >1000``."""
    items = []
    for i, h in enumerate(result.hits):
        caption = f"#{h.rank} · {h.score:.3f}"
        if other is not None:
            where = other[i] if i < len(other) else None
            caption += f" · {tag} #{where}" if where else f" · {tag} >{depth}"
        items.append((h.path, caption))
    return items


def _explain_outputs(result, name: str) -> tuple[str, list, str]:
    """Pseudo-word table, attention overlays and the attention panel's note (when it has nothing
    to draw, it says why)."""
    ex = result.explanation or {}
    words = ex.get("pseudo_words")
    if ex.get("error"):
        log.warning("explanation failed: %s", ex["error"])
        return ("_The explanation could not be computed for this query; the results are not affected._", [],
                attention_note(name, False, failed=True))
    md = pseudo_words_markdown(words, ex.get("prompt"), name)
    maps = ex.get("attention")
    if maps is None or result.reference is None:
        return md, [], attention_note(name, bool(words))
    pics = attention_overlays(result.reference, maps)
    return md, list(zip(pics, token_captions(words, len(pics)))), ""


# ---------------------------------------------------------------------------------------- layout
def build_ui(service: DemoService, title: str = TITLE, delete_cache: tuple[int, int] | None = None) -> gr.Blocks:
    """The page and the named endpoints; ``delete_cache``: gradio's ``(every seconds, older than
    seconds)`` sweep of uploads and other cached files (None: kept for the life of the process)."""
    choices = Choices.of(service)
    info = service.describe()
    with DemoBlocks(title=title, analytics_enabled=False, delete_cache=delete_cache) as demo:
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

    def failed(message, k_shown=None):
        if k_shown is not None:  # a bad Top-K: nothing searched, the results shown and their K stay
            return (gr.update(), notice(message), gr.update(), gr.update(), gr.update(), gr.update(), k_shown,
                    gr.update())
        return [], notice(message), "", gr.update(value=[], visible=False), "", "", gr.update(), gr.update()

    @guarded(failed)
    def search(image, modifier, method, backbone, k, upload_note):
        r = service.compose(image, modifier, method, backbone, k)
        name = display_name(r.method, r.backbone)
        words, overlays, att_note = _explain_outputs(r, name)
        head = f"**{md_escape(name)}**: top {len(r.hits)} of {len(service.gallery):,}"
        note = "\n\n".join(x for x in (head, notices_markdown(([upload_note] if upload_note else []) + r.notices)) if x)
        return (_result_items(r), note, words, gr.update(value=overlays, visible=bool(overlays)), att_note,
                timings_markdown(r.timings_ms, r.timing_note), k, k)

    def run(image, modifier, method, backbone, k, upload_note, last_k):
        try:
            k = check_k(k)
        except InputError as e:  # nothing searched: the box goes back to the K of the results shown
            return failed(str(e), last_k)
        return search(image, modifier, method, backbone, k, upload_note)

    def pick_example(evt: gr.SelectData):
        ex = examples[evt.index] if isinstance(evt.index, int) and evt.index < len(examples) else None
        if ex is None:
            return gr.update(), gr.update(), gr.update()
        return ex["image"], ex["modifier"], ""

    with gr.Tab("Compose", id="compose"):
        with gr.Row():
            with gr.Column(scale=2, min_width=320):
                ref = reference_input("Reference image (upload or paste)", "reference", 240)
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
                k = top_k_slider("topk", MAX_K)
                search_btn = gr.Button("Search", variant="primary", elem_id="search")
            with gr.Column(scale=3, min_width=400):
                note = gr.Markdown(elem_id="notice", **NO_LATEX)
                results = gr.Gallery(label="Results (rank · score)", columns=5, height=420, elem_id="results",
                                     object_fit="contain", allow_preview=True)
                with gr.Row():
                    with gr.Column(scale=3, min_width=300):
                        words = gr.Markdown(elem_id="pseudo-words", **NO_LATEX)
                        attention = gr.Gallery(label="What each pseudo word looks at (attention)", columns=4,
                                               height=180, allow_preview=False, elem_id="attention",
                                               object_fit="contain")
                        att_note = gr.Markdown(elem_id="attention-note", **NO_LATEX)
                    with gr.Column(scale=2, min_width=240):
                        timings = gr.Markdown(elem_id="timings")
        efficiency_panel(demo, service, method, backbone)
        upload_note, last_k = gr.State(""), gr.State(10)  # the animated-upload note; the K of the results shown

    inputs = [ref, modifier, method, backbone, k]
    outputs = [results, note, words, attention, att_note, timings, k, last_k]
    js = typed_k_js("topk", 4)
    for event in (search_btn.click, modifier.submit):
        event(run, [*inputs, upload_note, last_k], outputs, js=js, concurrency_id="query", **PRIVATE).then(
            None, k, None, js=shown_k_js("topk"), **PRIVATE)
    def uploaded(path):
        still, said = still_reference(path)
        return still, said, notices_markdown([said]) if said else gr.update()

    ref.upload(uploaded, ref, [ref, upload_note, note], **PRIVATE)
    ref.clear(lambda: "", None, upload_note, queue=False, **PRIVATE)
    ex_gallery.select(pick_example, None, [ref, modifier, upload_note], queue=False, **PRIVATE)
    return inputs


def efficiency_panel(demo: gr.Blocks, service: DemoService, method: gr.Dropdown, backbone: gr.Dropdown) -> None:
    """Accuracy against the query image encoder's cost, the chosen ISA backbone highlighted; the
    table beside it (method and backbone in one column, so that it fits beside the plot)."""
    @guarded(lambda message: (gr.update(value=None, visible=False), notice(message, warn=False),
                              gr.update(value=None, visible=False)))
    def show(method_choice, backbone_choice, cost):
        highlight = service.catalogue.highlighted_backbone(method_choice, backbone_choice)
        fig, table, note = service.inspector.efficiency(highlight, COSTS.get(cost, "gflops"))
        if table is not None:
            table = table.assign(method=[display_name(m, b) for m, b in zip(table["method"], table["backbone"])])
            table = table.drop(columns="backbone").rename(columns={"method": "method · backbone"})
        return (gr.update(value=fig, visible=fig is not None), note,
                gr.update(value=table, visible=table is not None))

    gr.Markdown("### Accuracy vs cost of the query models")
    with gr.Row():
        with gr.Column(scale=1, min_width=520):
            cost = gr.Radio(list(COSTS), value="GFLOPs", label="Cost axis", elem_id="cost")
            plot = gr.Plot(elem_id="efficiency-plot", show_label=False)
        with gr.Column(scale=1, min_width=520):
            note = gr.Markdown(elem_id="efficiency-note")
            table = gr.Dataframe(interactive=False, elem_id="efficiency-table", max_height=420)
    inputs, outputs = [method, backbone, cost], [plot, note, table]
    for comp in inputs:
        comp.change(show, inputs, outputs, **PRIVATE)
    demo.load(show, inputs, outputs, **PRIVATE)


def compare_tab(service: DemoService, choices: Choices, query: list) -> list:
    """One query through two method/backbone choices side by side, each panel labelled with its
    choice, each result captioned with its rank under the other, and a plot of how the top-K
    moved. Returns its inputs ``[image, modifier, method A, backbone A, method B, backbone B, k]``
    (for ``/compare``)."""

    def failed(message, k_shown=None):
        if k_shown is not None:  # a bad Top-K: nothing compared, the results shown and their K stay
            return (notice(message), *[gr.update()] * 5, k_shown, gr.update())
        return notice(message), [], "", [], "", gr.update(value=None, visible=False), gr.update(), gr.update()

    @guarded(failed)
    def compare(image, modifier, method_a, backbone_a, method_b, backbone_b, k, upload_note):
        ra, rb, summary = service.compare(image, modifier, (method_a, backbone_a), (method_b, backbone_b), k)
        ranks = service.cross_ranks(ra, rb)
        name_a, name_b = display_name(ra.method, ra.backbone), display_name(rb.method, rb.backbone)
        notes = notices_markdown(([upload_note] if upload_note else []) + sorted(set(ra.notices) | set(rb.notices)))
        hits = [[{"id": h.id, "name": h.name, "rank": h.rank, "other": o} for h, o in zip(r.hits, ranks[key])]
                for r, key in ((ra, "a_in_b"), (rb, "b_in_a"))]
        fig = rank_moves_figure(hits[0], hits[1], name_a, name_b, ranks["depth"])
        fig.update_layout(height=460, margin={"l": 60, "r": 20, "t": 60, "b": 20})
        depth = ranks["depth"]
        key = (f"Captions: rank · score · the image's rank under the other method (“B #4”; “B >{depth}”: not in "
               f"its first {depth:,}).")
        return (f"{md_escape(summary)}. {key}\n\n{notes}",
                gr.update(value=_result_items(ra, ranks["a_in_b"], "B", depth), label=f"A: {name_a} · top {k}"),
                timings_markdown(ra.timings_ms, ra.timing_note),
                gr.update(value=_result_items(rb, ranks["b_in_a"], "A", depth), label=f"B: {name_b} · top {k}"),
                timings_markdown(rb.timings_ms, rb.timing_note), gr.update(value=fig, visible=True), k, k)

    def run(image, modifier, method_a, backbone_a, method_b, backbone_b, k, upload_note, last_k):
        try:
            k = check_k(k)
        except InputError as e:
            return failed(str(e), last_k)
        return compare(image, modifier, method_a, backbone_a, method_b, backbone_b, k, upload_note)

    second = "sum" if choices.default_method != "sum" or "image-only" not in choices.methods else "image-only"
    backbone_b = choices.backbones[-1] if choices.backbones else None
    with gr.Tab("Compare", id="compare"):
        with gr.Row():
            with gr.Column(scale=2, min_width=320):
                ref = reference_input("Reference image", "c-reference", 220)
                modifier = gr.Textbox(label="Modifier", elem_id="c-modifier", placeholder="make the circle red")
                copy = gr.Button("Use the Compose tab's query", size="sm")
                with gr.Row():
                    m_a, b_a = choices.pair("A: method", "A: backbone (ISA)", method_id="c-method-a",
                                            backbone_id="c-backbone-a")
                with gr.Row():
                    m_b, b_b = choices.pair("B: method", "B: backbone (ISA)", method=second, backbone=backbone_b,
                                            method_id="c-method-b", backbone_id="c-backbone-b")
                k = top_k_slider("c-topk", MAX_K)
                go = gr.Button("Compare", variant="primary", elem_id="compare")
            with gr.Column(scale=4, min_width=400):
                note = gr.Markdown(elem_id="compare-note", **NO_LATEX)
                with gr.Row():
                    with gr.Column(min_width=300):
                        g_a = gr.Gallery(label=f"A: {choices.name(choices.default_method, choices.default_backbone)}",
                                         columns=3, height=380, object_fit="contain", elem_id="compare-a")
                        t_a = gr.Markdown()
                    with gr.Column(min_width=300):
                        g_b = gr.Gallery(label=f"B: {choices.name(second, backbone_b)}", columns=3, height=380,
                                         object_fit="contain", elem_id="compare-b")
                        t_b = gr.Markdown()
                moves = gr.Plot(elem_id="compare-moves", show_label=False, visible=False)
        upload_note, last_k = gr.State(""), gr.State(10)

    inputs = [ref, modifier, m_a, b_a, m_b, b_b, k]
    copy.click(lambda a, b: (a, b, ""), query[:2], [ref, modifier, upload_note], queue=False, **PRIVATE)
    ref.upload(still_reference, ref, [ref, upload_note], **PRIVATE)
    ref.clear(lambda: "", None, upload_note, queue=False, **PRIVATE)
    go.click(run, [*inputs, upload_note, last_k], [note, g_a, t_a, g_b, t_b, moves, k, last_k],
             js=typed_k_js("c-topk", 6), concurrency_id="query", **PRIVATE).then(
        None, k, None, js=shown_k_js("c-topk"), **PRIVATE)
    return inputs


def about_tab(service: DemoService) -> None:
    d = service.describe()
    with gr.Tab("About", id="about"):
        gr.Markdown(f"""
### What this demo runs
- **Gallery**: {d['gallery_size']:,} images ({service.gallery_label}), indexed with the frozen VL model's image
  tower (`{d['vl'].get('name')}`); search is a {d['gallery_engine']} search over the precomputed features.
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

    @guarded(api_error)
    def compose_json(image, modifier, method, backbone, k):
        return service.compose(image, modifier, method, backbone, k, explain=False).to_json()

    @guarded(api_error)
    def compare_json(image, modifier, method_a, backbone_a, method_b, backbone_b, k):
        ra, rb, summary = service.compare(image, modifier, (method_a, backbone_a), (method_b, backbone_b), k)
        return {"a": ra.to_json(), "b": rb.to_json(), "summary": summary, "ranks": service.cross_ranks(ra, rb)}

    # the endpoints read their inputs themselves (preprocess=False): the same components' preprocess,
    # in the event's thread, not one thread-pool hop per input (see widgets.preprocessed)
    def compose(*values):
        return compose_json(*preprocessed("compose", query, values))

    def compare(*values):
        return compare_json(*preprocessed("compare", compare_inputs, values))

    def variants() -> dict:
        """Methods, ISA backbones, the gallery and the VL model this app serves."""
        return service.describe()

    out = gr.JSON(visible=False)  # hidden API-only wiring
    compose_btn, compare_btn = gr.Button(visible=False), gr.Button(visible=False)
    compose_btn.click(compose, query, out, api_name="compose", concurrency_id="query", preprocess=False,
                      api_description="Composed query -> JSON: ids, names, scores, timings_ms, notices")
    compare_btn.click(compare, compare_inputs, out, api_name="compare", concurrency_id="query", preprocess=False,
                      api_description="Two methods on the same query -> JSON (and where each result ranks "
                                      "under the other: ranks.a_in_b, ranks.b_in_a)")
    gr.api(variants, api_name="variants")
