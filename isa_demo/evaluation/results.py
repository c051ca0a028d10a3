"""The results-file contract: where every results table lives, and the one reader and writer of each.

Everything the benchmarks write under ``RESULTS_DIR`` (default ``assets/results``, see
:mod:`isa_demo.settings`) and everything the app and ``bench report`` read goes through here::

    {table}.csv + {table}.json   a results table and its provenance (command, machine, date) and
                                 the table's sha256: :func:`write_table`; ``accuracy.csv`` /
                                 ``efficiency.csv`` are read with :func:`load_accuracy` /
                                 :func:`load_efficiency`, which refuse a table that no longer
                                 matches its sha256 (:class:`isa_demo.errors.IntegrityError`)
    per_query/{tag}.parquet      one row per query of one evaluation (:func:`write_per_query`,
    per_query/{tag}.sha256       :func:`read_per_query`, checked against its sha256 beside it; the
                                 app's failure-case inspector reads it)
    metrics/{tag}.json           an evaluation's metrics, counts, identities and command

``tag`` is :func:`result_tag` ``{dataset}_{split}_{method}[_{backbone}]``.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pandas as pd

from ..common import atomic_path, file_sha256, verify_file, write_json, write_text
from ..errors import UserError
from ..settings import RESULTS_DIR

ACCURACY_CSV = "accuracy.csv"
EFFICIENCY_CSV = "efficiency.csv"


class ResultsMissing(UserError, FileNotFoundError):
    """A results table is absent; the message says which command makes it."""


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", str(text)).strip("-")


def result_tag(dataset: str, split: str, method: str, backbone: str | None = None) -> str:
    parts = [dataset, split, method] + ([backbone] if backbone else [])
    return "_".join(slug(p) for p in parts)


def per_query_path(out: str | os.PathLike, dataset: str, split: str, method: str,
                   backbone: str | None = None) -> Path:
    """``{out}/per_query/{dataset}_{split}_{method}[_{backbone}].parquet`` (the stable convention)."""
    return Path(out) / "per_query" / f"{result_tag(dataset, split, method, backbone)}.parquet"


LIST_COLUMNS = ("targets", "topk_ids", "topk_scores")


def write_per_query(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Atomic parquet write; without pyarrow, CSV beside it (list columns JSON-encoded)."""
    path = Path(path)
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        path = path.with_suffix(".csv")
        flat = df.copy()
        for col in LIST_COLUMNS:
            if col in flat:
                flat[col] = flat[col].map(lambda v: json.dumps(list(v)))
        with atomic_path(path) as tmp:
            flat.to_csv(tmp, index=False)
    else:
        with atomic_path(path) as tmp:
            df.to_parquet(tmp, index=False, engine="pyarrow", compression="zstd", compression_level=19)  # assets budget
    write_text(checksum_path(path), file_sha256(path) + "\n")
    return path


def checksum_path(path: str | os.PathLike) -> Path:
    """``per_query/{tag}.sha256``: the sha256 of a per-query table (parquet or its CSV fallback)."""
    return Path(path).with_suffix(".sha256")


def read_per_query(path: str | os.PathLike) -> pd.DataFrame:
    """Read a per-query table written by :func:`write_per_query` (parquet or its CSV fallback)."""
    path = Path(path)
    if not path.exists() and path.with_suffix(".csv").exists():
        path = path.with_suffix(".csv")
    if not path.exists():
        raise FileNotFoundError(f"no per-query table at {path}; run `python -m isa_demo eval ...` first")
    sums = checksum_path(path)
    verify_file(path, sums.read_text().strip() if sums.exists() else None, "per-query table")
    if path.suffix == ".csv":
        df = pd.read_csv(path)
        for col in LIST_COLUMNS:
            if col in df:
                df[col] = df[col].map(json.loads)
        return df
    return pd.read_parquet(path)


def write_table(df: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write a results table as CSV with its provenance in a sidecar ``.json``, atomically."""
    from ..common import provenance

    path = Path(path)
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, float_format="%.4f")
    write_json(path.with_suffix(".json"), {**provenance(), "sha256": file_sha256(path)}, indent=2)


def table_checksum(path: str | os.PathLike) -> str | None:
    """The sha256 a table's provenance sidecar recorded (None: none recorded, an older table)."""
    sidecar = Path(path).with_suffix(".json")
    try:
        return json.loads(sidecar.read_text()).get("sha256") if sidecar.exists() else None
    except (ValueError, OSError, AttributeError):
        return None


def results_dir_for(vl_name: str, root: str | os.PathLike = RESULTS_DIR) -> Path:
    """Where the evaluations of one built-in VL model's release go: ``root`` for the default model
    (what the app and the README read first), ``root/vl/NAME`` for any other (kept for comparison)."""
    from ..settings import BUILTIN_VL

    return Path(root) if vl_name == BUILTIN_VL else Path(root) / "vl" / vl_name


def merge_rows(df: pd.DataFrame, path: str | os.PathLike, key: str) -> pd.DataFrame:
    """``df`` with the rows of the table at ``path`` whose ``key`` is not among ``df``'s (a table
    that compares several models: rerunning one model replaces only its own rows)."""
    path = Path(path)
    if not path.exists():
        return df
    old = pd.read_csv(path)
    if key not in old:
        return df
    return pd.concat([old[~old[key].isin(set(df[key]))], df], ignore_index=True)


def _read(path: Path, how: str) -> pd.DataFrame:
    if not path.exists():
        raise ResultsMissing(f"no {path.name} at {path}; run `{how}` first")
    verify_file(path, table_checksum(path), "results table")
    return pd.read_csv(path)


def load_accuracy(results: str | os.PathLike = RESULTS_DIR) -> pd.DataFrame:
    return _read(Path(results) / ACCURACY_CSV, "python -m isa_demo bench accuracy")


def load_efficiency(results: str | os.PathLike = RESULTS_DIR) -> pd.DataFrame:
    return _read(Path(results) / EFFICIENCY_CSV, "python -m isa_demo bench efficiency")
