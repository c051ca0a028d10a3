"""The Failure cases tab: a method's per-query table of the world's test split, the inspector of one
query (reference, ground truth, top-K), and where each query's ground truth moved between two
methods (a plot; clicking a point opens that query in the inspector).

The inspector never shows a stale query: every change of method, backbone, filter or sort reloads
the table and either re-opens the inspected query under the new choice or clears the inspector,
and its heading always names the query and the method its detail belongs to.
"""
from __future__ import annotations

import gradio as gr
import pandas as pd

from ..bench.plots import rank_change_figure
from .compose import check_k
from .service import DemoService
from .viz import md_escape
from .widgets import NO_LATEX, PRIVATE, Choices, guarded, notice, top_k_slider

HEADERS = {"query_id": "query", "mod_type": "change", "modifier": "modifier", "rank": "GT rank",
           "subset_rank": "subset rank"}
WIDTHS = ["76px", "130px", "260px", "80px", "90px"]  # in pixels: a narrow page scrolls the table, never squeezes it
SHOWN_K = 10  # the per-query tables keep each query's top 10

# Clicking a point of the rank-change plot: its query id becomes this component's value and the
# 'pick' event runs (gr.HTML's js_on_load); the plot is redrawn on every change, so bind each new one.
PICK_JS = """
const bind = () => document.querySelectorAll('#rank-delta .js-plotly-plot').forEach(gd => {
  if (gd.__isaPick || typeof gd.on !== 'function') return;
  gd.__isaPick = true;
  gd.on('plotly_click', ev => {
    const p = ev && ev.points && ev.points[0];
    if (!p || p.customdata == null) return;
    props.value = String(Array.isArray(p.customdata) ? p.customdata[0] : p.customdata);
    trigger('pick');
    const d = document.querySelector('#failure-detail');
    if (d) d.scrollIntoView({behavior: 'smooth', block: 'start'});
  });
});
new MutationObserver(bind).observe(document.body, {childList: true, subtree: true});
bind();
"""

NOTHING = "_Click a row of the table (or a point of the rank-change plot below) to inspect a query._"


def failures_tab(demo: gr.Blocks, service: DemoService, choices: Choices) -> None:
    """The failure-case inspector and the rank-change plot (see the module doc)."""
    inspector = service.inspector

    def cleared(text: str):
        return text, None, [], []

    def detail(full, qid, k, method, backbone, method_2, backbone_2):
        """The inspector's four outputs for query ``qid`` of ``full`` (method 1's table)."""
        name = choices.name(method, backbone)
        if full is None or qid is None:
            return cleared(NOTHING)
        rows = full[full["query_id"].astype(str) == str(qid)]
        if rows.empty:
            return cleared(f"_Query {md_escape(qid)} is not among the queries shown for {md_escape(name)}; "
                           "click a row to inspect one._")
        k = check_k(k, SHOWN_K)
        d = inspector.failure_detail(rows.iloc[0].to_dict(), k)
        rank = (f"ground truth first ranked **{d['rank']:,}** of {len(service.gallery):,}" if d["rank"] else
                "no ground truth in the ranking")
        other = _rank_under(method_2, backbone_2, qid, (method, backbone))
        md = (f"**Query {md_escape(d['query_id'])}** under **{md_escape(name)}** · "
              f"{md_escape(_family(d['mod_type']))}  \n“{md_escape(d['modifier'])}”  \n{rank}"
              f"{other} · reference {md_escape(d['reference_name'])}")
        gts = [(t["path"], t["name"]) for t in d["targets"] if t["path"]]
        top = [(t["path"], f"{'✓ ground truth · ' if t['is_gt'] else ''}#{t['rank']} · {t['score']:.3f}")
               for t in d["top"] if t["path"]]
        return md, d["reference"], gts, top

    def _rank_under(method_2, backbone_2, qid, first) -> str:
        if not method_2 or choices.name(method_2, backbone_2) == choices.name(*first):
            return ""
        try:
            table = inspector.per_query(method_2, backbone_2)
        except Exception:
            return ""
        rank = table.loc[table["query_id"].astype(str) == str(qid), "rank"]
        if rank.empty or pd.isna(rank.iloc[0]):
            return ""
        return f" ({int(rank.iloc[0]):,} under {md_escape(choices.name(method_2, backbone_2))})"

    def failed(message):
        return (notice(message, warn=False), gr.update(value=None), None,
                *cleared("_Nothing to inspect for this choice: see the message above._"))

    @guarded(failed)
    def load(method, backbone, mod_type, order, selected, k, method_2, backbone_2):
        shown, full = inspector.failure_table(method, backbone, mod_type, order)
        ranked = shown["rank"].notna().sum() if "rank" in shown else 0
        note = (f"**{md_escape(choices.name(method, backbone))}**: {len(shown):,} queries ({md_escape(mod_type)}), "
                f"{order}; ground truth ranked for {ranked:,}. Click a row to inspect it.")
        view = shown.rename(columns=HEADERS)
        if "change" in view:
            view["change"] = view["change"].map(_family)
        return (note, view, full, *show(full, selected, k, method, backbone, method_2, backbone_2))

    def inspect(full, k, method, backbone, method_2, backbone_2, evt: gr.SelectData):
        qid = None
        if evt.row_value:
            qid = evt.row_value[0]
        elif isinstance(evt.index, (list, tuple)) and evt.index and full is not None:
            qid = full.iloc[int(evt.index[0])]["query_id"]
        return (qid, *show(full, qid, k, method, backbone, method_2, backbone_2))

    @guarded(lambda message: cleared(notice(message, warn=False)))  # a bad Top-K: said in the inspector itself
    def show(full, qid, k, method, backbone, method_2, backbone_2):
        return detail(full, qid, k, method, backbone, method_2, backbone_2)

    def pick(qid, full, k, method, backbone, method_2, backbone_2):
        qid = str(qid or "").strip() or None
        return (qid, *show(full, qid, k, method, backbone, method_2, backbone_2))

    @guarded(lambda message: (gr.update(value=None, visible=False), notice(message, warn=False)))
    def rank_change(method, backbone, method_2, backbone_2, mod_type):
        name_1, name_2 = choices.name(method, backbone), choices.name(method_2, backbone_2)
        pairs = inspector.rank_pairs((method, backbone), (method_2, backbone_2), mod_type)
        both = pairs.dropna(subset=["rank_1", "rank_2"])
        better, worse = int((both["rank_2"] < both["rank_1"]).sum()), int((both["rank_2"] > both["rank_1"]).sum())
        left_out = len(pairs) - len(both)
        note = (f"{len(both):,} queries ({md_escape(mod_type)}): the ground truth ranks higher under "
                f"**{md_escape(name_2)}** for {better:,}, under **{md_escape(name_1)}** for {worse:,}, the same for "
                f"{len(both) - better - worse:,}" + (f"; {left_out:,} without a ranked ground truth left out" if
                                                     left_out else "") + ". Click a point to inspect that query.")
        fig = rank_change_figure(pairs, name_1, name_2)
        fig.update_layout(height=520, margin={"l": 60, "r": 20, "t": 60, "b": 20})
        return gr.update(value=fig, visible=True), note

    second = "sum" if choices.default_method != "sum" and "sum" in choices.methods else choices.methods[0]
    with gr.Tab("Failure cases", id="failures"):
        gr.Markdown("Every query of the world's test split as the chosen method ranked it (from the per-query "
                    "results tables). Worst first: sorted by the rank of the first ground truth. Click a row for "
                    "the reference, the ground truth and the top-K.")
        with gr.Row():
            method, backbone = choices.pair("Method", "Backbone (ISA)", method_id="f-method", backbone_id="f-backbone")
            mod_type = gr.Dropdown(inspector.mod_types(), value="all", label="Modification type", elem_id="f-type",
                                   min_width=160)
            order = gr.Radio(["worst first", "best first"], value="worst first", label="Sort by rank",
                             elem_id="f-order", min_width=200)
            k = top_k_slider("f-topk", SHOWN_K, label="Top-K shown")
        note = gr.Markdown(elem_id="failure-note", **NO_LATEX)
        state, selected = gr.State(None), gr.State(None)
        with gr.Row():
            with gr.Column(scale=5, min_width=560):
                table = gr.Dataframe(interactive=False, max_height=560, elem_id="failure-table", wrap=True,
                                     column_widths=WIDTHS)
            with gr.Column(scale=4, min_width=420):
                info = gr.Markdown(NOTHING, elem_id="failure-detail", **NO_LATEX)
                with gr.Row():
                    ref = gr.Image(label="Reference", interactive=False, height=180, elem_id="inspector-ref")
                    gts = gr.Gallery(label="Ground truth", columns=3, height=180, allow_preview=False,
                                     object_fit="contain", elem_id="inspector-gt")
                top = gr.Gallery(label="Top-K (✓ = ground truth)", columns=5, height=300, elem_id="inspector-top",
                                 object_fit="contain")
        gr.Markdown("### Where the ground truth moved between two methods\nEach point is one query: its ground "
                    "truth's rank under the method above (x) and under the method chosen here (y); below the "
                    "diagonal the second method ranks it higher.")
        with gr.Row():
            method_2, backbone_2 = choices.pair("Second method", "Its backbone (ISA)", method=second,
                                                method_id="f-method-2", backbone_id="f-backbone-2")
        delta_note = gr.Markdown(elem_id="rank-delta-note", **NO_LATEX)
        delta = gr.Plot(elem_id="rank-delta", show_label=False)
        bridge = gr.HTML("", html_template="", js_on_load=PICK_JS, elem_id="rank-delta-pick", visible="hidden")

    shown = [info, ref, gts, top]
    filters = [method, backbone, mod_type, order]
    load_in = [*filters, selected, k, method_2, backbone_2]
    for comp in filters:
        comp.change(load, load_in, [note, table, state, *shown], **PRIVATE)
    demo.load(load, load_in, [note, table, state, *shown], **PRIVATE)
    table.select(inspect, [state, k, method, backbone, method_2, backbone_2], [selected, *shown], **PRIVATE)
    k.change(show, [state, selected, k, method, backbone, method_2, backbone_2], shown, trigger_mode="always_last",
             **PRIVATE)
    bridge.pick(pick, [bridge, state, k, method, backbone, method_2, backbone_2], [selected, *shown], **PRIVATE)
    delta_in = [method, backbone, method_2, backbone_2, mod_type]
    for comp in delta_in:
        comp.change(rank_change, delta_in, [delta, delta_note], **PRIVATE)
    for comp in (method_2, backbone_2):  # the inspected query's rank under the second method
        comp.change(show, [state, selected, k, method, backbone, method_2, backbone_2], shown, **PRIVATE)
    demo.load(rank_change, delta_in, [delta, delta_note], **PRIVATE)


def _family(mod_type) -> str:
    """``pair:remove+colour`` -> ``pair: remove + colour`` (wraps between words, not inside them)."""
    return str(mod_type).replace(":", ": ").replace("+", " + ")
