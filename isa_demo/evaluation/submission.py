"""Test-server submission files, in the formats the official servers accept (METHOD.md 7).

- CIRR: ``{"version": "rc2", "metric": "recall", pairid: [top-50 ids]}`` and the subset file
  ``{"version": "rc2", "metric": "recall_subset", pairid: [top-3 subset ids]}``; rankings
  exclude the reference.
- CIRCO: ``{query_id: [top-50 unique image ids]}`` covering every query, ids as integers.

Writes are atomic.
"""
from __future__ import annotations

import os
from typing import Mapping, Sequence

from ..common import write_json
from ..errors import UserError

CIRR_TOP = 50
CIRR_SUBSET_TOP = 3
CIRCO_TOP = 50


class SubmissionError(UserError, ValueError):
    """Predictions that cannot be written in the benchmark's submission format."""


def _top_unique(ids: Sequence, k: int, what: str) -> list:
    out = list(dict.fromkeys(ids))[:k]
    if len(out) < k:
        raise SubmissionError(f"{what}: {len(out)} distinct ranked ids, the server expects {k}")
    return out


def cirr_submission(rankings: Mapping[str, Sequence[str]], subset_rankings: Mapping[str, Sequence[str]]
                    ) -> tuple[dict, dict]:
    """The two CIRR dicts from per-pairid rankings (reference already removed)."""
    if set(rankings) != set(subset_rankings):
        raise SubmissionError("the recall and recall_subset rankings must cover the same pair ids")
    main = {"version": "rc2", "metric": "recall"}
    subset = {"version": "rc2", "metric": "recall_subset"}
    for pid in rankings:
        key = str(int(pid))
        main[key] = [str(x) for x in _top_unique(rankings[pid], CIRR_TOP, f"pair {pid}")]
        subset[key] = [str(x) for x in _top_unique(subset_rankings[pid], CIRR_SUBSET_TOP, f"pair {pid} subset")]
    return main, subset


def write_cirr_submission(path: str | os.PathLike, rankings: Mapping[str, Sequence[str]],
                          subset_rankings: Mapping[str, Sequence[str]]) -> tuple[str, str]:
    """Write ``path`` (recall) and ``subset_<name>`` beside it (recall_subset); returns both paths."""
    path = os.fspath(path)
    main, subset = cirr_submission(rankings, subset_rankings)
    subset_path = os.path.join(os.path.dirname(path), "subset_" + os.path.basename(path))
    write_json(path, main)
    write_json(subset_path, subset)
    return path, subset_path


def circo_submission(rankings: Mapping[str, Sequence], expected_ids: Sequence | None = None) -> dict:
    """``{query_id: [top-50 unique int ids]}``; with ``expected_ids``, checks every query is there."""
    if expected_ids is not None:
        missing = {str(q) for q in expected_ids} - {str(q) for q in rankings}
        if missing:
            raise SubmissionError(f"the CIRCO server needs every query: {len(missing)} missing "
                                  f"(e.g. {sorted(missing)[:3]})")
    return {str(int(q)): [int(x) for x in _top_unique(r, CIRCO_TOP, f"query {q}")] for q, r in rankings.items()}


def write_circo_submission(path: str | os.PathLike, rankings: Mapping[str, Sequence],
                           expected_ids: Sequence | None = None) -> str:
    write_json(path, circo_submission(rankings, expected_ids))
    return os.fspath(path)
