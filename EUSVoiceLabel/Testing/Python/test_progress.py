"""The progress/cancel protocol (core/progress.py) and the process pool helper (core/pool.py):
reporters, the JSON progress lines a background ``train`` process prints and a parent reads
back, and spawn pools that keep task order and stop on a cancelled run."""

from __future__ import annotations

import io
import subprocess
import sys
import time
from pathlib import Path

import pytest

from EUSVoiceLabelLib.core.pool import process_cores, run_tasks, spawn_pool, threads_per_worker
from EUSVoiceLabelLib.core.progress import (SILENT, CallbackProgress, Cancelled,
                                            CounterProgress, JsonProgress, TqdmProgress,
                                            as_progress, parse_progress_line)

LIB_PARENT = Path(__file__).resolve().parents[2]  # the folder holding EUSVoiceLabelLib


def _slow_square(x: int, delay: float) -> int:
    time.sleep(delay)
    return x * x


def test_json_lines_round_trip_with_nesting_and_other_output():
    out = io.StringIO()
    p = JsonProgress(out, min_interval=0.0)
    with p.task("LOPO proposed", total=2, unit="fold") as folds:
        with p.task("fold p1", total=3, unit="epoch") as epochs:
            for _ in range(3):
                epochs.advance(loss="0.5")
        folds.advance(patient="p1")
    lines = out.getvalue().splitlines()
    events = [parse_progress_line(line) for line in lines]
    assert all(e is not None for e in events)
    inner = [e for e in events if e.task == "fold p1"]
    assert [e.state for e in inner] == ["start", "update", "update", "update", "end"]
    assert inner[-1].done == 3 and inner[-1].fraction == 1.0 and inner[-1].depth == 1
    assert inner[-1].text() == "fold p1 3/3 epoch (loss 0.5)"
    outer = [e for e in events if e.task == "LOPO proposed"]
    assert outer[0].depth == 0 and outer[-1].done == 1 and outer[-1].fraction == 0.5
    for other in ("INFO: loading", "", "{not json", '{"progress": 99, "task": "x"}', "[1, 2]"):
        assert parse_progress_line(other) is None


def test_json_progress_is_throttled_but_reports_the_end():
    out = io.StringIO()
    p = JsonProgress(out, min_interval=60.0)
    with p.task("windows", total=1000, unit="window") as t:
        for _ in range(1000):
            t.advance()
    states = [parse_progress_line(x).state for x in out.getvalue().splitlines()]
    assert states == ["start", "update", "end"]  # the last update: done == total


def test_callback_reports_the_outermost_task_and_asks_to_stop():
    seen, stop = [], iter([False, False, True])
    p = CallbackProgress(lambda d, t: seen.append((d, t)), lambda: next(stop))
    with p.task("label", total=3) as outer:
        with p.task("nested", total=10) as inner:
            inner.advance(5)
        outer.advance()
        outer.update(2.6)
    assert seen == [(1, 3), (3, 3)]
    assert [p.cancelled(), p.cancelled(), p.cancelled()] == [False, False, True]
    assert not SILENT.cancelled() and not CallbackProgress().cancelled()


def test_as_progress_maps_the_public_argument_forms():
    assert as_progress(False) is SILENT and as_progress(None) is SILENT
    assert isinstance(as_progress(True), TqdmProgress)
    cb = as_progress(lambda d, t: None)
    assert isinstance(cb, CallbackProgress)
    assert as_progress(cb) is cb
    with pytest.raises(TypeError):
        as_progress("yes")


def test_counter_progress_adds_every_task_to_one_count():
    total = []
    p = CounterProgress(total.append)
    for name in ("p1", "p2"):
        with p.task(name, total=4) as t:
            t.advance(2)
            t.update(4)
    assert sum(total) == 8


def test_run_tasks_keeps_task_order_and_reports_completion_order():
    assert process_cores() >= 1 and threads_per_worker(10 ** 6) == 1
    done = []
    with spawn_pool(2) as pool:
        # the first task is the slowest: it finishes last
        res = run_tasks(pool, _slow_square, [(3, 0.6), (4, 0.0), (5, 0.0)],
                        on_result=lambda i, r: done.append(i))
        assert res == [9, 16, 25]
        assert done[-1] == 0 and sorted(done) == [0, 1, 2]
        ordered = []
        run_tasks(pool, _slow_square, [(3, 0.6), (4, 0.0)], ordered=True,
                  on_result=lambda i, r: ordered.append((i, r)))
        assert ordered == [(0, 9), (1, 16)]


def test_run_tasks_stops_when_a_result_handler_raises():
    started = time.perf_counter()

    def cancel(i, r):
        raise Cancelled("stop")

    with pytest.raises(Cancelled), spawn_pool(1) as pool:
        # one worker: the 20 tasks of 0.2 s queue behind the first; cancelling must not run
        # them all (4 s)
        run_tasks(pool, _slow_square, [(i, 0.2) for i in range(20)], on_result=cancel)
    assert time.perf_counter() - started < 3.5


def test_train_in_a_background_process_prints_json_progress(tmp_path):
    """What the Slicer module's 'Train from cohort folder' runs: the real command line with
    the arguments the module builds, whose progress lines the module parses."""
    from EUSVoiceLabelLib.slicer.support import train_arguments, write_tiny_procedure

    cohort = tmp_path / "cohort"
    write_tiny_procedure(cohort / "p1", seed=1)
    write_tiny_procedure(cohort / "p2", seed=2, labels=("bile_duct", "pancreas"))
    args = train_arguments(cohort, tmp_path / "m.pt", epochs=2, image_size="32x48",
                           device="cpu", batch_size=4)
    args += ["--frames", "5", "--width", "0.0625", "--cache", str(tmp_path / "cache")]
    env = {"PYTHONPATH": str(LIB_PARENT), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    events = [e for e in map(parse_progress_line, proc.stderr.splitlines()) if e is not None]
    train = [e for e in events if e.task == "train"]
    assert train[0].state == "start" and train[-1].state == "end"
    assert train[-1].done == train[-1].total == 2 and "loss" in train[-1].info
    assert any(e.task == "windows" and e.state == "end" for e in events)
    assert "%|" not in proc.stderr  # no tqdm bar
    assert (tmp_path / "m.pt").is_file()
