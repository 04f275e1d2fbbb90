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
import multiprocessing as mp
import os
import tempfile
import types
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from tqdm import tqdm

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
    cores = _cores()
    if dev.type == "cuda":
        n_gpu = torch.cuda.device_count()
        if n_gpu > 1:
            n = min(workers or n_gpu, n_gpu)
            return [f"cuda:{i}" for i in range(n)], max(1, cores // n)
        n = max(1, workers or 1)
        return [str(dev)] * n, max(1, cores // n)
    n = max(1, workers or cores)
    return [str(dev)] * n, max(1, cores // n)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        return os.cpu_count() or 1


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
              progress: bool = True) -> list[Any]:
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

    Returns:
        The FoldResults in the order of ``folds``.
    """
    if not folds:
        return []
    devices, threads = worker_plan(device, workers)
    n = min(len(devices), len(folds))
    devices = devices[:n]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    for d in devices:
        queue.put(d)
    log.info("running %d folds in %d processes (%s, %d torch threads each)", len(folds), n,
             ", ".join(sorted(set(devices))), threads)
    state_paths = state_paths or {}
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="eusvl_folds_") as tmp:
        meta = _share(ws, Path(tmp))
        with ProcessPoolExecutor(max_workers=n, mp_context=ctx, initializer=_init_worker,
                                 initargs=(meta, queue, threads)) as pool:
            pending = {pool.submit(_fold_task, f, cfg,
                                   str(state_paths[f.patient]) if f.patient in state_paths
                                   else None): f for f in folds}
            bar = tqdm(total=len(folds), desc=f"LOPO {cfg.variant} x{n}", unit="fold",
                       disable=not progress, dynamic_ncols=True)
            try:
                while pending:
                    done, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in done:
                        fold = pending.pop(fut)
                        res = fut.result()  # re-raises a worker's error here
                        results[fold.patient] = res
                        if on_result is not None:
                            on_result(res)
                        bar.update(1)
                        bar.set_postfix(patient=fold.patient)
            except BaseException:
                for fut in pending:
                    fut.cancel()
                raise
            finally:
                bar.close()
    return [results[f.patient] for f in folds]


__all__ = ["run_folds", "worker_plan"]
