"""Accuracy-versus-cost figures (plotly) from ``accuracy.csv`` and ``efficiency.csv``.

The app imports the same functions. ``efficiency.csv`` columns: ``model, method, backbone,
setting ('world' | 'real-224'), stage, params, gflops, cpu_ms_p50, gpu_ms_p50, peak_mem_mb``;
accuracy rows join its ``setting == 'world'``, ``stage == 'query_image_encoder'`` rows on
``method`` + ``backbone`` (an empty backbone matches an empty backbone). Methods whose query
image encoder is the VL image tower itself (the image-using baselines, the masked-pair and
single-token methods) take the ``vl-image-tower`` row when they have none of their own; text-only
has no query image encoder and is left out of the cost axes.
"""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

from ..evaluation.results import ACCURACY_CSV, ResultsMissing, load_accuracy, load_efficiency
from ..evaluation.runner import ORACLE
from ..settings import RESULTS_DIR

COST_AXES = {"gflops": "query image encoder GFLOPs (log)",
             "cpu_ms_p50": "query image encoder CPU latency, ms p50 (log)"}


IMAGE_TOWER = "vl-image-tower"
IMAGE_TOWER_METHODS = ("image-only", "sum", "masked-ti", "single-token")


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


def accuracy_vs_cost(joined: pd.DataFrame, cost: str = "gflops", metric: str = "R@1", highlight: str | None = None,
                     ceiling: float | None = None, title: str | None = None) -> go.Figure:
    """Scatter of ``metric`` against ``cost`` (log x), one point per method/backbone.

    ``highlight``: a backbone drawn larger and labelled. ``ceiling``: the caption oracle's value,
    drawn as a dashed line.
    """
    if cost not in joined:
        raise ValueError(f"no {cost!r} column; choose one of {list(COST_AXES)}")
    if metric not in joined:
        raise ValueError(f"no {metric!r} column in the accuracy table")
    df = joined[(joined[cost] > 0) & joined[metric].notna()].copy()
    dropped = len(joined) - len(df)
    df["label"] = df.apply(_label, axis=1)
    df["hl"] = df["backbone"].fillna("").astype(str) == (highlight or "\0")
    fig = go.Figure()
    for is_hl, part in df.groupby("hl"):
        fig.add_trace(go.Scatter(
            x=part[cost], y=part[metric], mode="markers+text", text=part["label"], textposition="top center",
            name=f"{highlight} (highlighted)" if is_hl else "methods",
            marker={"size": 16 if is_hl else 10, "color": "crimson" if is_hl else "steelblue",
                    "line": {"width": 1, "color": "black"}, "symbol": "star" if is_hl else "circle"},
            hovertemplate="%{text}<br>" + f"{cost}=%{{x:.4g}}<br>{metric}=%{{y:.2f}}<extra></extra>"))
    if ceiling is not None and pd.notna(ceiling):
        fig.add_hline(y=float(ceiling), line_dash="dash", line_color="grey",
                      annotation_text=f"caption oracle {float(ceiling):.1f}", annotation_position="top left")
    subtitle = f" ({dropped} rows without a positive {cost} left out)" if dropped else ""
    fig.update_layout(title=(title or f"{metric} vs {cost} (world test)") + subtitle, template="plotly_white",
                      xaxis_title=COST_AXES.get(cost, cost), yaxis_title=f"{metric} (%)", showlegend=bool(highlight))
    fig.update_xaxes(type="log")
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
