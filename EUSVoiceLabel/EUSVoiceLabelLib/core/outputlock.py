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
- An output folder we own carries the marker file :data:`MARKER` naming its kind
  (:func:`marker_kind`); cohort readers skip such folders (a label output beside the
  procedures of a cohort is not a patient).
- Leftovers of killed runs (``.<name>.<random>.part...`` temporary files of :mod:`.fileio`
  and its ``.eusvoicelabel-staging-<random>`` folders) are recognised by their exact name
  (:func:`is_leftover`) and removed by :func:`remove_stale_parts`, which the output rule
  (:func:`..data.outputs.claim_output`) calls with the lock held, once the output is known to
  be ours: in the output folder itself (never recursively), or beside an output file.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import re
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional, Sequence

from .errors import OutputError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None
    import msvcrt

LOCK_SUFFIX = ".lock"
#: Marker file of an output folder we own: ``{"kind": ..., "written_by": "eusvoicelabel", ...}``.
MARKER = ".eusvoicelabel-output.json"
#: The marker kind of a procedure the Slicer module added to a cohort: a patient, not an output.
PROCEDURE_KIND = "cohort-procedure"
# fileio.atomic_path names its temporary files ".<name>.<mkstemp random>.part<suffix>" and
# fileio.StagedFolder its folders ".eusvoicelabel-staging-<mkdtemp random>" (8 characters).
_PART_RE = re.compile(r"^\..+\.[a-z0-9_]{8}\.part(\.[^/]*)?$")
_STAGING_RE = re.compile(r"^\.eusvoicelabel-staging-[a-z0-9_]{8}$")

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


def _acquire(path: Path, command: str, wait_s: float = 0.0) -> int:
    """Open and lock ``path``; OutputError if another process still holds it after
    ``wait_s`` seconds."""
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
        deadline = time.monotonic() + wait_s
        locked = _try_lock(fd)
        while not locked and time.monotonic() < deadline:
            time.sleep(0.05)
            locked = _try_lock(fd)
        if not locked:
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


def marker_kind(folder: os.PathLike | str) -> Optional[str]:
    """The kind of output named by the marker in ``folder`` (None: no valid marker)."""
    path = Path(folder) / MARKER
    try:
        if path.stat().st_size > 4096:
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("written_by") != "eusvoicelabel":
        return None
    kind = data.get("kind")
    return kind if isinstance(kind, str) else None


def is_output_folder(folder: os.PathLike | str) -> bool:
    """Whether ``folder`` is an output of ours that is not a patient (cohort readers skip it)."""
    return marker_kind(folder) not in (None, PROCEDURE_KIND)


def is_leftover(name: str) -> bool:
    """Whether a file or folder name is one of our temporary names (see the module doc)."""
    return bool(_PART_RE.match(name) or _STAGING_RE.match(name))


def remove_stale_parts(out: os.PathLike | str, subfolders: Sequence[str] = (),
                       min_age_s: float = 0.0) -> list[Path]:
    """Delete the leftovers of killed writes of output ``out``, by exact name.

    For a folder: our temporary files and staging folders directly in it and in its
    ``subfolders`` (exact names), never deeper.  For a file: its own temporary files beside
    it (``.<name>.<random>.part...``).  Only call with the output lock held, once ``out`` is
    known to be our output.  ``min_age_s`` > 0 keeps leftovers modified more recently than
    that: in an output several runs write at once, a fresh one is another run's write in
    progress.  Returns the removed paths.
    """
    out = Path(out)
    if out.is_dir():
        folders = [out] + [out / s for s in subfolders if (out / s).is_dir()]
        candidates = [p for f in folders for p in _entries(f) if is_leftover(p.name)]
    else:
        prefix = f".{out.name}."
        candidates = [p for p in _entries(out.parent)
                      if p.name.startswith(prefix) and _PART_RE.match(p.name)]
    removed: list[Path] = []
    now = time.time()
    for p in candidates:
        try:
            if min_age_s > 0 and now - p.lstat().st_mtime < min_age_s:
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
            removed.append(p)
        except OSError:
            pass
    return removed


def _entries(folder: Path) -> list[Path]:
    try:
        return list(folder.iterdir())
    except OSError:
        return []


@contextlib.contextmanager
def output_lock(out: Optional[os.PathLike | str], command: str = "eusvoicelabel",
                wait_s: float = 0.0) -> Iterator[Optional[Path]]:
    """Hold the lock of output ``out`` (a file or folder) for the duration of the block.

    Args:
        out: the output file or folder (None: no lock, for commands without output).
        command: shown to a second run that is refused.
        wait_s: how long to wait for another process to release the lock before refusing
            (0: refuse at once; for locks that are held only a moment).

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
        else:
            fd = _acquire(path, command, wait_s)
            _held[key] = (fd, 1)
    try:
        yield path
    finally:
        with _held_guard:
            fd, depth = _held[key]
            if depth > 1:
                _held[key] = (fd, depth - 1)
            else:
                del _held[key]
                _release(path, fd)


@dataclass
class _Session:
    command: str
    writes: bool
    stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)


_SESSION: contextvars.ContextVar[Optional[_Session]] = contextvars.ContextVar(
    "eusvoicelabel_output_session", default=None)


@contextlib.contextmanager
def output_session(command: str, writes: bool = True) -> Iterator[None]:
    """One command's run: the output locks taken with :func:`keep_output_lock` inside the
    block are held until it ends, so a second run on an output is refused for the whole run,
    and no lock file is made before the output rule has accepted the output.

    Args:
        command: shown to a second run that is refused (e.g. ``"eusvoicelabel label"``).
        writes: False for a process that writes nothing (the other processes of a
            ``torchrun`` run): outputs are then checked but not locked, swept or created.
    """
    session = _Session(command, writes)
    token = _SESSION.set(session)
    try:
        with session.stack:
            yield
    finally:
        _SESSION.reset(token)


def session_command(default: str) -> str:
    """The command of the current :func:`output_session` (``default`` outside one)."""
    session = _SESSION.get()
    return session.command if session is not None else default


def session_writes() -> bool:
    """False inside a session of a process that writes no outputs."""
    session = _SESSION.get()
    return session is None or session.writes


def keep_output_lock(out: os.PathLike | str) -> None:
    """Hold the lock of ``out`` until the current :func:`output_session` ends (no-op outside
    one)."""
    session = _SESSION.get()
    if session is not None and session.writes:
        session.stack.enter_context(output_lock(out, session.command))


__all__ = ["output_lock", "lock_path_for", "remove_stale_parts", "is_leftover", "marker_kind",
           "is_output_folder", "output_session", "keep_output_lock", "session_command",
           "session_writes", "MARKER", "PROCEDURE_KIND"]
