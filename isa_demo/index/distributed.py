"""Encoding an image folder on Ray (``index build --engine ray``).

Ray Data runs the work: the sorted file list is the dataset, a batched decoding stage reads,
hashes and preprocesses each file with :func:`isa_demo.index.encode.read_image_file` (the same
skip-and-report rules as the single-process build: a bad file becomes a reason, never an
error), and ``map_batches`` with a pool of model actors (:class:`ImageEncoder`: the VL model's
image tower, shipped to the workers through the object store, so a worker needs neither the
checkpoint file nor the text tower) encodes them: one actor per GPU when the cluster has GPUs,
CPU actors otherwise. The driver writes what comes back as embedding shards
(:mod:`isa_demo.index.shards`), each as soon as all of its files are in; the index is built from
the shards afterwards, with the same ids as the single-process build.

A worker that dies (killed, out of memory, a lost node) is restarted and its batch retried
(``max_restarts`` / ``max_task_retries``); if the work still fails, the shards written so far
stay and a rerun of the same command resumes from them.

With no address a local Ray is started for the build (and stopped after); with one
(``host:port``, ``ray://host:port`` or ``auto``) the build runs on that cluster. When Ray is
already initialized in this process (a notebook, the tests), that session is used as it is.
"""
from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import socket
import time
import warnings
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from ..common import require_extra
from .encode import GalleryError, Progress, has_vector, read_image_file
from .shards import ShardSet

FEATURE = "the Ray engine (--engine ray)"
RETRIES = 3  # restarts of a dead worker, retries of its batch (bounded: a worker that dies every time ends the run)
CONNECT_TIMEOUT_S = 5.0


class ImageEncoder:
    """What a Ray worker holds of the VL model: the image tower and its preprocessing (picklable,
    on the CPU until :meth:`to`). ``encoder(x)`` gives the same normalized features as
    :func:`isa_demo.index.encode.encode_tensor` (fp16 autocast on CUDA)."""

    def __init__(self, vl):
        self.visual = copy.deepcopy(vl.model.visual).cpu().eval().requires_grad_(False)
        self.preprocess = vl.preprocess
        self.embed_dim = int(vl.embed_dim)
        self.identity = vl.identity()
        from PIL import Image

        self.input_shape = tuple(self.preprocess(Image.new("RGB", (32, 32))).shape)
        self.device = "cpu"

    def to(self, device: str) -> "ImageEncoder":
        self.visual.to(device)
        self.device = device
        return self

    def __call__(self, x: np.ndarray) -> np.ndarray:
        cuda = str(self.device).startswith("cuda")
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16, enabled=cuda):
            f = self.visual(torch.from_numpy(np.ascontiguousarray(x)).to(self.device))
        return F.normalize(f.float(), dim=-1).cpu().numpy()


# ---------------------------------------------------------------------- the two stages
def decode_batch(batch: dict, transform: Callable, shape: tuple) -> dict:
    """Ray Data stage 1: files -> ``info`` (JSON, one per file) and preprocessed pixels (zeros for
    files without a tensor)."""
    pixels = np.zeros((len(batch["i"]), *shape), np.float32)
    infos = []
    for j, path in enumerate(batch["path"]):
        info, x = read_image_file(Path(str(path)), transform)
        if x is not None:
            pixels[j] = x.numpy()
        infos.append(json.dumps(info))
    return {"i": batch["i"], "info": np.array(infos, dtype=object), "pixels": pixels}


class EncodeWorker:
    """Ray Data stage 2, one model per actor: pixels -> features (zeros for files without one)."""

    def __init__(self, encoder: ImageEncoder, use_gpu: bool, threads: int):
        torch.set_num_threads(max(1, int(threads)))
        self.encoder = encoder.to("cuda" if use_gpu and torch.cuda.is_available() else "cpu")

    def __call__(self, batch: dict) -> dict:
        ok = np.array([has_vector(json.loads(s)) for s in batch["info"]], dtype=bool)
        feats = np.zeros((len(ok), self.encoder.embed_dim), np.float32)
        if ok.any():
            feats[ok] = self.encoder(batch["pixels"][ok])
        return {"i": batch["i"], "info": batch["info"], "feature": feats}


# ---------------------------------------------------------------------- the session
def check_address(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Fail fast, with the address in the message, when nothing answers at a Ray address."""
    if address == "auto":
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise GalleryError(f"--ray-address {address!r} is not host:port, ray://host:port or auto")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise GalleryError(f"no Ray cluster answers at {address} ({e.strerror or e}); start one (`ray start --head`) "
                           f"or leave out --ray-address to run on a local Ray") from None


def _quiet() -> None:
    for name in ("ray", "ray.data", "ray._private", "ray.data._internal"):
        logging.getLogger(name).setLevel(logging.ERROR)


@contextlib.contextmanager
def ray_session(address: str | None = None, workers: int | None = None) -> Iterator[dict]:
    """A Ray connection for one build: ``address`` (a cluster), or a local Ray sized for
    ``workers`` CPU workers; an already initialized Ray is used as it is (and left running).
    Yields the cluster's resources (``ray.cluster_resources()``)."""
    ray = require_extra("ray", FEATURE)
    require_extra("ray.data", FEATURE)
    _quiet()
    if address:
        check_address(address)
    if ray.is_initialized():
        yield ray.cluster_resources()
        return
    kw: dict = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if address:
        import isa_demo

        kw["runtime_env"] = {"py_modules": [os.path.dirname(isa_demo.__file__)]}  # the cluster runs this code
    else:
        gpus = torch.cuda.device_count()
        want = workers or (gpus or max(1, (os.cpu_count() or 2) - 1))
        kw.update(num_cpus=max(2, want + 1) if not gpus else max(2, min(os.cpu_count() or 2, 8)), num_gpus=gpus)
    try:
        ray.init(address=address or None, **kw)
    except Exception as e:  # ConnectionError, RuntimeError, TimeoutError: Ray's own words, one line
        text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        where = f"the Ray cluster at {address}" if address else "a local Ray"
        raise GalleryError(f"cannot start {where}: {text}") from None
    try:
        yield ray.cluster_resources()
    finally:
        ray.shutdown()


# ---------------------------------------------------------------------- the driver
def encode_to_shards(encoder: ImageEncoder, files: list[Path], work: str | os.PathLike, *,
                     address: str | None = None, workers: int | None = None, batch_size: int = 64,
                     shard_files: int = 4096, progress: Callable | None = None, desc: str = "encode (ray)",
                     stats: dict | None = None) -> ShardSet:
    """Encode ``files`` on Ray into shards under ``work`` (resuming the shards already there).

    ``workers``: model actors (default: one per GPU of the cluster, else its CPUs less one).
    ``stats``: filled with ``first_batch_s`` (start-up: workers and model shipped), ``total_s``
    and ``images`` (for throughput measurements)."""
    shards = ShardSet.open(work, files, encoder.identity, encoder.embed_dim, shard_files)
    todo = shards.missing()
    if not todo:
        return shards
    items = [{"i": i, "path": str(files[i])} for k in todo for i in shards.range(k)]
    with ray_session(address, workers) as res:
        import ray
        import ray.data

        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        gpus = int(res.get("GPU", 0))
        n = int(workers or gpus or max(1, int(res.get("CPU", 2)) - 1))
        use_gpu = gpus > 0
        ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items) // batch_size, 1000)))
        with warnings.catch_warnings():  # Ray 2.60 names no parameter for bounded retries yet; these still apply
            warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
            ds = ds.map_batches(decode_batch, fn_kwargs={"transform": encoder.preprocess,
                                                         "shape": encoder.input_shape},
                                batch_size=batch_size, batch_format="numpy", num_cpus=1, max_retries=RETRIES)
            ds = ds.map_batches(EncodeWorker, fn_constructor_args=(encoder, use_gpu, 1), batch_size=batch_size,
                                batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=n),
                                num_gpus=1 if use_gpu else 0, num_cpus=1 if not use_gpu else 0.5,
                                max_restarts=RETRIES, max_task_retries=RETRIES)
        pending: dict[int, dict[int, tuple[dict, np.ndarray]]] = {}
        bar = Progress(len(items), f"{desc} on {n} {'GPU' if use_gpu else 'CPU'} worker(s)", progress)
        t0 = time.perf_counter()
        try:
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                if stats is not None and "first_batch_s" not in stats:
                    stats.update(first_batch_s=time.perf_counter() - t0, first_batch=len(batch["i"]))
                for i, info, f in zip(batch["i"].tolist(), batch["info"], batch["feature"]):
                    k = shards.shard_of(i)
                    got = pending.setdefault(k, {})
                    got[i] = (json.loads(info), f)
                    if len(got) == len(shards.range(k)):
                        rows = [got[j] for j in shards.range(k)]
                        feats = [f for info, f in rows if has_vector(info)]
                        shards.write(k, [info for info, _ in rows],
                                     np.stack(feats) if feats else np.empty((0, encoder.embed_dim), np.float32))
                        del pending[k]
                bar.update(len(batch["i"]))
        except ray.exceptions.RayError as e:
            text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            done = len(shards) - len(shards.missing())
            raise GalleryError(f"the Ray workers failed ({type(e).__name__}: {text}); {done} "
                               f"of {len(shards)} shard(s) are done and kept in {shards.root}: rerun the same command "
                               f"to resume. Nothing was written to the index.") from None
        finally:
            bar.close()
        if stats is not None:
            stats.update(total_s=time.perf_counter() - t0, images=len(items))
    if shards.missing():
        raise GalleryError(f"the Ray run ended with {len(shards.missing())} shard(s) incomplete in {shards.root}; "
                           f"rerun the same command to resume")
    return shards
