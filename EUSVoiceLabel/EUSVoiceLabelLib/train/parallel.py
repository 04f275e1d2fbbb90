"""LOPO folds in parallel processes: one per GPU when there are several, else N CPU workers.

The folds are independent (:func:`.folds.run_fold` is a pure function of the windows, the
fold and the configuration, and every fold's seed depends only on the run's seed and the
held-out patient), so they can run in any order on any worker.  The window set is written once
as ``.npy`` files and memory-mapped by every worker (no copy of the frames per process), and
the workers are started with ``spawn`` (safe with CUDA and with OpenMP thread pools).

Equality: on CPU training is deterministic, so a parallel run gives bitwise the same pooled
predictions as a sequential one run with the same number of torch threads per fold (tested with
1 thread); with other thread counts the float sums are ordered differently and predictions
agree to ~1e-6.  On GPUs cuDNN autotuning makes any two runs differ slightly.
"""

from __future__ import annotations

import logging
import tempfile
import types
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

from ..core.pool import process_cores, run_tasks, spawn_context, spawn_pool, threads_per_worker
from ..core.progress import ProgressLike, as_progress
from ..nn.devices import select_device
from .folds import run_fold

log = logging.getLogger(__name__)

_WORKER: dict[str, Any] = {}


def worker_plan(device: str, workers: Optional[int]) -> tuple[list[str], int]:
    """(device of each worker, torch threads per worker).

    CUDA with several GPUs: one worker per GPU (``workers`` caps it).  Otherwise ``workers``
    processes on the one device, each with ``cores // workers`` torch threads (at least 1).
    """
    dev = select_device(device)
    if dev.type == "cuda":
        n_gpu = torch.cuda.device_count()
        if n_gpu > 1:
            n = min(workers or n_gpu, n_gpu)
            return [f"cuda:{i}" for i in range(n)], threads_per_worker(n)
        n = max(1, workers or 1)
        return [str(dev)] * n, threads_per_worker(n)
    n = max(1, workers or process_cores())
    return [str(dev)] * n, threads_per_worker(n)


def _share(ws: Any, folder: Path) -> dict[str, Any]:
    """Write the arrays of a window set for memory-mapping; return the small rest."""
    np.save(folder / "images.npy", np.ascontiguousarray(np.asarray(ws.images)))
    np.save(folder / "voices.npy", np.ascontiguousarray(np.asarray(ws.voices, np.float32)))
    np.save(folder / "labels.npy", np.asarray(ws.labels, np.int64))
    return {"folder": str(folder), "patients": list(ws.patients),
            "times": np.asarray(getattr(ws, "times", np.zeros(len(ws.labels)))),
            "labelset": ws.labelset, "settings": getattr(ws, "settings", None)}


def _init_worker(meta: dict[str, Any], devices: Any, threads: int) -> None:
    torch.set_num_threads(threads)
    folder = Path(meta["folder"])
    _WORKER["device"] = devices.get()
    if _WORKER["device"].startswith("cuda"):
        torch.cuda.set_device(torch.device(_WORKER["device"]))
    _WORKER["ws"] = types.SimpleNamespace(
        images=np.load(folder / "images.npy", mmap_mode="r"),
        voices=np.load(folder / "voices.npy", mmap_mode="r"),
        labels=np.load(folder / "labels.npy"), patients=meta["patients"],
        times=meta["times"], labelset=meta["labelset"], settings=meta["settings"])


def _fold_task(fold: Any, cfg: Any, state_path: Optional[str]) -> Any:
    res = run_fold(_WORKER["ws"], fold, cfg, device=_WORKER["device"], progress=False,
                   state_path=Path(state_path) if state_path else None)
    res.train_info["worker_device"] = _WORKER["device"]
    return res


def run_folds(ws: Any, folds: Sequence[Any], cfg: Any, device: str = "auto",
              workers: Optional[int] = None,
              state_paths: Optional[dict[str, Path]] = None,
              on_result: Optional[Callable[[Any], None]] = None,
              progress: ProgressLike = True) -> list[Any]:
    """Run :func:`.folds.run_fold` for every fold in worker processes.

    Args:
        ws: the window set (images/voices/labels/patients/labelset).
        folds: the :class:`.folds.Fold` objects to run.
        cfg: the TrainConfig.
        device: "auto", "cpu" or "cuda" (several GPUs: one worker each).
        workers: number of processes (default: the GPUs, else the CPU cores).
        state_paths: per held-out patient, its resume file.
        on_result: called in this process with each FoldResult as soon as it is done (e.g. to
            cache it), in completion order.
        progress: reporter of the folds done (see :mod:`..core.progress`).

    Returns:
        The FoldResults in the order of ``folds``.
    """
    if not folds:
        return []
    devices, threads = worker_plan(device, workers)
    n = min(len(devices), len(folds))
    devices = devices[:n]
    queue = spawn_context().Queue()
    for d in devices:
        queue.put(d)
    log.info("running %d folds in %d processes (%s, %d torch threads each)", len(folds), n,
             ", ".join(sorted(set(devices))), threads)
    state_paths = state_paths or {}
    tasks = [(f, cfg, str(state_paths[f.patient]) if f.patient in state_paths else None)
             for f in folds]
    with tempfile.TemporaryDirectory(prefix="eusvl_folds_") as tmp, \
            as_progress(progress).task(f"LOPO {cfg.variant} x{n}", total=len(folds),
                                       unit="fold") as task:

        def fold_done(i: int, res: Any) -> None:
            if on_result is not None:
                on_result(res)
            task.advance(patient=folds[i].patient)

        with spawn_pool(n, _init_worker, (_share(ws, Path(tmp)), queue, threads)) as pool:
            return run_tasks(pool, _fold_task, tasks, on_result=fold_done)
