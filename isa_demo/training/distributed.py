"""Several processes, one per GPU, through ``torchrun`` (torch.distributed, data parallel).

``torchrun --nproc_per_node 4 -m isa_demo train isa --data DIR ...`` starts four processes;
:func:`setup` reads torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``), joins the
process group (NCCL on CUDA, gloo on CPUs) and gives each process its GPU. Each rank draws its own
slice of every step's batch (:func:`batch_indices`), and after the backward pass the gradients
are averaged over the ranks (:func:`average_gradients`: one all-reduce of the flattened
gradients, what ``DistributedDataParallel`` does in buckets; the trained networks here are small,
and a plain all-reduce also covers the masked-pair trainer, which calls its network twice a step).
Rank 0 alone writes the state, the checkpoint and the progress bar. Without torchrun everything
here is a no-op.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    device: str = "cpu"

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


SINGLE = Dist()  # one process (no torchrun)


def setup(device: str) -> Dist:
    """This process's place under torchrun (a single process otherwise) and its device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(0, 1, device)
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = str(device).startswith("cuda")
    if cuda:
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), device)


def barrier(d: Dist) -> None:
    if d.active:
        import torch.distributed as dist

        dist.barrier()


def average_gradients(params, d: Dist) -> None:
    """Average the gradients of ``params`` over the ranks (in place)."""
    if not d.active:
        return
    import torch.distributed as dist

    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= d.world
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone()
        offset += n


def batch_indices(step: int, batch_size: int, n: int, seed: int, d: Dist = SINGLE) -> np.ndarray:
    """The rows of this rank's share of step ``step``: the global batch of ``batch_size x world``
    rows walks a fresh seeded permutation of ``n`` rows per epoch (a single process: the
    trainers' original order), and each rank takes its own ``batch_size`` of it."""
    total = batch_size * d.world
    epoch, k = divmod(step * total, n)
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    idx = perm[k:k + total] if k + total <= n else perm[:total]
    return idx[d.rank * batch_size:(d.rank + 1) * batch_size] if d.active else idx
