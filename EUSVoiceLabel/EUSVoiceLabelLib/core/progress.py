"""One protocol for the progress and cancellation of long work.

Every long loop of the package (windows of a cohort, training epochs, LOPO folds, mention
detection, synthesis, labelling, export) reports through a :class:`Progress` reporter::

    with progress.task("train", total=epochs, unit="epoch") as task:
        for epoch in range(epochs):
            if progress.cancelled():   # checked only where stopping is safe
                ...
            task.advance(loss="0.1234")

A task opened while another is open is nested in it (a fold's epochs inside the LOPO folds).
Reporters:

- :class:`Progress` itself: silent, never cancelled (:data:`SILENT`).
- :class:`TqdmProgress`: tqdm bars on stderr, one line per open task (the command line).
- :class:`CallbackProgress`: ``callback(done, total)`` for the outermost task and a
  ``should_stop()`` check, e.g. the Slicer module's progress dialog and its Cancel button.
- :class:`JsonProgress`: one JSON object per line (:func:`progress_line`), which a parent
  process reads back with :func:`parse_progress_line` (the Slicer module's background
  ``train`` process, started with ``--progress json``).
- :class:`CounterProgress`: passes every step to one counter, e.g. a job's task or a shared
  counter that the parent of worker processes polls (synthesis in a process pool).

Public functions take ``progress=`` as a reporter, or as ``True`` (bars) / ``False`` / ``None``
(silent) / a ``callback(done, total)``; :func:`as_progress` turns each into a reporter.
What stops where when :meth:`Progress.cancelled` turns True is said by each function (labelling
keeps the windows done so far, detection raises :class:`Cancelled`, training saves its
position).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, TextIO, Union

#: Version of the JSON progress line format (the ``"progress"`` key holds it).
PROGRESS_FORMAT = 1


class Cancelled(Exception):
    """Work stopped because its reporter's :meth:`Progress.cancelled` returned True."""


class ProgressTask:
    """One unit of long work: ``total`` steps of ``unit`` (None: unknown), ``done`` so far,
    and ``info`` (short key -> text, e.g. the loss) shown beside it.  Use as a context manager
    or call :meth:`finish`."""

    def __init__(self, reporter: "Progress", description: str, total: Optional[float],
                 unit: str, depth: int, done: float = 0, transient: bool = False) -> None:
        self.reporter = reporter
        self.description = description
        self.total = total
        self.unit = unit
        self.depth = depth
        self.done = done
        self.transient = transient
        self.info: dict[str, str] = {}
        self.finished = False

    def advance(self, n: float = 1, **info: Any) -> None:
        """``n`` more steps done (``info`` replaces the shown values it names)."""
        self.update(self.done + n, **info)

    def update(self, done: float, **info: Any) -> None:
        """``done`` steps done in all."""
        self.done = done
        self.info.update({k: str(v) for k, v in info.items()})
        self.reporter._changed(self)

    def restart(self) -> None:
        """Back to no step done (the work starts over)."""
        self.update(0)

    @property
    def fraction(self) -> float:
        return min(1.0, self.done / self.total) if self.total else 0.0

    def finish(self) -> None:
        if not self.finished:
            self.finished = True
            self.reporter._close(self)

    def __enter__(self) -> "ProgressTask":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.finish()


class Progress:
    """A progress reporter; this base class shows nothing and is never cancelled.

    Subclasses override :meth:`cancelled` and the hooks ``_opened`` / ``_changed`` /
    ``_closed``, which receive the :class:`ProgressTask`.
    """

    def __init__(self) -> None:
        self._open: list[ProgressTask] = []

    def task(self, description: str, total: Optional[float] = None, unit: str = "it", *,
             done: float = 0, transient: bool = False) -> ProgressTask:
        """Open a task (nested in the tasks still open).  ``done``: steps already done (a
        resumed run); ``transient``: a bar that disappears when it is finished."""
        t = ProgressTask(self, description, total, unit, len(self._open), done, transient)
        self._open.append(t)
        self._opened(t)
        return t

    def cancelled(self) -> bool:
        """True when the user asked the work to stop."""
        return False

    def _close(self, task: ProgressTask) -> None:
        if task in self._open:
            self._open.remove(task)
        self._closed(task)

    # hooks
    def _opened(self, task: ProgressTask) -> None:
        pass

    def _changed(self, task: ProgressTask) -> None:
        pass

    def _closed(self, task: ProgressTask) -> None:
        pass


#: The silent reporter (stateless apart from its open tasks, which it never shows).
SILENT = Progress()


class TqdmProgress(Progress):
    """tqdm progress bars (stderr), the outermost task on the first line; a nested or
    ``transient`` task's bar is removed when it finishes."""

    def __init__(self) -> None:
        super().__init__()
        # deferred: tqdm is one of the requirements the Slicer module installs on first use,
        # and the module imports this file before that
        from tqdm.auto import tqdm

        self._tqdm = tqdm
        self._bars: dict[int, Any] = {}

    def _opened(self, task: ProgressTask) -> None:
        self._bars[id(task)] = self._tqdm(
            total=task.total, initial=task.done, desc=task.description, unit=task.unit,
            position=task.depth, leave=task.depth == 0 and not task.transient,
            dynamic_ncols=True)

    def _changed(self, task: ProgressTask) -> None:
        bar = self._bars.get(id(task))
        if bar is None:
            return
        if task.info:
            bar.set_postfix(task.info, refresh=False)
        if task.done < bar.n:
            bar.reset(total=task.total)
        bar.update(task.done - bar.n)

    def _closed(self, task: ProgressTask) -> None:
        bar = self._bars.pop(id(task), None)
        if bar is not None:
            bar.close()


class CallbackProgress(Progress):
    """``callback(done, total)`` (whole numbers) whenever the outermost task moves;
    :meth:`cancelled` asks ``should_stop()``.  Nested tasks are not reported."""

    def __init__(self, callback: Optional[Callable[[int, int], None]] = None,
                 should_stop: Optional[Callable[[], bool]] = None) -> None:
        super().__init__()
        self.callback = callback
        self.should_stop = should_stop

    def cancelled(self) -> bool:
        return bool(self.should_stop is not None and self.should_stop())

    def _changed(self, task: ProgressTask) -> None:
        if self.callback is not None and task.depth == 0:
            self.callback(int(round(task.done)), int(round(task.total or 0)))


class CounterProgress(Progress):
    """Passes the steps of all its tasks to one counter, ``add(n)``: e.g. the task of a whole
    job that runs parts one by one (``add=job_task.advance``), or, in a worker process, a
    shared ``multiprocessing.Value`` that the parent polls."""

    def __init__(self, add: Callable[[float], None]) -> None:
        super().__init__()
        self.add = add
        self._seen: dict[int, float] = {}

    def _changed(self, task: ProgressTask) -> None:
        step = task.done - self._seen.get(id(task), 0)
        self._seen[id(task)] = task.done
        self.add(step)

    def _closed(self, task: ProgressTask) -> None:
        self._seen.pop(id(task), None)


# --------------------------------------------------------------------------- JSON lines
@dataclass(frozen=True)
class ProgressEvent:
    """A progress line read back by :func:`parse_progress_line`.

    ``state`` is "start", "update" or "end"; ``depth`` 0 is the outermost task.
    """

    task: str
    done: float
    total: Optional[float]
    unit: str = ""
    depth: int = 0
    state: str = "update"
    info: dict = field(default_factory=dict)

    @property
    def fraction(self) -> float:
        return min(1.0, self.done / self.total) if self.total else 0.0

    def text(self) -> str:
        """One readable line: ``train 20/20 epoch (loss 0.1234)``."""
        total = "" if self.total is None else f"/{self.total:g}"
        info = ", ".join(f"{k} {v}" for k, v in self.info.items())
        return f"{self.task} {self.done:g}{total} {self.unit}".rstrip() + \
            (f" ({info})" if info else "")


def progress_line(task: ProgressTask, state: str = "update") -> str:
    """The JSON line of a task's state: ``{"progress": 1, "task": ..., "done": ...,
    "total": ..., "unit": ..., "depth": ..., "state": ..., "info": {...}}``."""
    return json.dumps({"progress": PROGRESS_FORMAT, "task": task.description,
                       "done": task.done, "total": task.total, "unit": task.unit,
                       "depth": task.depth, "state": state, "info": task.info})


def parse_progress_line(line: str) -> Optional[ProgressEvent]:
    """The :class:`ProgressEvent` of a :func:`progress_line`, or None for any other line."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        data = json.loads(line)
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("progress") != PROGRESS_FORMAT:
        return None
    try:
        total = data.get("total")
        return ProgressEvent(str(data.get("task", "")), float(data.get("done", 0)),
                             None if total is None else float(total), str(data.get("unit", "")),
                             int(data.get("depth", 0)), str(data.get("state", "update")),
                             dict(data.get("info") or {}))
    except (TypeError, ValueError):
        return None


class JsonProgress(Progress):
    """Writes :func:`progress_line` lines to ``stream`` (default stderr): when a task starts,
    ends, and at most every ``min_interval`` s in between."""

    def __init__(self, stream: Optional[TextIO] = None, min_interval: float = 0.2) -> None:
        super().__init__()
        self.stream = stream
        self.min_interval = min_interval
        self._last: dict[int, float] = {}

    def _write(self, task: ProgressTask, state: str) -> None:
        stream = self.stream or sys.stderr
        stream.write(progress_line(task, state) + "\n")
        stream.flush()

    def _opened(self, task: ProgressTask) -> None:
        self._last[id(task)] = time.monotonic()
        self._write(task, "start")

    def _changed(self, task: ProgressTask) -> None:
        now = time.monotonic()
        if now - self._last.get(id(task), 0.0) >= self.min_interval or \
                (task.total is not None and task.done >= task.total):
            self._last[id(task)] = now
            self._write(task, "update")

    def _closed(self, task: ProgressTask) -> None:
        self._last.pop(id(task), None)
        self._write(task, "end")


# --------------------------------------------------------------------------- the public API
ProgressLike = Union[Progress, bool, None, Callable[[int, int], None]]


def as_progress(progress: ProgressLike) -> Progress:
    """The reporter a public function's ``progress=`` argument means: a :class:`Progress` as
    it is, True -> :class:`TqdmProgress`, False / None -> :data:`SILENT`, a callable ->
    :class:`CallbackProgress` with it."""
    if isinstance(progress, Progress):
        return progress
    if progress is None or progress is False:
        return SILENT
    if progress is True:
        return TqdmProgress()
    if callable(progress):
        return CallbackProgress(progress)
    raise TypeError(f"progress must be a Progress, a bool or a callable, not {progress!r}")


__all__ = ["Progress", "ProgressTask", "TqdmProgress", "CallbackProgress", "CounterProgress",
           "JsonProgress", "ProgressEvent", "ProgressLike", "Cancelled", "SILENT",
           "as_progress", "progress_line", "parse_progress_line", "PROGRESS_FORMAT"]
