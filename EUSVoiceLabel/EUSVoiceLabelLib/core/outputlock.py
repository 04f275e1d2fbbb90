"""One writer per output: an advisory lock beside each command's output file or folder.

Two runs pointed at the same ``--out`` would otherwise interleave their files (half of one
run's labels beside the other's heat maps).  Every command therefore holds
:func:`output_lock` on its output while it writes: a second run is refused at once with a
message naming the run that holds it.

Design:

- The lock file lies *beside* the output (``<parent>/.<name>.lock``), not inside it, so it
  never shows up among the outputs and survives commands that replace the output folder.
- It is an OS lock (``fcntl.flock`` on POSIX, ``msvcrt.locking`` on Windows) held on an open
  file, so the OS releases it when the process dies: a killed run never leaves a stale lock.
  The file itself holds the owner's pid and command for the refusal message only.
- Re-entrant within a process (the command line and the library function it calls may both
  take it).
- When taken, leftovers of killed runs (``.<name>.<random>.part...`` temporary files of
  :mod:`.fileio`) are removed: with the lock held nobody else can be writing them.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
from pathlib import Path
from typing import Iterator, Optional

from .errors import OutputError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None
    import msvcrt

LOCK_SUFFIX = ".lock"
# fileio.atomic_path names its temporary files ".<name>.<mkstemp random>.part<suffix>".
_PART_RE = re.compile(r"^\..+\.part(\..*)?$")

_held: dict[str, tuple[int, int]] = {}  # resolved lock path -> (fd, depth)
_held_guard = threading.Lock()


def lock_path_for(out: os.PathLike | str) -> Path:
    """The lock file guarding ``out`` (a file or a folder)."""
    out = Path(os.path.abspath(os.fspath(out)))
    return out.parent / f".{out.name}{LOCK_SUFFIX}"


def _try_lock(fd: int) -> bool:
    if fcntl is None:  # Windows
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _unlock(fd: int) -> None:
    if fcntl is None:  # Windows
        with contextlib.suppress(OSError):
            os.lseek(fd, 0, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
        return
    fcntl.flock(fd, fcntl.LOCK_UN)


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        return f"pid {info.get('pid')}, '{info.get('command', '?')}'"
    except (OSError, ValueError, AttributeError):
        return "another process"


def _acquire(path: Path, command: str) -> int:
    """Open and lock ``path``; OutputError if another process holds it."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the output folder ({exc.strerror})",
                          path.parent) from None
    for _ in range(10):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise OutputError(f"cannot create the lock file ({exc.strerror})", path,
                              "choose an output folder you can write to") from None
        if not _try_lock(fd):
            os.close(fd)
            raise OutputError(f"is being written by another eusvoicelabel run "
                              f"({_holder(path)})", path.parent / path.name[1:-len(LOCK_SUFFIX)],
                              "wait for it to finish or choose another --out")
        # The previous owner may have unlinked the file between our open and our lock: then we
        # hold a lock on a file nobody else can see.  Retry on the file now at ``path``.
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            info = json.dumps({"pid": os.getpid(), "command": command}).encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, info, 0) if hasattr(os, "pwrite") else os.write(fd, info)
            return fd
        _unlock(fd)
        os.close(fd)
    raise OutputError("cannot take the output lock (it keeps changing)", path)


def _release(path: Path, fd: int) -> None:
    # Unlink while still holding the lock, so a waiting opener retries (see _acquire).
    with contextlib.suppress(OSError):
        path.unlink()
    with contextlib.suppress(OSError):
        _unlock(fd)
    os.close(fd)


def remove_stale_parts(out: os.PathLike | str) -> list[Path]:
    """Delete temporary ``.part`` files left by killed writes into ``out`` (file or folder).

    Only call with the output lock held.  Returns the removed paths.
    """
    out = Path(out)
    removed: list[Path] = []
    if out.is_dir():
        candidates = (p for p in out.rglob(".*.part*") if p.is_file())
    else:
        prefix = f".{out.name}."
        candidates = (p for p in out.parent.glob(f".{_glob_escape(out.name)}.*.part*")
                      if p.name.startswith(prefix)) if out.parent.is_dir() else iter(())
    for p in candidates:
        if _PART_RE.match(p.name):
            with contextlib.suppress(OSError):
                p.unlink()
                removed.append(p)
    return removed


def _glob_escape(name: str) -> str:
    """``name`` with glob wildcards escaped."""
    return re.sub(r"([*?\[])", r"[\1]", name)


@contextlib.contextmanager
def output_lock(out: Optional[os.PathLike | str], command: str = "eusvoicelabel"
                ) -> Iterator[Optional[Path]]:
    """Hold the lock of output ``out`` (a file or folder) for the duration of the block.

    Args:
        out: the output file or folder (None: no lock, for commands without output).
        command: shown to a second run that is refused.

    Raises:
        OutputError: another process holds the lock, or the lock file cannot be created.
    """
    if out is None:
        yield None
        return
    path = lock_path_for(out)
    key = os.fspath(path)
    with _held_guard:
        if key in _held:
            fd, depth = _held[key]
            _held[key] = (fd, depth + 1)
            first = False
        else:
            fd = _acquire(path, command)
            _held[key] = (fd, 1)
            first = True
    try:
        if first:
            remove_stale_parts(out)
        yield path
    finally:
        with _held_guard:
            fd, depth = _held[key]
            if depth > 1:
                _held[key] = (fd, depth - 1)
            else:
                del _held[key]
                _release(path, fd)


__all__ = ["output_lock", "lock_path_for", "remove_stale_parts"]
