"""Worker processes: how many cores this process may use, and spawn-based process pools.

Every pool of the package (mention detection's pieces, detection evaluation's patients, LOPO
folds, synthetic patients, the benchmark's fresh labelling process) is made by
:func:`spawn_pool` and fed by :func:`run_tasks`.  Workers are started with ``spawn``: safe in
any host (no forked copies of a GUI, of CUDA or of OpenMP thread pools), the same on every OS.
Standard library only.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any, Callable, Iterator, Optional, Sequence


def process_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS has one, else all)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS / Windows
        return os.cpu_count() or 1


def threads_per_worker(workers: int) -> int:
    """torch threads for each of ``workers`` processes sharing this process's cores."""
    return max(1, process_cores() // max(1, int(workers)))


def spawn_context() -> multiprocessing.context.SpawnContext:
    """The ``spawn`` multiprocessing context every pool and child process uses."""
    return multiprocessing.get_context("spawn")


#: How often a worker checks that the process that started it is still there.
PARENT_CHECK_S = 1.0


def _watch_parent(parent_pid: int) -> None:
    """End this worker when its parent is gone (killed without the chance to shut the pool
    down): its results would go nowhere, and it would hold cores and memory for nothing."""
    while True:
        time.sleep(PARENT_CHECK_S)
        if os.getppid() != parent_pid:
            os._exit(1)


def _start_worker(parent_pid: int, initializer: Optional[Callable[..., None]],
                  initargs: Sequence[Any]) -> None:
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True,
                     name="eusvoicelabel-parent-watch").start()
    if initializer is not None:
        initializer(*initargs)


@contextlib.contextmanager
def spawn_pool(workers: int, initializer: Optional[Callable[..., None]] = None,
               initargs: Sequence[Any] = ()) -> Iterator[ProcessPoolExecutor]:
    """A :class:`~concurrent.futures.ProcessPoolExecutor` of ``workers`` spawned processes,
    each set up by ``initializer(*initargs)``; shut down (waiting for its workers) on exit.
    A worker whose parent dies (``kill``, a crash) ends itself within :data:`PARENT_CHECK_S`."""
    with ProcessPoolExecutor(max_workers=max(1, int(workers)), mp_context=spawn_context(),
                             initializer=_start_worker,
                             initargs=(os.getpid(), initializer, tuple(initargs))) as pool:
        yield pool


def run_tasks(pool: ProcessPoolExecutor, fn: Callable[..., Any], tasks: Sequence[Sequence[Any]],
              on_result: Optional[Callable[[int, Any], None]] = None, ordered: bool = False,
              poll_s: Optional[float] = None,
              on_poll: Optional[Callable[[], None]] = None) -> list[Any]:
    """``fn(*task)`` for every task in ``pool``; returns the results in task order.

    Args:
        on_result: called in this process as ``on_result(index, result)`` for each task as it
            finishes (in task order when ``ordered``); raising from it (e.g. a cancelled
            run) stops the run.
        poll_s, on_poll: ``on_poll()`` is called at least every ``poll_s`` seconds while
            waiting (e.g. to show a counter the workers update).

    A worker's error is re-raised here; on any error the tasks not yet started are cancelled.
    """
    futures: list[Future] = [pool.submit(fn, *task) for task in tasks]
    index = {f: i for i, f in enumerate(futures)}
    results: list[Any] = [None] * len(futures)
    finished: set[int] = set()
    emitted = 0
    pending = set(futures)
    try:
        while pending:
            done, pending = wait(pending, timeout=poll_s, return_when=FIRST_COMPLETED)
            if on_poll is not None:
                on_poll()
            for fut in sorted(done, key=index.__getitem__):
                i = index[fut]
                results[i] = fut.result()
                finished.add(i)
                if on_result is not None and not ordered:
                    on_result(i, results[i])
            while ordered and emitted in finished:
                if on_result is not None:
                    on_result(emitted, results[emitted])
                emitted += 1
    except BaseException:
        for fut in futures:
            fut.cancel()
        raise
    return results


__all__ = ["process_cores", "threads_per_worker", "spawn_context", "spawn_pool", "run_tasks"]
