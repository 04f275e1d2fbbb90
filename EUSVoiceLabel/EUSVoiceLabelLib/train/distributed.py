"""Data-parallel training with ``torchrun`` + DistributedDataParallel.

``torchrun --nproc_per_node=K -m EUSVoiceLabelLib train COHORT --out MODEL ...`` starts K
processes; each holds the whole (small) training set, takes every K-th window of each global
batch, and DDP averages the gradients, so one optimiser step still sees ``--batch-size``
windows (the paper's 8), split over the K processes.  Backend: NCCL on GPUs (one GPU per
process, ``LOCAL_RANK``), gloo on CPU.

What equals single-process training:

- the sample order, the batches and the class weights (one shared seeded generator; every
  process draws the same permutation and keeps its own share);
- the loss: each process scales its share's loss by ``K * n_local / n_batch`` so the averaged
  gradient is the gradient of the whole batch's loss (paper eq. 2, divided by the batch size);
- the weights of all processes after every step (DDP keeps the replicas identical).

What does not: BatchNorm statistics.  On GPUs the layers are converted to SyncBatchNorm, so
they are computed over the whole batch and K-GPU training matches 1-GPU training up to the
order of float sums.  PyTorch has no SyncBatchNorm on CPU, so with gloo each process
normalises over its own share of the batch: training is equally valid but not bitwise the
single-process run.  A global batch smaller than K is padded by repeating windows (as
``DistributedSampler`` does).
"""

from __future__ import annotations

import gc
import logging
import os
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from ..core.errors import ConfigError
from ..core.pool import threads_per_worker

log = logging.getLogger(__name__)

_CONTEXT: Optional["DistContext"] = None


def launched_by_torchrun() -> bool:
    """True in a process started by torchrun with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@dataclass
class DistContext:
    """This process's place in a data-parallel run."""

    rank: int
    world: int
    local_rank: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, batch: torch.Tensor) -> torch.Tensor:
        """This process's share of a global batch of indices (every ``world``-th one)."""
        if len(batch) < self.world:  # pad like DistributedSampler: every rank needs samples
            reps = -(-self.world // max(1, len(batch)))
            batch = batch.repeat(reps)[:self.world]
        return batch[self.rank::self.world]

    def loss_scale(self, n_local: int, n_global: int) -> float:
        """Factor on the local mean loss so that DDP's gradient average equals the gradient
        of the global batch's mean loss."""
        return self.world * n_local / max(1, n_global)

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """``model`` as a DDP module (SyncBatchNorm on GPUs)."""
        if self.device.type == "cuda":
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
            return DDP(model, device_ids=[self.device.index], output_device=self.device.index)
        return DDP(model)

    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sum of ``values`` over all processes."""
        t = torch.tensor(list(values), dtype=torch.float64,
                         device=self.device if self.backend == "nccl" else "cpu")
        dist.all_reduce(t)
        return [float(v) for v in t.cpu()]

    def any(self, flag: bool) -> bool:
        """True on every process when ``flag`` is True on any of them, so that all of them take
        the same branch: a process stopping alone leaves the others in the next gradient
        all-reduce (gloo then fails with "Connection closed by peer", NCCL waits)."""
        return self.sum([1.0 if flag else 0.0])[0] > 0

    def barrier(self) -> None:
        if self.backend == "nccl":
            dist.barrier(device_ids=[self.device.index])
        else:
            dist.barrier()


def init_from_env(device: str = "auto") -> Optional[DistContext]:
    """Join the process group torchrun set up (idempotent); None when not under torchrun.

    ``device`` "auto"/"cuda" uses GPU ``LOCAL_RANK`` with NCCL when CUDA is available, else
    the CPU with gloo and ``cores / local processes`` torch threads.
    """
    global _CONTEXT
    if _CONTEXT is not None:
        return _CONTEXT
    if not launched_by_torchrun():
        return None

    rank = int(os.environ["RANK"])
    world = int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    want = str(device)
    use_cuda = want.startswith("cuda") or (want == "auto" and torch.cuda.is_available())
    if use_cuda:
        if not torch.cuda.is_available():
            raise ConfigError("CUDA was requested but no CUDA GPU is available",
                              hint="use --device cpu (gloo) under torchrun")
        if local >= torch.cuda.device_count():
            raise ConfigError(f"process {local} has no GPU ({torch.cuda.device_count()} "
                              "visible)", hint="use --nproc_per_node <= the number of GPUs")
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
        backend = "nccl"
    else:
        dev = torch.device("cpu")
        backend = "gloo"
        torch.set_num_threads(threads_per_worker(local_world))
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
    _CONTEXT = DistContext(rank, world, local, dev, backend)
    log.info("data-parallel process %d of %d on %s (%s)", rank, world, dev, backend)
    return _CONTEXT


def current() -> Optional[DistContext]:
    """The context of :func:`init_from_env`, initialising it from the environment if torchrun
    started this process and nothing has yet."""
    return _CONTEXT if _CONTEXT is not None else init_from_env("auto") \
        if launched_by_torchrun() else None


def shutdown() -> None:
    """Leave the process group (end of a torchrun command)."""
    global _CONTEXT

    if dist.is_available() and dist.is_initialized():
        # A training stopped mid-batch (a non-finite loss) leaves its DDP wrapper in reference
        # cycles of the exception's frames; freed only at interpreter exit, after the group,
        # its reducer aborted the process ("terminate called without an active exception",
        # SIGABRT) in 6 of 14 runs of test_ddp_loss_nan_in_one_process_stops_all_of_them, and
        # in none of 12 with this.  Free it while the group still exists.
        gc.collect()
        dist.destroy_process_group()
    _CONTEXT = None


def unwrap(model: Any) -> torch.nn.Module:
    """The module inside a DDP wrapper (or the model itself)."""
    return getattr(model, "module", model)


__all__ = ["DistContext", "init_from_env", "current", "shutdown", "unwrap",
           "launched_by_torchrun"]
