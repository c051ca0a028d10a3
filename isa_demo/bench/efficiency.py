"""`python -m isa_demo bench efficiency`: measured cost of every query-side model, per stage.

Stages: ``query_image_encoder`` (ISA: backbone + token learner; symmetric: the VL image tower's
local features + token learner; image-using baselines and the masked-pair method: the VL image
tower), ``text_encoder`` (the VL text tower on ``a photo of S that {modifier}``), ``search``
(inner product over a gallery with faiss). Two settings: ``world`` (the built-in models at their
own sizes) and ``real-224`` (open_clip ViT-B-32 / ViT-L-14 towers vs the light backbones + token
learner at 224 px with d_w 512/768; random weights, since timing does not depend on weights).

Each row is measured in a fresh subprocess: parameters, FLOPs (torch's FlopCounterMode, batch 1),
CPU latency at batch 1 (median and p90 of ``--runs`` after ``--warmup``), GPU latency when a
GPU is present, and peak memory (growth of the process's peak RSS over the model's run, CPU;
``max_memory_allocated`` on GPU).
"""
from __future__ import annotations

import multiprocessing as mp
import resource
import statistics
import time

import pandas as pd
from tqdm.auto import tqdm

from ..settings import RESULTS_DIR

STAGE_IMAGE, STAGE_TEXT, STAGE_SEARCH = "query_image_encoder", "text_encoder", "search"
REAL = {"ViT-B-32": 512, "ViT-L-14": 768}  # open_clip name -> text width d_w


def _specs(backbones: list[str], settings: list[str]) -> list[dict]:
    specs = []
    if "world" in settings:
        for b in backbones:
            specs.append({"setting": "world", "method": "isa", "backbone": b, "stage": STAGE_IMAGE, "size": 96})
        specs.append({"setting": "world", "method": "isa-symmetric", "backbone": "symmetric", "stage": STAGE_IMAGE})
        specs.append({"setting": "world", "method": "vl-image-tower", "backbone": None, "stage": STAGE_IMAGE})
        specs.append({"setting": "world", "method": "vl-text-tower", "backbone": None, "stage": STAGE_TEXT})
        specs.append({"setting": "world", "method": "faiss-flat-ip", "backbone": None, "stage": STAGE_SEARCH,
                      "gallery": 12_600})
    if "real-224" in settings:
        for vit, dw in REAL.items():
            for b in backbones:
                specs.append({"setting": "real-224", "method": "isa", "backbone": b, "stage": STAGE_IMAGE,
                              "size": 224, "word_dim": dw, "vl": vit})
            specs.append({"setting": "real-224", "method": "isa-symmetric", "backbone": "symmetric",
                          "stage": STAGE_IMAGE, "vl": vit})
            specs.append({"setting": "real-224", "method": "vl-image-tower", "backbone": None, "stage": STAGE_IMAGE,
                          "vl": vit})
            specs.append({"setting": "real-224", "method": "vl-text-tower", "backbone": None, "stage": STAGE_TEXT,
                          "vl": vit})
            specs.append({"setting": "real-224", "method": "faiss-flat-ip", "backbone": None, "stage": STAGE_SEARCH,
                          "gallery": 100_000, "dim": {"ViT-B-32": 512, "ViT-L-14": 768}[vit], "vl": vit})
    return specs


def _model_name(spec: dict) -> str:
    name = spec["method"] if spec["backbone"] in (None, "symmetric") else f"{spec['method']}:{spec['backbone']}"
    return f"{name}@{spec['vl']}" if spec.get("vl") else name


def _build(spec: dict, device: str):
    """Return (callable running one batch-1 forward, parameter count) for a spec."""
    import numpy as np
    import torch

    from ..methods.base import PROMPT
    from ..models import EncoderConfig, QueryEncoder
    from ..vl import load_vl

    if spec["stage"] == STAGE_SEARCH:
        import faiss

        dim = spec.get("dim", 256)
        xb = np.random.default_rng(0).standard_normal((spec["gallery"], dim)).astype("float32")
        faiss.normalize_L2(xb)
        index = faiss.IndexFlatIP(dim)
        index.add(xb)
        q = xb[:1].copy()
        return (lambda: index.search(q, 50)), 0

    # random weights: timing does not depend on them (the world rows use the built-in config)
    vl = load_vl(spec.get("vl", "isa-world-vit"), None, device=device)
    if spec["stage"] == STAGE_TEXT:
        L = 4
        s = torch.randn(1, L, vl.word_dim, device=device)
        prompt = [PROMPT.format(modifier="make the circle red and remove the star")]
        n = sum(p.numel() for p in vl.text.transformer.parameters()) + vl.text.token_embedding.weight.numel()
        return (lambda: vl.encode_with_pseudo_tokens(prompt, s)), n
    if spec["method"] == "vl-image-tower":
        x = torch.randn(1, 3, vl.image_size, vl.image_size, device=device)
        return (lambda: vl.model.encode_image(x)), sum(p.numel() for p in vl.model.visual.parameters())
    cfg = EncoderConfig(backbone=spec["backbone"], word_dim=spec.get("word_dim", vl.word_dim),
                        image_size=spec.get("size", 96))
    enc = QueryEncoder(cfg, vl=vl, imagenet_init=False).to(device).eval()
    size = vl.image_size if spec["backbone"] == "symmetric" else cfg.image_size
    x = torch.randn(1, 3, size, size, device=device)
    n = sum(p.numel() for p in enc.parameters())
    if spec["backbone"] == "symmetric":
        n += sum(p.numel() for p in vl.model.visual.parameters())
    return (lambda: enc(x)), n


def _measure(spec: dict, warmup: int, runs: int, threads: int, queue) -> None:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    try:
        torch.set_num_threads(threads)
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        row = {"model": _model_name(spec), "method": spec["method"], "backbone": spec["backbone"],
               "setting": spec["setting"], "stage": spec["stage"], "vl": spec.get("vl", "isa-world-vit")}
        with torch.inference_mode():
            fn, params = _build(spec, "cpu")
            flops = 0
            if spec["stage"] != STAGE_SEARCH:
                with FlopCounterMode(display=False) as fc:
                    fn()
                flops = fc.get_total_flops()
            else:
                flops = 2 * spec["gallery"] * spec.get("dim", 256)
            for _ in range(warmup):
                fn()
            times = []
            for _ in range(runs):
                t = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t) * 1000)
        rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        row.update(params=int(params), gflops=flops / 1e9, cpu_ms_p50=statistics.median(times),
                   cpu_ms_p90=sorted(times)[int(0.9 * (len(times) - 1))], peak_mem_mb=(rss1 - rss0) / 1024,
                   gpu_ms_p50=float("nan"), gpu_peak_mem_mb=float("nan"))
        if torch.cuda.is_available() and spec["stage"] != STAGE_SEARCH:
            torch.cuda.reset_peak_memory_stats()
            with torch.inference_mode():
                fn, _ = _build(spec, "cuda")
                for _ in range(warmup):
                    fn()
                torch.cuda.synchronize()
                gt = []
                for _ in range(runs):
                    t = time.perf_counter()
                    fn()
                    torch.cuda.synchronize()
                    gt.append((time.perf_counter() - t) * 1000)
            row.update(gpu_ms_p50=statistics.median(gt), gpu_peak_mem_mb=torch.cuda.max_memory_allocated() / 2**20)
        queue.put(row)
    except Exception as e:  # reported by the parent with the spec that failed
        queue.put({"error": f"{_model_name(spec)}: {type(e).__name__}: {e}"})


def run_efficiency(backbones: list[str], settings: list[str], warmup: int = 5, runs: int = 30,
                   threads: int | None = None) -> pd.DataFrame:
    import os

    threads = threads or os.cpu_count() or 1
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    rows = []
    for spec in tqdm(_specs(backbones, settings), desc="bench efficiency"):
        queue = ctx.Queue()
        proc = ctx.Process(target=_measure, args=(spec, warmup, runs, threads, queue))
        proc.start()
        row = queue.get()
        proc.join()
        if "error" in row:
            raise RuntimeError(row["error"])
        rows.append(row)
    return pd.DataFrame(rows)


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """The issue's target check: lightest ISA encoder vs the symmetric one at 224 px with ViT-B-32."""
    img = df[(df.setting == "real-224") & (df.stage == STAGE_IMAGE) & (df.vl == "ViT-B-32")]
    sym = img[img.method == "isa-symmetric"]
    isa = img[img.method == "isa"]
    if sym.empty or isa.empty:
        return pd.DataFrame()
    light = isa.sort_values("gflops").iloc[0]
    s = sym.iloc[0]
    return pd.DataFrame([{"lightest": light["model"], "symmetric": s["model"],
                          "flops_ratio": s["gflops"] / light["gflops"],
                          "cpu_latency_ratio": s["cpu_ms_p50"] / light["cpu_ms_p50"]}])


def register(sub) -> None:
    from ..models import SHIPPED_BACKBONES

    p = sub.add_parser("efficiency", help="params, FLOPs, CPU/GPU latency and memory of every query-side model",
                       description=__doc__.splitlines()[0])
    p.add_argument("--backbones", nargs="+", default=SHIPPED_BACKBONES)
    p.add_argument("--settings", nargs="+", choices=["world", "real-224"], default=["world", "real-224"])
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    p.add_argument("--out", default=str(RESULTS_DIR / "efficiency.csv"))
    p.set_defaults(func=_bench)


def _bench(args) -> int:
    from ..evaluation.results import write_table

    df = run_efficiency(args.backbones, args.settings, args.warmup, args.runs, args.threads)
    cols = ["model", "setting", "stage", "params", "gflops", "cpu_ms_p50", "cpu_ms_p90", "gpu_ms_p50", "peak_mem_mb"]
    print(df[cols].to_string(index=False, float_format="%.3f"))
    summary = summarize(df)
    if not summary.empty:
        print("\ntarget (>= 10x FLOPs, >= 5x CPU latency):")
        print(summary.to_string(index=False, float_format="%.1f"))
    if args.out:
        write_table(df, args.out)
        print(f"wrote {args.out}")
        if not summary.empty:
            target = args.out[:-len(".csv")] + "_target.csv" if args.out.endswith(".csv") else args.out + ".target"
            write_table(summary, target)
            print(f"wrote {target}")
    return 0
