"""Safe file writing: every output goes through a temporary file and an atomic rename.

An interrupted run therefore leaves either the previous file or the new one, never a
half-written file, and readers never see partial content.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Optional, Sequence

from .errors import OutputError


@contextlib.contextmanager
def atomic_path(path: os.PathLike | str, suffix: Optional[str] = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``.

    The temporary name keeps the final extension (``suffix`` overrides it) because some writers
    (matplotlib, nrrd) choose the format from it.  On any exception the temporary file is removed
    and the destination is untouched.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create folder ({exc.strerror})", path.parent) from None
    if suffix is None:
        suffix = "".join(path.suffixes) or ".tmp"
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part" + suffix,
                                   dir=path.parent)
    except OSError as exc:
        raise OutputError(f"cannot write ({exc.strerror or exc})", path,
                          "check the output folder is writable") from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except OSError as exc:
        _unlink_quietly(tmp_path)
        raise write_error(exc, path) from None
    except BaseException:
        _unlink_quietly(tmp_path)
        raise


def write_error(exc: OSError, path: os.PathLike | str) -> OutputError:
    """The project's error for a failing write (disk full, read-only, I/O error, ...) of
    ``path``: one line naming the file, saying when the disk is full."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return OutputError("cannot write: the disk is full "
                           f"({exc.strerror or 'No space left on device'})", path,
                           "free disk space or choose another output folder; the previous "
                           "output is unchanged")
    return OutputError(f"cannot write ({exc.strerror or exc})", path,
                       "check the output folder is writable and the disk is healthy")


@contextlib.contextmanager
def writing(path: os.PathLike | str) -> Iterator[None]:
    """Turn an OSError raised in the block (a write to ``path``) into :func:`write_error`."""
    try:
        yield
    except OSError as exc:
        raise write_error(exc, path) from None


class StagedFolder:
    """New content for a folder, built apart and moved in at once.

    The files are written under a hidden staging folder inside ``out``
    (``.eusvoicelabel-staging-<random>``, on the same file system); :meth:`commit` then moves
    each top-level entry into ``out`` by renames, which need no disk space, replacing the
    entries of the same name (an old folder is moved aside and removed after).  Until then
    ``out`` is unchanged: a full disk, an error or a kill while writing leaves the previous
    output intact (a killed run's staging folder is swept as a leftover by the next run).
    Entries of ``out`` that the new content does not name are kept.
    """

    PREFIX = ".eusvoicelabel-staging-"

    def __init__(self, out: os.PathLike | str):
        self.out = Path(out)
        with writing(self.out):
            self.out.mkdir(parents=True, exist_ok=True)
            self.path = Path(tempfile.mkdtemp(prefix=self.PREFIX, dir=self.out))

    @contextlib.contextmanager
    def writing(self) -> Iterator[Path]:
        """Write into the staging folder (yielded): a failing write is reported as an
        OutputError naming the file's place in ``out``, not in the staging folder."""
        try:
            yield self.path
        except OutputError as exc:
            where = Path(exc.path) if exc.path else None
            if where is None or (where != self.path and self.path not in where.parents):
                raise
            raise OutputError(exc.message, self.out / where.relative_to(self.path),
                              exc.hint) from None
        except OSError as exc:
            raise write_error(exc, self.out) from None

    def commit(self, drop: Sequence[str] = ()) -> list[Path]:
        """Move the staged entries into ``out`` (rolled back on failure); returns them.

        ``drop``: names of our own earlier entries to remove when the new content has none
        of that name (e.g. the sequences of an earlier run, after a cancelled one).
        """
        with writing(self.out):
            aside = Path(tempfile.mkdtemp(prefix=self.PREFIX, dir=self.out))
        moved: list[tuple[Path, Path, bool]] = []  # (new, final, had an old one)
        staged = {p.name for p in self.path.iterdir()}
        try:
            for name in drop:
                final = self.out / name
                if name not in staged and (final.exists() or final.is_symlink()):
                    os.replace(final, aside / name)
                    moved.append((aside / name, final, False))
            for entry in sorted(self.path.iterdir()):
                final = self.out / entry.name
                old = final.exists() or final.is_symlink()
                if old:
                    os.replace(final, aside / entry.name)
                try:
                    os.replace(entry, final)
                except OSError:
                    if old:
                        os.replace(aside / entry.name, final)
                    raise
                moved.append((entry, final, old))
        except OSError as exc:
            for entry, final, old in reversed(moved):
                with contextlib.suppress(OSError):
                    if entry.parent == aside:  # a dropped entry: put it back
                        os.replace(entry, final)
                        continue
                    os.replace(final, entry)
                    if old:
                        os.replace(aside / entry.name, final)
            self.abort()
            shutil.rmtree(aside, ignore_errors=True)
            raise write_error(exc, self.out) from None
        shutil.rmtree(aside, ignore_errors=True)
        shutil.rmtree(self.path, ignore_errors=True)
        return [final for entry, final, _ in moved if entry.parent != aside]

    def abort(self) -> None:
        """Drop the staged content (``out`` is untouched)."""
        shutil.rmtree(self.path, ignore_errors=True)


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


def atomic_write_bytes(path: os.PathLike | str, data: bytes) -> None:
    """Write bytes to ``path`` atomically (fsync before the rename)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())


def atomic_write_text(path: os.PathLike | str, text: str) -> None:
    """Write UTF-8 text to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def file_sha256(path: os.PathLike | str, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's content, read in chunks (never the whole file in memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            block = fh.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()
