"""`python -m isa_demo bench report`: the README's results section, rendered from ``assets/results``.

Every number in the README's results section comes from a table a benchmark wrote; this module
turns those tables into markdown (which columns, which rows, how many decimals: ``TABLES``, as
data) and rewrites the block between the ``RESULTS`` markers. ``--check`` fails when the README
and the tables disagree (the test suite runs it).
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from ..settings import ASSETS_DIR, REPO, RESULTS_DIR

BEGIN, END = "<!-- RESULTS:BEGIN -->", "<!-- RESULTS:END -->"
ACCURACY_KEYS = ["method", "backbone"]
ABLATION_COLUMNS = ["arm", "L", "lar", "steps", "train_seconds", "R@1", "R@10", "Rs@1", "mAP@10", "R@1/add"]
MOD_TYPES = ["add", "remove", "colour", "shape", "size", "position", "background", "pair"]

# title, the command that writes the table, its file, the columns shown, decimals
TABLES = [
    ("Built-in VL model: scene-level retrieval on the world's test split", "python -m isa_demo bench vl",
     "vl_retrieval.csv", ["model", "direction", "queries", "gallery", "R@1", "R@5", "R@10"], 3),
    ("Built-in VL model: what it binds (a caption against its own image and the image one change away; "
     "0.5 is chance)", "python -m isa_demo bench vl", "vl_binding.csv",
     ["model", "change", "pairs", "caption_prefers_own", "image_cos", "caption_cos"], 3),
    ("Composed retrieval on the world's test split (every metric on one ranking, the reference removed, %)",
     "python -m isa_demo bench accuracy",
     "accuracy.csv", ACCURACY_KEYS + ["R@1", "R@5", "R@10", "R@50", "Rs@1", "Rs@2", "Rs@3", "mAP@5", "mAP@10",
                                      "mAP@25", "mAP@50", "R@1_of_oracle"], 2),
    ("R@1 by modification type (%)", "python -m isa_demo bench accuracy",
     "accuracy.csv", ACCURACY_KEYS + [f"R@1/{m}" for m in MOD_TYPES], 1),
    ("Composed retrieval with the built-in VL model v3 (binds position): its release so far (%)",
     "python -m isa_demo bench accuracy --vl-model isa-world-vit-v3", "vl/isa-world-vit-v3/accuracy.csv",
     ACCURACY_KEYS + ["R@1", "R@5", "R@10", "R@50", "Rs@1", "mAP@10", "R@1_of_oracle"]
     + [f"R@1/{m}" for m in MOD_TYPES], 2),
    ("What the explanations show (test references, ISA encoders)", "python -m isa_demo bench explain [--vl-model NAME]",
     "explain.csv", ["vl_model", "backbone", "num_tokens", "vocabulary_words", "word_names_reference",
                     "word_names_any_attribute", "object_gets_peak", "peak_cells_distinct", "map_entropy"], 3),
    ("Mixed precision: seconds per training step (2-core CPU)", "python -m isa_demo bench precision",
     "precision.csv", ["trainer", "steps", "mixed", "fp32_s_per_step", "mixed_s_per_step", "speedup"], 3),
    ("Mixed precision: accuracy effect", "python -m isa_demo bench precision", "precision_accuracy.csv",
     ["trainer", "precision", "steps", "train_seconds", "R@1", "R@10", "mAP@10"], 2),
    ("ISA ablation (symmetric variant, 1,000 steps each, %)",
     "python -m isa_demo bench isa-ablation --backbone symmetric --steps 1000 --reuse-shipped",
     "isa_ablation.csv", ABLATION_COLUMNS, 2),
    ("ISA ablation (the lightest backbone, 1,000 steps each, %)",
     "python -m isa_demo bench isa-ablation --backbone mobilenetv3_small_100 --steps 1000 --reuse-shipped "
     "--arms 'GCD only' 'GCD + LAR (late)' --out assets/results/isa_ablation_mobilenetv3_small_100.csv",
     "isa_ablation_mobilenetv3_small_100.csv", ABLATION_COLUMNS, 2),
    ("Composition templates of the pseudo-token methods (%)", "python -m isa_demo bench prompts", "prompts.csv",
     ["method", "backbone", "prompt", "R@1", "R@10", "Rs@1", "mAP@10", "R@1/add", "R@1/colour", "R@1/position"], 2),
    ("Efficiency of the query side (batch 1, CPU, 2 threads)", "python -m isa_demo bench efficiency",
     "efficiency.csv", ["model", "setting", "stage", "params", "gflops", "cpu_ms_p50", "cpu_ms_p90", "peak_mem_mb"], 3),
    ("Efficiency target: lightest ISA encoder vs the symmetric one (224 px, ViT-B-32)",
     "python -m isa_demo bench efficiency", "efficiency_target.csv",
     ["lightest", "symmetric", "flops_ratio", "cpu_latency_ratio"], 1),
    ("Gallery search at 1,000,000 vectors", "python -m isa_demo bench index", "index.csv",
     ["dim", "index", "search_params", "build_s", "index_mb", "recall@10", "b1_p50_ms", "b1_p99_ms", "b64_p50_ms",
      "b64_p99_ms", "floor_ms", "b1_p50_over_floor"], 3),
    ("Demo latency through the HTTP API (lightest backbone, built-in gallery)", "python -m isa_demo bench app",
     "app.csv", ["scenario", "method", "backbone", "clients", "queries", "errors", "p50_ms", "p99_ms",
                 "throughput_qps", "server_total_ms_p50", "cold_start_s"], 1),
    ("Demo under sustained load (concurrent clients on loopback, lightest backbone)", "python -m isa_demo bench load",
     "load.csv", ["round", "api", "clients", "seconds", "queries", "errors", "throughput_qps", "p50_ms", "p99_ms",
                  "batch_mean", "server_rss_mb", "rss_growth_pct", "cache_mb"], 1),
    ("Training on real data: images per second (ViT-B-32-sized random weights, 224 px, the lightest backbone)",
     "python -m isa_demo bench train-throughput", "train_throughput.csv",
     ["device", "trainer", "stage", "images", "seconds", "images_per_s", "speedup_vs_cold"], 1),
    ("Galleries beyond one process: Ray encoding, IVF-PQ at 10M vectors, Milvus (2-core CPU)",
     "python -m isa_demo bench scale", "scale.csv",
     ["part", "system", "workers", "n", "img_per_s", "steady_img_per_s", "steady_ratio", "startup_s", "cpu_busy",
      "index",
      "search_params", "build_s", "rss_over_index", "recall@10", "b1_p50_ms", "b1_p99_ms", "same_top10",
      "same_top10_set"], 3),
]


def _cell(v, decimals: int) -> str:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.{decimals}f}"
    return str(v)


def markdown_table(df, columns: list[str], decimals: int) -> str:
    cols = [c for c in columns if c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in df[cols].itertuples(index=False):
        lines.append("| " + " | ".join(_cell(v, decimals) for v in row) + " |")
    return "\n".join(lines)


TRAINING_COLUMNS = ["checkpoint", "lar", "steps", "batch_size", "train_images", "train_seconds", "precompute_seconds",
                    "device", "date"]


def training_table(assets: str | Path):
    """One row per shipped checkpoint, from the metadata its training command recorded."""
    import pandas as pd

    from ..common import read_metadata

    assets = Path(assets)
    rows = []
    for path in sorted(assets.glob("**/*.safetensors")):
        meta = read_metadata(path)
        row = {"checkpoint": path.relative_to(assets).as_posix()}
        for col in TRAINING_COLUMNS[1:]:
            value = meta.get(col, "")
            row[col] = "" if value == "null" else value
        rows.append(row)
    return pd.DataFrame(rows, columns=TRAINING_COLUMNS)


def render(results: str | Path) -> str:
    """The markdown of the training table and every table in ``TABLES`` (a note for those not
    measured yet)."""
    import pandas as pd

    results = Path(results)
    parts = ["### Training runs of the shipped checkpoints (2-core CPU)\n",
             "read from each checkpoint's metadata, as `train vl|isa|masked-ti` recorded it (seconds)\n",
             markdown_table(training_table(ASSETS_DIR), TRAINING_COLUMNS, 1) + "\n"]
    for title, command, file, columns, decimals in TABLES:
        path = results / file
        parts.append(f"### {title}\n")
        if not path.exists():
            parts.append(f"`{command}`: not run yet.\n")
            continue
        df = pd.read_csv(path, keep_default_na=False, na_values=[""])
        sidecar = path.with_suffix(".json")
        date = json.loads(sidecar.read_text())["date"][:10] if sidecar.exists() else "undated"
        parts.append(f"`{command}` → `assets/results/{file}` ({date})\n")
        parts.append(markdown_table(df, columns, decimals) + "\n")
    return "\n".join(parts)


def update_readme(readme: str | Path, results: str | Path, check: bool = False) -> bool:
    """Rewrite the block between the markers (or, with ``check``, only compare); True if in sync."""
    readme = Path(readme)
    text = readme.read_text(encoding="utf-8")
    if BEGIN not in text or END not in text:
        raise ValueError(f"{readme} has no {BEGIN} ... {END} block")
    head, rest = text.split(BEGIN, 1)
    old, tail = rest.split(END, 1)
    new = "\n" + render(results)
    if old == new:
        return True
    if not check:
        from ..common import write_text

        write_text(readme, head + BEGIN + new + END + tail)
    return False


def register(sub) -> None:
    p = sub.add_parser("report", help="render assets/results/*.csv into README.md's results section",
                       description="Rewrite the README block between the RESULTS markers from the measured "
                                   "tables in assets/results (no measuring; run the benchmarks first).")
    p.add_argument("--results", default=str(RESULTS_DIR))
    p.add_argument("--readme", default=str(REPO / "README.md"))
    p.add_argument("--check", action="store_true", help="only compare; exit 1 when the README is out of date")
    p.set_defaults(func=_report)


def _report(args) -> int:
    in_sync = update_readme(args.readme, args.results, check=args.check)
    if in_sync:
        print(f"{args.readme}: results section up to date")
        return 0
    if args.check:
        print(f"{args.readme}: results section differs from {args.results}; run `python -m isa_demo bench report`",
              file=sys.stderr)
        return 1
    print(f"{args.readme}: results section rewritten from {args.results}")
    return 0
