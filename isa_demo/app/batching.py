"""Concurrent queries, encoded and searched as one batch.

Each request is checked and its reference decoded on its own thread (its own messages, as
before); then :meth:`QueryBatcher.run` hands the decoded image and cleaned modifier to one worker
thread, which takes every query waiting for the same method (up to ``max_batch``) and runs the
method's two stages and the gallery search once for all of them. A request waits only while the
batch before it runs: there is no timer, so a lone query is a batch of one and costs what it did.

If a batch fails as a whole, its queries are run one by one, so that one query's problem is that
query's message and nobody else's.
"""
from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch


@dataclass
class BatchOutput:
    """What one query gets back: the batch's reference (``index`` is its row), its query
    features ``(1, D)``, the top ``k_searched`` ``(scores, ids)`` rows, the batch's stage times and
    the time it waited for the batch to start."""

    ref: Any
    index: int
    query: torch.Tensor
    scores: Any
    ids: Any
    stage_ms: dict[str, float]
    wait_ms: float
    batch_size: int


@dataclass
class _Job:
    key: Any
    method: Any
    image: Any
    text: str
    k: int
    submitted: float = field(default_factory=time.perf_counter)
    done: threading.Event = field(default_factory=threading.Event)
    result: BatchOutput | None = None
    error: BaseException | None = None


class QueryBatcher:
    """One worker thread that runs waiting queries of the same method as one batch.

    ``search(q, k) -> (scores, ids)`` searches the gallery for query features ``(B, D)``.
    ``max_batch`` 1 runs every query on its own (still on the worker thread)."""

    def __init__(self, search: Callable, max_batch: int = 16):
        self.search = search
        self.max_batch = max(1, int(max_batch))
        self._jobs: queue.Queue[_Job] = queue.Queue()
        self._held: list[_Job] = []  # taken from the queue, waiting for a batch of their own method
        self._worker: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self.batches = 0
        self.queries = 0

    # ------------------------------------------------------------------ the request side
    def run(self, key, method, image, text: str, k: int) -> BatchOutput:
        """Run one query (``key``: its variant; queries of one key share a batch); raises what
        its own stages raised."""
        job = _Job(key, method, image, text, int(k))
        self._ensure_worker()
        self._jobs.put(job)
        job.done.wait()
        if job.error is not None:
            raise job.error
        return job.result

    def _ensure_worker(self) -> None:
        if self._worker is not None and self._worker.is_alive():
            return
        with self._start_lock:
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._loop, name="isa-demo-batcher", daemon=True)
                self._worker.start()

    # ------------------------------------------------------------------ the worker
    def _next_batch(self) -> list[_Job]:
        first = self._held.pop(0) if self._held else self._jobs.get()
        batch, rest = [first], []
        for job in self._held:  # held jobs first: they are older
            (batch if job.key == first.key and len(batch) < self.max_batch else rest).append(job)
        while len(batch) < self.max_batch:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            (batch if job.key == first.key else rest).append(job)
        self._held = rest
        return batch

    def _loop(self) -> None:
        while True:
            batch = self._next_batch()
            try:
                self._run(batch)
            except Exception:  # noqa: BLE001 - alone, each query gets its own error
                for job in batch:
                    try:
                        self._run([job])
                    except BaseException as e:  # noqa: BLE001 - handed to the waiting request
                        job.error = e
            finally:
                for job in batch:
                    if job.result is None and job.error is None:
                        job.error = RuntimeError("the query batch stopped without an answer")
                    job.done.set()

    def _run(self, batch: list[_Job]) -> None:
        m = batch[0].method
        start = time.perf_counter()
        stages = m.timing_stages
        stage_ms: dict[str, float] = {}
        with torch.inference_mode():
            t = time.perf_counter()
            ref = m.encode_reference([j.image for j in batch] if m.uses_image else None)
            if len(stages) > 1:
                stage_ms[f"{stages[0]}_ms"] = (time.perf_counter() - t) * 1000.0
                t = time.perf_counter()
            q = m.compose(ref, [j.text for j in batch])
            stage_ms[f"{stages[-1]}_ms"] = (time.perf_counter() - t) * 1000.0
        q = q.detach().cpu()
        t = time.perf_counter()
        scores, ids = self.search(q.numpy(), max(j.k for j in batch))
        stage_ms["search_ms"] = (time.perf_counter() - t) * 1000.0
        self.batches += 1
        self.queries += len(batch)
        for i, job in enumerate(batch):
            job.result = BatchOutput(ref, i if not ref.empty else 0, q[i:i + 1], scores[i:i + 1], ids[i:i + 1],
                                     dict(stage_ms), (start - job.submitted) * 1000.0, len(batch))
