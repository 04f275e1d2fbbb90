"""Faults for tests and scripts/fault_scenarios.py: a disk that fills up."""

from __future__ import annotations

import builtins
import contextlib
import errno
import io
import os
from pathlib import Path
from typing import Iterator


class _FillingFile:
    """A file whose writes fail with ENOSPC once the disk's budget is spent."""

    def __init__(self, fh, disk):
        self._fh, self._disk = fh, disk

    def write(self, data):
        n = memoryview(data).nbytes
        if n > self._disk["left"]:
            self._disk["left"] = 0
            raise OSError(errno.ENOSPC, "No space left on device")
        self._disk["left"] -= n
        return self._fh.write(data)

    def __getattr__(self, name):
        return getattr(self._fh, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._fh.close()

    def __iter__(self):
        return iter(self._fh)


@contextlib.contextmanager
def full_disk(root: Path, budget: int) -> Iterator[dict]:
    """Files opened for writing under ``root`` fail with ENOSPC after ``budget`` bytes."""
    disk = {"left": budget}
    real_open, real_fdopen = builtins.open, os.fdopen
    root = Path(os.path.realpath(root))

    def wrap(fh, mode, where):
        writing = any(c in str(mode) for c in "wax+")
        inside = where is not None and root in Path(os.path.realpath(where)).parents
        return _FillingFile(fh, disk) if writing and inside else fh

    def fake_open(file, mode="r", *a, **k):
        fh = real_open(file, mode, *a, **k)
        return wrap(fh, mode, file if isinstance(file, (str, os.PathLike)) else None)

    def fake_fdopen(fd, mode="r", *a, **k):
        fh = real_fdopen(fd, mode, *a, **k)
        return wrap(fh, mode, os.readlink(f"/proc/self/fd/{fd}"))

    saved = (builtins.open, io.open, os.fdopen)
    builtins.open = io.open = fake_open
    os.fdopen = fake_fdopen
    try:
        yield disk
    finally:
        builtins.open, io.open, os.fdopen = saved
