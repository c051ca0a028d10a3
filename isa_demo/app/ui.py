"""The Gradio layout: tabs, components and event wiring around a :class:`DemoService`.

Every handler turns :class:`InputError` into a visible notice (``gr.Warning`` toast plus a
persistent note next to the results) and any unexpected exception into a one-line message
(the traceback goes to the server log only). Named API endpoints: ``/compose`` and
``/compare`` (JSON: ids, names, scores, timings, notices) and ``/variants``.
"""
from __future__ import annotations

import logging
import os
import traceback

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # an offline demo: no phoning home

import gradio as gr  # noqa: E402

from .service import MAX_K, DemoService, InputError  # noqa: E402
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


def _fail(exc: BaseException) -> str:
    """The user-facing text of an exception (and a server-side log for unexpected ones)."""
    if isinstance(exc, InputError):
        return str(exc)
    log.error("unexpected error in the demo:\n%s", traceback.format_exc())
    return f"something went wrong on the server ({type(exc).__name__}); the query was not run"


def _notice(message: str, warn: bool = True) -> str:
    if warn:
        gr.Warning(message)
    return f"> ⚠️ **{message}**"


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


def build_ui(service: DemoService, title: str = TITLE) -> gr.Blocks:
    methods = service.method_choices()
    default_method = service.default_method()
    backbones = service.all_backbones()
    default_backbone = service.default_backbone()
    examples = service.example_queries(12)
    mod_types = service.mod_types()

    def backbone_update(method):
        return gr.update(interactive=bool(backbones) and method == "isa")

    # ------------------------------------------------------------------ handlers
    def run_compose(image, modifier, method, backbone, k):
        try:
            r = service.compose(image, modifier, method, backbone, k)
        except Exception as e:  # noqa: BLE001 - every failure becomes a message
            return [], _notice(_fail(e)), "", [], ""
        words, overlays = _explain_outputs(r)
        name = f"{r.method} · {r.backbone}" if r.backbone else r.method
        head = f"**{name}**: top {len(r.hits)} of {len(service.gallery):,}"
        note = "\n\n".join(x for x in (head, notices_markdown(r.notices)) if x)
        return _result_items(r), note, words, overlays, timings_markdown(r.timings_ms, r.timing_note)

    def run_compare(image, modifier, method_a, backbone_a, method_b, backbone_b, k):
        try:
            ra, rb, summary = service.compare(image, modifier, (method_a, backbone_a), (method_b, backbone_b), k)
        except Exception as e:  # noqa: BLE001
            return _notice(_fail(e)), [], "", [], ""
        notes = notices_markdown(sorted(set(ra.notices) | set(rb.notices)))
        return (f"{summary}\n\n{notes}", _result_items(ra), timings_markdown(ra.timings_ms, ra.timing_note),
                _result_items(rb), timings_markdown(rb.timings_ms, rb.timing_note))

    def run_efficiency(method, backbone, cost):
        try:
            fig, table, note = service.efficiency(backbone if method == "isa" else None, COSTS.get(cost, "gflops"))
        except Exception as e:  # noqa: BLE001
            fig, table, note = None, None, _notice(_fail(e), warn=False)
        return (gr.update(value=fig, visible=fig is not None), note,
                gr.update(value=table, visible=table is not None))

    def pick_example(evt: gr.SelectData):
        ex = examples[evt.index] if isinstance(evt.index, int) and evt.index < len(examples) else None
        if ex is None:
            return gr.update(), gr.update()
        return ex["image"], ex["modifier"]

    def load_failures(method, backbone, mod_type, order):
        try:
            shown, full = service.failure_table(method, backbone, mod_type, order)
        except Exception as e:  # noqa: BLE001
            return _notice(_fail(e), warn=False), gr.update(value=None), None
        ranked = shown["rank"].notna().sum() if "rank" in shown else 0
        note = (f"{len(shown)} queries ({mod_type}); ground truth ranked for {ranked}. "
                f"Click a row to inspect it.")
        return note, shown, full

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
        d = service.failure_detail(rows.iloc[0].to_dict(), int(k))
        rank = f"rank of the first ground truth: **{d['rank']}**" if d["rank"] else "no ground truth in the ranking"
        md = (f"**Query {d['query_id']}** ({d['mod_type']}): “{d['modifier']}”  \n{rank}; reference "
              f"`{d['reference_name']}`")
        gts = [(t["path"], t["name"]) for t in d["targets"] if t["path"]]
        top = [(t["path"], f"#{t['rank']} · {t['score']:.3f}{' · ✓ ground truth' if t['is_gt'] else ''}")
               for t in d["top"] if t["path"]]
        return md, d["reference"], gts, top

    def api_compose(image, modifier, method, backbone, k):
        try:
            return service.compose(image, modifier, method, backbone, k, explain=False).to_json()
        except Exception as e:  # noqa: BLE001
            raise gr.Error(_fail(e), print_exception=False) from None

    def api_compare(image, modifier, method_a, backbone_a, method_b, backbone_b, k):
        try:
            ra, rb, summary = service.compare(image, modifier, (method_a, backbone_a), (method_b, backbone_b), k)
        except Exception as e:  # noqa: BLE001
            raise gr.Error(_fail(e), print_exception=False) from None
        return {"a": ra.to_json(), "b": rb.to_json(), "summary": summary}

    # ------------------------------------------------------------------ layout
    info = service.describe()
    with gr.Blocks(title=title, analytics_enabled=False) as demo:
        gr.Markdown(
            f"## {title}\nA small query model turns the reference image into a *pseudo sentence*; the frozen "
            f"vision-language model reads “a photo of S that *modifier*” and the gallery "
            f"({info['gallery_size']:,} images: {service.gallery_label}) is searched with its image features. "
            f"VL model: `{info['vl'].get('name')}`.")
        if service.unavailable:
            gr.Markdown("Not available with this VL model: " + "; ".join(
                f"{k.rstrip('|').replace('|', ' ')} ({v})" for k, v in service.unavailable.items()))
        with gr.Tabs():
            # ---------------------------------------------------------- compose
            with gr.Tab("Compose", id="compose"):
                with gr.Row():
                    with gr.Column(scale=2, min_width=320):
                        ref = ReferenceImage(label="Reference image (upload or paste)", type="filepath",
                                             image_mode=None, sources=["upload", "clipboard"], height=240,
                                             elem_id="reference")
                        ex_gallery = gr.Gallery(value=[(e["image"], e["mod_type"]) for e in examples],
                                                label="Example references: click one to use it", columns=6,
                                                height=150, allow_preview=False, elem_id="examples",
                                                visible=bool(examples), object_fit="contain")
                        modifier = gr.Textbox(label="Modifier: what should change", elem_id="modifier",
                                              placeholder="make the circle red", lines=1, max_lines=4)
                        gr.Examples([[m] for m in EXAMPLE_MODIFIERS], inputs=[modifier], label="Example modifiers")
                        with gr.Row():
                            method = gr.Dropdown(methods, value=default_method, label="Method", elem_id="method")
                            backbone = gr.Dropdown(backbones, value=default_backbone, label="Light backbone (ISA)",
                                                   interactive=default_method == "isa" and bool(backbones),
                                                   elem_id="backbone")
                        k = gr.Slider(1, MAX_K, value=10, step=1, label="Top-K", elem_id="topk")
                        run = gr.Button("Search", variant="primary", elem_id="search")
                    with gr.Column(scale=3, min_width=400):
                        notice = gr.Markdown(elem_id="notice")
                        results = gr.Gallery(label="Results (rank · score)", columns=5, height=420,
                                             elem_id="results", object_fit="contain", allow_preview=True)
                        with gr.Row():
                            with gr.Column(scale=3):
                                words = gr.Markdown(elem_id="pseudo-words")
                                attention = gr.Gallery(label="What each pseudo word looks at (attention)",
                                                       columns=4, height=180, allow_preview=False,
                                                       elem_id="attention", object_fit="contain")
                            with gr.Column(scale=2):
                                timings = gr.Markdown(elem_id="timings")
                gr.Markdown("### Accuracy vs cost of the query models")
                with gr.Row():
                    with gr.Column(scale=1):
                        cost = gr.Radio(list(COSTS), value="GFLOPs", label="Cost axis", elem_id="cost")
                        plot = gr.Plot(elem_id="efficiency-plot", show_label=False)
                    with gr.Column(scale=1):
                        eff_note = gr.Markdown(elem_id="efficiency-note")
                        eff_table = gr.Dataframe(interactive=False, elem_id="efficiency-table", max_height=380)

            # ---------------------------------------------------------- compare
            with gr.Tab("Compare", id="compare"):
                with gr.Row():
                    with gr.Column(scale=2, min_width=320):
                        c_ref = ReferenceImage(label="Reference image", type="filepath", image_mode=None,
                                               sources=["upload", "clipboard"], height=220, elem_id="c-reference")
                        c_mod = gr.Textbox(label="Modifier", elem_id="c-modifier", placeholder="make the circle red")
                        copy = gr.Button("Use the Compose tab's query", size="sm")
                        with gr.Row():
                            m_a = gr.Dropdown(methods, value=default_method, label="A: method")
                            b_a = gr.Dropdown(backbones, value=default_backbone, label="A: backbone (ISA)",
                                              interactive=default_method == "isa" and bool(backbones))
                        second = "sum" if default_method != "sum" or "image-only" not in methods else "image-only"
                        with gr.Row():
                            m_b = gr.Dropdown(methods, value=second, label="B: method")
                            b_b = gr.Dropdown(backbones, value=(backbones[-1] if backbones else None),
                                              label="B: backbone (ISA)",
                                              interactive=second == "isa" and bool(backbones))
                        c_k = gr.Slider(1, MAX_K, value=10, step=1, label="Top-K")
                        c_run = gr.Button("Compare", variant="primary", elem_id="compare")
                    with gr.Column(scale=4):
                        c_note = gr.Markdown()
                        with gr.Row():
                            with gr.Column():
                                g_a = gr.Gallery(label="A", columns=3, height=380, object_fit="contain",
                                                 elem_id="compare-a")
                                t_a = gr.Markdown()
                            with gr.Column():
                                g_b = gr.Gallery(label="B", columns=3, height=380, object_fit="contain",
                                                 elem_id="compare-b")
                                t_b = gr.Markdown()

            # ---------------------------------------------------------- failure cases
            with gr.Tab("Failure cases", id="failures"):
                gr.Markdown("Every query of the world's test split as the method ranked it "
                            "(`assets/results/per_query/`). Worst first: sorted by the rank of the first ground "
                            "truth. Click a row for the reference, the ground truth and the top-K.")
                with gr.Row():
                    f_method = gr.Dropdown(methods, value=default_method, label="Method", elem_id="f-method")
                    f_backbone = gr.Dropdown(backbones, value=default_backbone, label="Backbone (ISA)",
                                             interactive=default_method == "isa" and bool(backbones))
                    f_type = gr.Dropdown(mod_types, value="all", label="Modification type")
                    f_order = gr.Radio(["worst first", "best first"], value="worst first", label="Sort by rank")
                    f_k = gr.Slider(1, 10, value=10, step=1, label="Top-K shown")
                f_note = gr.Markdown()
                f_state = gr.State(None)
                with gr.Row():
                    with gr.Column(scale=4):
                        f_table = gr.Dataframe(interactive=False, max_height=560, elem_id="failure-table", wrap=True,
                                               column_widths=["9%", "21%", "48%", "11%", "11%"])
                    with gr.Column(scale=4):
                        f_detail = gr.Markdown()
                        with gr.Row():
                            f_ref = gr.Image(label="Reference", interactive=False, height=180)
                            f_gt = gr.Gallery(label="Ground truth", columns=3, height=180, allow_preview=False)
                        f_top = gr.Gallery(label="Top-K (✓ = ground truth)", columns=5, height=300,
                                           elem_id="inspector-top", object_fit="contain")

            # ---------------------------------------------------------- about
            with gr.Tab("About", id="about"):
                gr.Markdown(_about(service))

        # hidden API-only wiring (named endpoints for gradio_client)
        api_out = gr.JSON(visible=False)
        api_btn = gr.Button(visible=False)
        api_btn2 = gr.Button(visible=False)

        # ------------------------------------------------------------------ events
        outs = [results, notice, words, attention, timings]
        ins = [ref, modifier, method, backbone, k]
        run.click(run_compose, ins, outs, api_visibility="private", concurrency_id="query")
        modifier.submit(run_compose, ins, outs, api_visibility="private", concurrency_id="query")
        ex_gallery.select(pick_example, None, [ref, modifier], api_visibility="private", queue=False)
        method.change(backbone_update, method, backbone, api_visibility="private", queue=False)
        eff_ins = [method, backbone, cost]
        for comp in (method, backbone, cost):
            comp.change(run_efficiency, eff_ins, [plot, eff_note, eff_table], api_visibility="private")
        demo.load(run_efficiency, eff_ins, [plot, eff_note, eff_table], api_visibility="private")

        m_a.change(backbone_update, m_a, b_a, api_visibility="private", queue=False)
        m_b.change(backbone_update, m_b, b_b, api_visibility="private", queue=False)
        copy.click(lambda a, b: (a, b), [ref, modifier], [c_ref, c_mod], api_visibility="private", queue=False)
        c_run.click(run_compare, [c_ref, c_mod, m_a, b_a, m_b, b_b, c_k], [c_note, g_a, t_a, g_b, t_b],
                    api_visibility="private", concurrency_id="query")

        f_method.change(backbone_update, f_method, f_backbone, api_visibility="private", queue=False)
        f_ins = [f_method, f_backbone, f_type, f_order]
        for comp in f_ins:
            comp.change(load_failures, f_ins, [f_note, f_table, f_state], api_visibility="private")
        demo.load(load_failures, f_ins, [f_note, f_table, f_state], api_visibility="private")
        f_table.select(inspect, [f_state, f_k], [f_detail, f_ref, f_gt, f_top], api_visibility="private")

        api_btn.click(api_compose, ins, api_out, api_name="compose", concurrency_id="query",
                      api_description="Composed query -> JSON: ids, names, scores, timings_ms, notices")
        api_btn2.click(api_compare, [c_ref, c_mod, m_a, b_a, m_b, b_b, c_k], api_out, api_name="compare",
                       concurrency_id="query", api_description="Two methods on the same query -> JSON")

        def variants() -> dict:
            """Methods, ISA backbones, the gallery and the VL model this app serves."""
            return service.describe()

        gr.api(variants, api_name="variants")
    return demo


def _about(service: DemoService) -> str:
    d = service.describe()
    return f"""
### What this demo runs
- **Gallery**: {d['gallery_size']:,} images ({service.gallery_label}), indexed with the frozen VL model's image
  tower (`{d['vl'].get('name')}`); search is a faiss inner-product search over the precomputed features.
- **Methods**: {', '.join(d['methods'])}. ISA backbones: {', '.join(d['backbones']) or 'none shipped yet'}.
- **Timings** are wall-clock for this very query on the server: image decode; query image encoder and text encoder
  timed separately for methods that expose both stages (ISA: backbone + token learner, then the text tower on
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
"""
