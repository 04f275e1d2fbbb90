"""Safe file writing: every output goes through a temporary file and an atomic rename.

An interrupted run therefore leaves either the previous file or the new one, never a
half-written file, and readers never see partial content.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Iterator, Optional

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
        # Any failing write (disk full, read-only, I/O error, ...) is reported as the project's
        # own error naming the file; the previous content of ``path`` is untouched.
        hint = "free disk space or choose another output folder" \
            if exc.errno in (errno.ENOSPC, errno.EDQUOT) else \
            "check the output folder is writable and the disk is healthy"
        raise OutputError(f"cannot write ({exc.strerror or exc})", path, hint) from None
    except BaseException:
        _unlink_quietly(tmp_path)
        raise


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
