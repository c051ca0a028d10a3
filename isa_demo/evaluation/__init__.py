"""Evaluation harness: benchmark loaders, official metrics, submission writers, the runner, and the
results-file contract (:mod:`.results`) that benchmarks, the app and the report share."""
from .datasets import (
    DATASETS,
    FASHIONIQ_CATEGORIES,
    Benchmark,
    DatasetError,
    Query,
    load_benchmarks,
    load_circo,
    load_cirr,
    load_fashioniq,
    load_world,
)
from .metrics import (
    average_precision_at_k,
    circo_metrics,
    cirr_metrics,
    fashioniq_metrics,
    fashioniq_summary,
    first_relevant_rank,
    map_at_k,
    rank,
    recall_at_k,
    relevance,
    subset_ranking,
)
from .results import RESULTS_DIR, per_query_path, read_per_query, result_tag
from .runner import ORACLE, EvalError, EvalReport, build_method, evaluate

__all__ = ["DATASETS", "FASHIONIQ_CATEGORIES", "Benchmark", "DatasetError", "Query", "load_benchmarks", "load_circo",
           "load_cirr", "load_fashioniq", "load_world", "average_precision_at_k", "circo_metrics", "cirr_metrics",
           "fashioniq_metrics", "fashioniq_summary", "first_relevant_rank", "map_at_k", "rank", "recall_at_k",
           "relevance", "subset_ranking", "ORACLE", "RESULTS_DIR", "EvalError", "EvalReport", "build_method",
           "evaluate", "per_query_path", "read_per_query", "result_tag"]
