"""Accuracy-versus-cost figures (plotly) from ``accuracy.csv`` and ``efficiency.csv``, and the
rank-change figures (two methods on the per-query tables; two methods on one query).

The app imports the same functions. ``efficiency.csv`` columns: ``model, method, backbone,
setting ('world' | 'real-224'), stage, params, gflops, cpu_ms_p50, gpu_ms_p50, peak_mem_mb``;
accuracy rows join its ``setting == 'world'``, ``stage == 'query_image_encoder'`` rows on
``method`` + ``backbone`` (an empty backbone matches an empty backbone). Methods whose query
image encoder is the VL image tower itself (the image-using baselines, the masked-pair and
single-token methods) take the ``vl-image-tower`` row when they have none of their own; text-only
has no query image encoder and is left out of the cost axes.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

from ..evaluation.results import ACCURACY_CSV, ResultsMissing, load_accuracy, load_efficiency
from ..evaluation.runner import ORACLE
from ..settings import RESULTS_DIR

COST_AXES = {"gflops": "query image encoder GFLOPs (log scale)",
             "cpu_ms_p50": "query image encoder CPU latency, median ms (log scale)"}
COST_NAMES = {"gflops": "GFLOPs", "cpu_ms_p50": "CPU latency"}
COST_UNITS = {"gflops": "GFLOPs", "cpu_ms_p50": "ms"}


IMAGE_TOWER = "vl-image-tower"
IMAGE_TOWER_METHODS = ("image-only", "sum", "masked-ti", "single-token")
# one colour per point (a legend entry names it: no text on the plot, so no label can hide another)
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
           "#7f7f7f", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#e6550d")
SYMBOLS = {"isa": "circle", "isa-symmetric": "square", "single-token": "triangle-up", "image-only": "x",
           "text-only": "x", "sum": "cross"}


def _key(df: pd.DataFrame) -> pd.Series:
    return df["method"].astype(str) + "|" + df["backbone"].fillna("").astype(str)


def join_accuracy_efficiency(acc: pd.DataFrame, eff: pd.DataFrame, setting: str = "world",
                             stage: str = "query_image_encoder") -> pd.DataFrame:
    """Accuracy rows with their cost columns (rows without an efficiency match are dropped)."""
    need = {"method", "backbone", "setting", "stage"}
    if need - set(eff.columns):
        raise ValueError(f"efficiency table lacks columns {sorted(need - set(eff.columns))}")
    cost = eff[(eff["setting"] == setting) & (eff["stage"] == stage)].copy()
    cost["_key"] = _key(cost)
    cost = cost.drop_duplicates("_key").drop(columns=["method", "backbone", "setting", "stage"])
    acc = acc.copy()
    acc["_key"] = _key(acc)
    tower = acc["method"].isin(IMAGE_TOWER_METHODS) & ~acc["_key"].isin(cost["_key"])
    acc.loc[tower, "_key"] = f"{IMAGE_TOWER}|"
    return acc.merge(cost, on="_key", how="inner").drop(columns="_key")


def _label(row) -> str:
    backbone = row["backbone"]
    return f"{row['method']}:{backbone}" if isinstance(backbone, str) and backbone else row["method"]


def display_name(method: str, backbone: str | None = None) -> str:
    """How a method/backbone pair is named on the page: ``isa · resnet18``, ``sum``."""
    return f"{method} · {backbone}" if isinstance(backbone, str) and backbone else str(method)


def _symbol(method: str) -> str:
    return SYMBOLS.get(method, "diamond" if str(method).startswith("masked") else "circle")


def accuracy_vs_cost(joined: pd.DataFrame, cost: str = "gflops", metric: str = "R@1", highlight: str | None = None,
                     ceiling: float | None = None, title: str | None = None) -> go.Figure:
    """Scatter of ``metric`` against ``cost`` (log x), one point per method/backbone.

    Points carry no text on the plot: each is a legend entry (name and value, best first) and a
    hover label, so no label ever covers another. ``highlight``: a backbone drawn as a larger
    star. ``ceiling``: the caption oracle's value, a dashed line; when it is far above every method
    (it would squeeze them into the bottom of the plot) the y axis is fitted to the methods and the
    line is left above it, its value written at the top of the plot instead.
    """
    if cost not in joined:
        raise ValueError(f"no {cost!r} column; choose one of {list(COST_AXES)}")
    if metric not in joined:
        raise ValueError(f"no {metric!r} column in the accuracy table")
    df = joined[(joined[cost] > 0) & joined[metric].notna()].copy()
    dropped = len(joined) - len(df)
    df["label"] = df.apply(_label, axis=1)
    df["hl"] = df["backbone"].fillna("").astype(str) == (highlight or "\0")
    df = df.sort_values(metric, ascending=False, kind="stable")
    unit = COST_UNITS.get(cost, cost)
    fig = go.Figure()
    for i, (_, r) in enumerate(df.iterrows()):
        is_hl = bool(r["hl"])
        name = f"{display_name(r['method'], r['backbone'])}: {float(r[metric]):.1f}"
        fig.add_trace(go.Scatter(
            x=[r[cost]], y=[r[metric]], mode="markers", text=[r["label"]],
            name=f"{name}<br>(highlighted)" if is_hl else name,
            marker={"size": 18 if is_hl else 11, "color": "crimson" if is_hl else PALETTE[i % len(PALETTE)],
                    "line": {"width": 1, "color": "black"}, "symbol": "star" if is_hl else _symbol(r["method"])},
            hovertemplate=f"%{{text}}<br>{COST_NAMES.get(cost, cost)}: %{{x:.3g}} {unit}<br>{metric}: "
                          "%{y:.2f}%<extra></extra>"))
    top = float(df[metric].max()) if len(df) else 1.0
    if ceiling is not None and pd.notna(ceiling):
        ceiling = float(ceiling)
        fig.add_hline(y=ceiling, line_dash="dash", line_color="grey")
        if ceiling > 1.5 * top:  # off the methods' scale: say its value instead of squeezing them
            fig.update_yaxes(range=[0, top * 1.15])
            fig.add_annotation(text=f"↑ caption oracle: {ceiling:.1f} (above this scale)",
                               xref="paper", yref="paper", x=0, y=1, xanchor="left", yanchor="bottom",
                               showarrow=False, font={"color": "dimgrey", "size": 12})
        else:
            fig.update_yaxes(range=[0, max(ceiling, top) * 1.12])
            fig.add_annotation(text=f"caption oracle: {ceiling:.1f}", xref="paper", x=0, y=ceiling,
                               xanchor="left", yanchor="bottom", showarrow=False, font={"color": "dimgrey"})
    elif len(df):
        fig.update_yaxes(range=[0, top * 1.15])
    subtitle = f" ({dropped} rows without a measured {COST_NAMES.get(cost, cost)} left out)" if dropped else ""
    fig.update_layout(title=(title or f"{metric} vs {COST_NAMES.get(cost, cost)} (world test)") + subtitle,
                      template="plotly_white", xaxis_title=COST_AXES.get(cost, cost), yaxis_title=f"{metric} (%)",
                      showlegend=True, legend_title_text=f"method · backbone: {metric}", legend_title_side="top")
    fig.update_xaxes(type="log", dtick="D2")  # minor labels at 2 and 5 only: they never touch
    return fig


def _ceiling(acc: pd.DataFrame, metric: str) -> float | None:
    rows = acc[acc["method"] == ORACLE]
    return float(rows[metric].iloc[0]) if len(rows) and metric in rows else None


def accuracy_figures(results: str | os.PathLike = RESULTS_DIR, metric: str = "R@1",
                     highlight: str | None = None) -> dict[str, go.Figure]:
    """Both figures (``'gflops'``, ``'cpu_ms_p50'``) from the tables under ``results``."""
    acc, eff = load_accuracy(results), load_efficiency(results)
    joined = join_accuracy_efficiency(acc, eff)
    if joined.empty:
        raise ResultsMissing(f"no accuracy row of {Path(results) / ACCURACY_CSV} matches an efficiency row "
                             "(setting 'world', stage 'query_image_encoder', same method and backbone)")
    ceiling = _ceiling(acc, metric)
    return {cost: accuracy_vs_cost(joined, cost, metric, highlight, ceiling) for cost in COST_AXES}


# ----------------------------------------------------------------------------- rank changes
def rank_change_figure(pairs: pd.DataFrame, name_1: str, name_2: str) -> go.Figure:
    """Each query's ground-truth rank under method 1 (x) against method 2 (y), log-log, with the
    diagonal: below it method 2 ranks the ground truth higher. ``pairs``: ``query_id, mod_type,
    modifier, rank_1, rank_2`` (ranks 1-based). Every point carries its query id as
    ``customdata[0]`` (the app opens that query when it is clicked); no text on the plot."""
    import html

    df = pairs.dropna(subset=["rank_1", "rank_2"])
    fig = go.Figure()
    hi = float(max(df["rank_1"].max(), df["rank_2"].max())) if len(df) else 10.0
    fig.add_trace(go.Scatter(x=[1, hi], y=[1, hi], mode="lines", line={"dash": "dot", "color": "grey", "width": 1},
                             name="diagonal: same rank", hoverinfo="skip"))
    groups = (("better", df["rank_2"] < df["rank_1"], "#2ca02c", f"higher under<br>{name_2}"),
              ("worse", df["rank_2"] > df["rank_1"], "#d62728", f"higher under<br>{name_1}"),
              ("same", df["rank_2"] == df["rank_1"], "#7f7f7f", "same rank"))
    for _, mask, colour, label in groups:
        part = df[mask]
        custom = [[str(q), html.escape(str(t)), html.escape(str(m))[:90]]
                  for q, t, m in zip(part["query_id"], part["mod_type"], part["modifier"])]
        fig.add_trace(go.Scatter(
            x=part["rank_1"], y=part["rank_2"], mode="markers", name=f"{label} ({len(part):,})", customdata=custom,
            marker={"size": 7, "color": colour, "opacity": 0.65, "line": {"width": 0}},
            hovertemplate=(f"query %{{customdata[0]}} (%{{customdata[1]}})<br>%{{customdata[2]}}<br>"
                           f"rank under {html.escape(name_1)}: %{{x}}<br>rank under {html.escape(name_2)}: %{{y}}"
                           "<br>click to inspect<extra></extra>")))
    span = [-0.1, math.log10(hi * 1.3)]  # ranks 1 .. the largest, in log10 units; labels at powers of ten only
    fig.update_xaxes(type="log", dtick=1, range=span, title_text=f"rank under {name_1}")
    fig.update_yaxes(type="log", dtick=1, range=span, title_text=f"rank under {name_2}")
    fig.update_layout(title="Ground-truth rank per query (1 = best)", template="plotly_white",
                      legend={"orientation": "h", "yanchor": "top", "y": -0.22, "x": 0}, clickmode="event",
                      hovermode="closest")
    return fig


def rank_moves_figure(a_hits: list[dict], b_hits: list[dict], name_a: str, name_b: str, depth: int) -> go.Figure:
    """How one query's top-K moved from method A to method B: one line per image of either top-K,
    from its rank under A (left) to its rank under B (right), rank 1 at the top (log scale).
    ``a_hits`` / ``b_hits``: per result ``{"id", "name", "rank", "other"}`` (``other``: its rank
    under the other method, None when below that method's first ``depth``: drawn on the bottom
    row, "> depth")."""
    import html

    beyond = depth * 2
    items: dict = {}
    for h in a_hits:
        items[h["id"]] = {"name": h["name"], "a": h["rank"], "b": h["other"]}
    for h in b_hits:
        items.setdefault(h["id"], {"name": h["name"], "a": h["other"], "b": None})["b"] = h["rank"]
    k_a, k_b = len(a_hits), len(b_hits)
    styles = {"both": ("#1f77b4", "in both top-K"), "a": ("#ff7f0e", "only in A's top-K"),
              "b": ("#9467bd", "only in B's top-K")}
    fig = go.Figure()
    shown = set()
    for item in items.values():
        ra, rb = item["a"], item["b"]
        in_a, in_b = ra is not None and ra <= k_a, rb is not None and rb <= k_b
        kind = "both" if in_a and in_b else ("a" if in_a else "b")
        colour, label = styles[kind]
        fig.add_trace(go.Scatter(
            x=[0, 1], y=[ra or beyond, rb or beyond], mode="lines+markers", line={"color": colour, "width": 1.5},
            marker={"size": 7}, name=label, legendgroup=kind, showlegend=kind not in shown,
            hovertemplate=(f"{html.escape(str(item['name']))}<br>A: {ra if ra else f'below {depth}'}<br>"
                           f"B: {rb if rb else f'below {depth}'}<extra></extra>")))
        shown.add(kind)
    ticks = [t for t in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000) if t <= depth]
    fig.update_yaxes(type="log", autorange="reversed", tickvals=ticks + [beyond],
                     ticktext=[str(t) for t in ticks] + [f"> {depth}"], title_text="rank (1 = best)")
    fig.update_xaxes(tickvals=[0, 1], ticktext=[_wrap_name("A", name_a), _wrap_name("B", name_b)],
                     range=[-0.3, 1.3], showgrid=False, zeroline=False)
    fig.update_layout(title="How the top-K moved from A to B", template="plotly_white", hovermode="closest",
                      legend={"orientation": "h", "yanchor": "top", "y": -0.2, "x": 0})
    return fig


def _wrap_name(tag: str, name: str) -> str:
    """``A: isa<br>mobilenetv3_small_100``: a tick label in short lines."""
    return f"{tag}: " + "<br>".join(name.split(" · "))


def write_figures(figs: dict[str, go.Figure], out: str | os.PathLike) -> list[Path]:
    """One HTML page holding every figure (plotly.js inlined: works offline); ``.png`` writes one
    image per figure and needs the kaleido exporter."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".png":
        try:
            import kaleido  # noqa: F401
        except ImportError:
            raise RuntimeError("PNG export needs the 'kaleido' package; write .html instead") from None
        paths = [out.with_name(f"{out.stem}_{name}.png") for name in figs]
        for p, fig in zip(paths, figs.values()):
            fig.write_image(p)
        return paths
    from ..common import write_text

    parts = [fig.to_html(full_html=False, include_plotlyjs=(i == 0)) for i, fig in enumerate(figs.values())]
    write_text(out, "<html><head><meta charset='utf-8'><title>isa-demo accuracy vs cost</title></head><body>"
                    + "\n".join(parts) + "</body></html>")
    return [out]


# ----------------------------------------------------------------------------- command
def register(sub) -> None:
    p = sub.add_parser("plot", help="accuracy vs GFLOPs / CPU latency figures (HTML)",
                       description="Plot accuracy.csv against efficiency.csv into one HTML page (or PNGs when "
                                   "kaleido is installed and FILE ends in .png).")
    p.add_argument("--results", default=str(RESULTS_DIR), help="folder with accuracy.csv and efficiency.csv")
    p.add_argument("--out", required=True, help="FILE.html")
    p.add_argument("--metric", default="R@1", help="accuracy column (default R@1)")
    p.add_argument("--highlight", default=None, help="backbone to highlight")
    p.set_defaults(func=_plot)


def _plot(args) -> int:
    figs = accuracy_figures(args.results, metric=args.metric, highlight=args.highlight)
    paths = write_figures(figs, args.out)
    print("wrote " + ", ".join(map(str, paths)))
    return 0
