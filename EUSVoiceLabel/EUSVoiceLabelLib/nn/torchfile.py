"""torch files that may come from anyone: read without running code, checked against a digest of
their content, and written atomically."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any, BinaryIO, Optional

import torch

from ..core.errors import CheckpointError
from ..core.fileio import atomic_path


def load_untrusted_torch(path: os.PathLike | str, missing: tuple[str, str],
                         unreadable: tuple[str, str]):
    """Read a torch file that may come from anyone: ``weights_only=True`` unpickles tensors and
    plain containers only, so no code in the file can run.

    Args:
        missing: (message, hint) of the CheckpointError when the file does not exist.
        unreadable: (message, hint); ``{error}`` in the message becomes the exception's name.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(missing[0], path, missing[1])
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for damaged or foreign files
        raise CheckpointError(unreadable[0].format(error=exc.__class__.__name__), path,
                              unreadable[1]) from None


DIGEST_KEY = "content_sha256"


def weights_digest(data: dict, weights_key: str, *more_keys: str) -> str:
    """SHA-256 over a checkpoint's metadata (as JSON) and every tensor's name, type, shape and
    bytes under ``data[weights_key]`` (and under each of ``more_keys``, its names prefixed with
    the key; a file with one key hashes as before).  torch's zip reader does not check its CRCs,
    so without this a flipped byte in the weights would load silently (found by fuzzing,
    test_fuzz.py)."""
    h = hashlib.sha256()
    keys = (weights_key, *more_keys)
    meta = {k: v for k, v in data.items() if k not in (*keys, DIGEST_KEY)}
    h.update(json.dumps(meta, sort_keys=True).encode())
    for key in keys:
        weights = data.get(key)
        prefix = "" if key == weights_key else f"{key}/"
        for name in sorted(weights):
            t = weights[name].detach().cpu().contiguous().reshape(-1)
            h.update(f"{prefix}{name}|{t.dtype}|{tuple(weights[name].shape)}".encode())
            h.update(t.view(torch.uint8).numpy())
    return h.hexdigest()


def check_weights_digest(data: dict, weights_key: str, path: os.PathLike | str,
                         hint: str, more_keys: tuple[str, ...] = ()) -> None:
    """Raise CheckpointError when a checkpoint's stored digest does not match its content
    (files written before digests existed carry none and pass)."""
    stored = data.get(DIGEST_KEY)
    if stored is None:
        return
    try:
        digest = weights_digest(data, weights_key, *more_keys)
    except (TypeError, ValueError, AttributeError, RuntimeError):
        digest = None
    if digest != stored:
        raise CheckpointError("the checkpoint is damaged (its content does not match its "
                              "checksum)", path, hint)


class _KeepWriteError(io.RawIOBase):
    """A file torch.save writes through that remembers the OSError of a failing write: torch
    reports it as a RuntimeError without its errno (so "disk full" would be lost)."""

    def __init__(self, fh: BinaryIO):
        super().__init__()
        self._fh = fh
        self.error: Optional[OSError] = None

    def writable(self) -> bool:
        return True

    @property
    def name(self) -> str:
        """The file written (like a file object's ``name``)."""
        return self._fh.name

    def write(self, data) -> int:
        try:
            return self._fh.write(data)
        except OSError as exc:
            self.error = self.error or exc
            raise

    def flush(self) -> None:
        self._fh.flush()


def torch_save_atomic(path: os.PathLike | str, obj: Any) -> None:
    """torch.save through a temporary file and a rename (a kill mid-write keeps the old file).

    A failing disk becomes OutputError naming the file, saying when the disk is full.
    """
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            sink = _KeepWriteError(fh)
            try:
                torch.save(obj, sink)
            except RuntimeError as exc:
                if sink.error is not None:
                    raise sink.error from None
                raise OSError(errno.EIO, f"torch.save failed: {str(exc).splitlines()[0]}") \
                    from None
            fh.flush()
            os.fsync(fh.fileno())
