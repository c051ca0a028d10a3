"""The results side of the demo: the world's test split (example queries, the failure-case
inspector over each method's per-query table) and the accuracy-versus-cost plot.

Results files are read only through :mod:`isa_demo.evaluation.results` and figures made only by
:mod:`isa_demo.bench.plots`; what is here is the demo's view of them (filters, sort order, the
plot's size and axis range, the table's columns).
"""
from __future__ import annotations

import importlib
import logging
import os
from pathlib import Path

import numpy as np

from ..settings import RESULTS_DIR, WORLD_SPLIT
from .catalogue import Catalogue
from .inputs import InputError

FAILURE_COLUMNS = ("query_id", "mod_type", "modifier", "rank", "subset_rank")
EXAMPLE_SEED = 0  # the examples are a seeded draw from the test split, the same on every start

log = logging.getLogger("isa_demo.app")


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
        self._tables: dict[Path, tuple] = {}  # per-query tables by path: (file's mtime, table)
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


        df = self.per_query(method, backbone)
        df = _filtered(df, mod_type)
        worst_key = pd.to_numeric(df["rank"], errors="coerce").fillna(np.inf)
        df = df.assign(_k=worst_key).sort_values("_k", ascending=(sort != "worst first"), kind="stable")
        df = df.drop(columns="_k").reset_index(drop=True)
        return df[[c for c in FAILURE_COLUMNS if c in df]], df

    def per_query(self, method: str, backbone: str | None = None):
        """A method's per-query table of the world's test split, or :class:`InputError` saying
        which command writes it (the table's file name at most: never a server folder)."""
        from ..evaluation.results import read_per_query

        v = self.catalogue.resolve(method, backbone)
        path = self.per_query_table_path(method, backbone)
        on_disk = path if path.exists() else path.with_suffix(".csv")
        stamp = on_disk.stat().st_mtime_ns if on_disk.exists() else None
        cached = self._tables.get(path)
        if stamp is not None and cached is not None and cached[0] == stamp:
            return cached[1]  # read once per version of the file (callers never change it in place)
        try:
            df = read_per_query(path)
            self._tables[path] = (stamp, df)
            return df
        except FileNotFoundError:
            raise InputError(f"no per-query table for {v.display} yet ({path.stem}); the operator writes it "
                             f"with `python -m isa_demo bench accuracy`") from None
        except Exception as e:
            log.error("cannot read %s: %s", path, e)
            raise InputError(f"the per-query table for {v.display} cannot be read (it may be damaged); the "
                             f"operator rewrites it with `python -m isa_demo bench accuracy`") from None

    def rank_pairs(self, first: tuple[str, str | None], second: tuple[str, str | None], mod_type: str | None = None):
        """Each query's ground-truth rank under two methods (their per-query tables, joined on the
        query id): ``query_id, mod_type, modifier, rank_1, rank_2``; filtered like :meth:`failure_table`."""
        import pandas as pd

        one, two = self.per_query(*first), self.per_query(*second)
        cols = ["query_id", "mod_type", "modifier", "rank"]
        df = one[cols].merge(two[["query_id", "rank"]], on="query_id", suffixes=("_1", "_2"))
        df = _filtered(df, mod_type)
        for c in ("rank_1", "rank_2"):
            df[c] = pd.to_numeric(df[c], errors="coerce")
        return df.reset_index(drop=True)

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
            log.error("the plotting module cannot be imported: %s", e)
            return None, None, "_The efficiency-accuracy plot is not available on this server._"
        try:
            acc, eff = plots.load_accuracy(self.results_dir), plots.load_efficiency(self.results_dir)
            joined = plots.join_accuracy_efficiency(acc, eff)
            if joined.empty:
                raise plots.ResultsMissing("no accuracy row matches an efficiency row yet")
            figs = plots.accuracy_figures(self.results_dir, metric=metric, highlight=highlight)
        except plots.ResultsMissing as e:  # the log says where; the page what is missing and how it is made
            log.info("no efficiency-accuracy plot: %s", e)
            return None, None, ("**No efficiency-accuracy plot yet**: it needs both results tables, accuracy.csv "
                                "and efficiency.csv, with matching rows; the operator makes them with "
                                "`python -m isa_demo bench accuracy` and `python -m isa_demo bench efficiency`.")
        except Exception as e:  # a malformed table
            log.error("the results tables cannot be read: %s", e, exc_info=True)
            return None, None, ("**No efficiency-accuracy plot**: the results tables could not be read (they may "
                                "be damaged); the operator rewrites them with `python -m isa_demo bench accuracy` "
                                "and `python -m isa_demo bench efficiency`.")
        fig = figs.get(cost) or next(iter(figs.values()))
        _fit_x_axis(fig)
        fig.update_layout(height=560, margin={"l": 60, "r": 20, "t": 60, "b": 20},
                          legend={"orientation": "h", "yanchor": "top", "y": -0.2, "x": 0, "font": {"size": 11}})
        cols = [c for c in ("method", "backbone", metric, "gflops", "cpu_ms_p50", "params") if c in joined]
        table = joined[cols].copy()
        table["backbone"] = table["backbone"].fillna("")
        if "params" in table:
            table["params"] = (table["params"] / 1e6).round(2)
        table = table.rename(columns={"params": "params (M)", "gflops": "GFLOPs", "cpu_ms_p50": "CPU ms"})
        table = table.sort_values(metric, ascending=False).round(3).reset_index(drop=True)
        return fig, table, f"Highlighted: **{highlight}**" if highlight else "Pick an ISA backbone to highlight it."


def _filtered(df, mod_type: str | None):
    """Rows of one modification family (``pair`` keeps every ``pair:...``); ``all`` / None: every row."""
    if mod_type and mod_type != "all":
        col = df["mod_type"].astype(str)
        df = df[(col == mod_type) | col.str.startswith(mod_type + ":")]
    return df


def _fit_x_axis(fig) -> None:
    """Some room on both sides of the log x axis for the markers (the range is in log10 units)."""
    xs = [float(x) for t in fig.data for x in (list(t.x) if t.x is not None else []) if x is not None]
    xs = [x for x in xs if np.isfinite(x) and x > 0]
    if xs:
        lo, hi = float(np.log10(min(xs))), float(np.log10(max(xs)))
        pad = max(0.2, 0.1 * (hi - lo))
        fig.update_xaxes(range=[lo - pad, hi + pad])
