"""The results side of the demo: the world's test split (example queries, the failure-case
inspector over each method's per-query table) and the accuracy-versus-cost plot.

Results files are read only through :mod:`isa_demo.evaluation.results` and figures made only by
:mod:`isa_demo.bench.plots`; what is here is the demo's view of them (filters, sort order, the
plot's size and axis range, the table's columns).
"""
from __future__ import annotations

import importlib
import os
from pathlib import Path

import numpy as np

from ..settings import REPO, RESULTS_DIR, WORLD_SPLIT
from .catalogue import Catalogue
from .inputs import InputError

FAILURE_COLUMNS = ("query_id", "mod_type", "modifier", "rank", "subset_rank")
EXAMPLE_SEED = 0  # the examples are a seeded draw from the test split, the same on every start


class Inspector:
    """``world``: an :class:`isa_demo.world.World` with the ``world_split`` split (None: examples
    and the inspector say they are unavailable); ``results_dir``: the results tables."""

    def __init__(self, world, catalogue: Catalogue, results_dir: str | os.PathLike = RESULTS_DIR,
                 world_split: str = WORLD_SPLIT):
        self.world = world
        self.world_split = world_split
        self.results_dir = Path(results_dir)
        self.catalogue = catalogue
        self._world_paths: dict[str, Path] | None = None
        for mod in ("..evaluation.results", "..bench.plots"):  # import once, here: handlers run in
            try:                                                      # threads, and a concurrent first
                importlib.import_module(mod, __package__)             # import sees half a module
            except Exception:
                pass

    # ------------------------------------------------------------------ the world's images
    def world_paths(self) -> dict[str, Path]:
        if self._world_paths is None:
            self._world_paths = {}
            if self.world is not None:
                try:
                    records = self.world.records(self.world_split)
                    self._world_paths = {r["name"]: self.world.image_path(r) for r in records}
                except Exception:
                    self._world_paths = {}
        return self._world_paths

    def world_image(self, name: str) -> str | None:
        p = self.world_paths().get(str(name))
        return str(p) if p is not None else None

    def example_queries(self, n: int = 12, seed: int = EXAMPLE_SEED) -> list[dict]:
        """Example queries drawn from the world's test split with a fixed seed: one per modification
        family first (in the world's order), then more at random. Never picked by how well a model
        does on them."""
        if self.world is None:
            return []
        try:
            queries = self.world.queries(self.world_split)
        except Exception:
            return []
        rng = np.random.default_rng(seed)
        families: dict[str, list[int]] = {}
        for i, q in enumerate(queries):
            families.setdefault(q.get("mod_type", "").split(":")[0], []).append(i)
        picked = [int(rng.choice(ids)) for ids in families.values()]
        rest = [i for i in rng.permutation(len(queries)).tolist() if i not in set(picked)]
        picked = [queries[i] for i in (picked + rest)[:n]]
        out = []
        for q in picked[:n]:
            path = self.world_image(q["reference"])
            if path:
                out.append({"image": path, "modifier": q["caption"], "mod_type": q.get("mod_type", ""),
                            "reference": q["reference"]})
        return out

    # ------------------------------------------------------------------ failure cases
    def mod_types(self) -> list[str]:
        from ..world import ALL_MOD_TYPES

        return ["all", *ALL_MOD_TYPES]

    def per_query_table_path(self, method: str, backbone: str | None = None) -> Path:
        from ..evaluation.results import per_query_path

        v = self.catalogue.resolve(method, backbone)
        name, bb = v.method, v.backbone
        try:  # the table is named by the loaded method's own name and backbone
            m = self.catalogue.get_method(v)
            name, bb = m.name, m.backbone
        except InputError:
            pass
        return per_query_path(self.results_dir, "world", self.world_split, name, bb)

    def failure_table(self, method: str, backbone: str | None = None, mod_type: str | None = None,
                      sort: str = "worst first"):
        """The per-query table of the world's test split for a method, filtered and sorted.

        Returns ``(shown, full)``: the columns to display (``query_id, mod_type, modifier, rank,
        subset_rank``) and the full rows in the same order (for :meth:`failure_detail`); raises
        :class:`InputError` when the table is missing."""
        import pandas as pd

        from ..evaluation.results import read_per_query

        v = self.catalogue.resolve(method, backbone)
        path = self.per_query_table_path(method, backbone)
        try:
            df = read_per_query(path)
        except FileNotFoundError:
            shown = path.relative_to(REPO) if path.is_relative_to(REPO) else path
            raise InputError(f"no per-query table for {v.display} yet ({shown}); it is written by "
                             f"`python -m isa_demo bench accuracy`") from None
        except Exception as e:
            raise InputError(f"cannot read {path.name}: {type(e).__name__}: {e}") from None
        if mod_type and mod_type != "all":
            col = df["mod_type"].astype(str)
            df = df[(col == mod_type) | col.str.startswith(mod_type + ":")]
        worst_key = pd.to_numeric(df["rank"], errors="coerce").fillna(np.inf)
        df = df.assign(_k=worst_key).sort_values("_k", ascending=(sort != "worst first"), kind="stable")
        df = df.drop(columns="_k").reset_index(drop=True)
        return df[[c for c in FAILURE_COLUMNS if c in df]], df

    def failure_detail(self, row: dict, k: int = 10) -> dict:
        """One row of the per-query table -> reference, modifier, ground truths and the top-K
        (with paths into the world's images and whether each is a ground truth)."""
        import pandas as pd

        def listed(key):
            return list(row.get(key) if row.get(key) is not None else [])

        targets = listed("targets")
        gts = set(map(str, targets))
        top_scores = listed("topk_scores")
        top = []
        for i, name in enumerate(listed("topk_ids")[:k]):
            score = float(top_scores[i]) if i < len(top_scores) else float("nan")
            top.append({"rank": i + 1, "name": str(name), "score": score, "path": self.world_image(name),
                        "is_gt": str(name) in gts})
        rank = row.get("rank")
        return {"query_id": row.get("query_id"), "mod_type": row.get("mod_type"), "modifier": row.get("modifier"),
                "reference": self.world_image(row.get("reference")), "reference_name": row.get("reference"),
                "targets": [{"name": str(t), "path": self.world_image(t)} for t in targets],
                "rank": None if rank is None or pd.isna(rank) else int(rank), "top": top}

    # ------------------------------------------------------------------ accuracy vs cost
    def efficiency(self, highlight: str | None = None, cost: str = "gflops", metric: str = "R@1"):
        """(plotly figure or None, table DataFrame or None, note markdown); ``highlight``: a backbone."""
        try:
            from ..bench import plots
        except Exception as e:
            return None, None, f"_The efficiency-accuracy plot is not available ({type(e).__name__}: {e})._"
        try:
            acc, eff = plots.load_accuracy(self.results_dir), plots.load_efficiency(self.results_dir)
            joined = plots.join_accuracy_efficiency(acc, eff)
            if joined.empty:
                raise plots.ResultsMissing("no accuracy row matches an efficiency row yet")
            figs = plots.accuracy_figures(self.results_dir, metric=metric, highlight=highlight)
        except plots.ResultsMissing as e:
            return None, None, f"**No efficiency-accuracy plot yet**: {e}."
        except Exception as e:  # a malformed table
            return None, None, (f"**No efficiency-accuracy plot**: the results tables could not be read "
                                f"({type(e).__name__}: {e}); rerun `python -m isa_demo bench accuracy` and "
                                f"`python -m isa_demo bench efficiency`.")
        fig = figs.get(cost) or next(iter(figs.values()))
        _fit_x_axis(fig)
        fig.update_layout(height=460, legend={"orientation": "h", "yanchor": "top", "y": -0.22, "x": 0})
        cols = [c for c in ("method", "backbone", metric, "gflops", "cpu_ms_p50", "params") if c in joined]
        table = joined[cols].copy()
        table["backbone"] = table["backbone"].fillna("")
        if "params" in table:
            table["params"] = (table["params"] / 1e6).round(2)
        table = table.rename(columns={"params": "params M", "gflops": "GFLOPs", "cpu_ms_p50": "CPU ms"})
        table = table.sort_values(metric, ascending=False).round(3).reset_index(drop=True)
        return fig, table, f"Highlighted: **{highlight}**" if highlight else "Pick an ISA backbone to highlight it."


def _fit_x_axis(fig) -> None:
    """Room on both sides of the log x axis for the point labels (the range is in log10 units)."""
    xs = [float(x) for t in fig.data for x in (list(t.x) if t.x is not None else []) if x is not None]
    xs = [x for x in xs if np.isfinite(x) and x > 0]
    if xs:
        lo, hi = float(np.log10(min(xs))), float(np.log10(max(xs)))
        pad = max(0.4, 0.25 * (hi - lo))
        fig.update_xaxes(range=[lo - pad, hi + pad])
