"""Where a run may write: the one output-safety rule of every command and the Slicer module.

Every writer claims its output with :func:`claim_output` before it writes anything (the
command line before the long work starts).  The rule:

1. **Inputs are never outputs.**  An output may not be, contain or lie inside any input file or
   folder of the run.  Paths are compared as resolved real paths (symbolic links and ``..``
   resolved), and an existing output is also compared by identity (hard links).
2. **Procedures and cohorts are inputs.**  An output may not be a procedure folder, lie inside
   one, or be a cohort folder.  An output folder may sit beside the procedures of a cohort: its
   marker makes cohort readers skip it (:func:`..data.procedure.find_patients`).  Only the
   Slicer module's "add to cohort" writes a procedure into a cohort (a new one, or its own
   earlier one).
3. **Only our own earlier output is replaced.**  An existing output *file* is replaced only when
   its own format shows it is our earlier output of the same kind (a checkpoint's format tag, a
   CSV of detected mentions, a report's keys: see each :class:`OutputKind`).  An existing
   output *folder* is used only when it is empty or is our earlier output of the same kind: it
   carries the marker file :data:`MARKER` (written when a run claims the folder), or, for
   folders written before the marker existed, the kind's own signature file (``run.json`` of a
   label folder, ``metrics.json`` of an evaluation, ...).
4. **Leftovers.**  Only after 1-3 hold, the temporary files of killed runs are removed: by
   their exact name pattern (:mod:`..core.outputlock`), in the output folder itself and the
   kind's own named sub-folders (or, for a file, beside it), never recursively.

Breaking a rule raises :class:`~..core.errors.OutputError` naming the output and the reason.
"""

from __future__ import annotations

import csv
import io
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence, Union

from .. import __version__
from ..core.errors import OutputError
from ..core.fileio import atomic_write_text
from ..core.outputlock import (MARKER, PROCEDURE_KIND, is_leftover, is_output_folder,
                               keep_output_lock, marker_kind, output_lock,
                               remove_stale_parts, session_command, session_writes)
from .procedure import find_recording

PathLike = Union[str, os.PathLike]

_SIGNATURE_BYTES = 64 << 20  # signature files are small; never read more to recognise one
#: How long a run waits for another run's claim of a shared output (a moment's work) to end.
SHARED_CLAIM_WAIT_S = 60.0
#: A leftover in a shared output younger than this may be another run's write in progress.
SHARED_LEFTOVER_AGE_S = 3600.0


@dataclass(frozen=True)
class OutputKind:
    """One kind of output and how our earlier output of that kind is recognised.

    Attributes:
        id: short name stored in the marker (``"label"``).
        what: for messages (``"a 'label' output folder"``).
        folder: a folder (True) or a file.
        signature: recognises our earlier output of this kind from its own content (the file,
            or for folders written before markers existed the folder); None: marker only.
        sweep: sub-folders (exact names) whose leftovers are swept besides the folder itself.
        shared: several runs may write it at once (the window cache: atomic entries), so its
            lock is held only while it is claimed, not for the whole command.
    """

    id: str
    what: str
    folder: bool
    signature: Optional[Callable[[Path], bool]] = None
    sweep: tuple[str, ...] = ()
    shared: bool = False


# --------------------------------------------------------------------------- signatures
def _read_small(path: Path) -> Optional[bytes]:
    try:
        if not path.is_file() or path.stat().st_size > _SIGNATURE_BYTES:
            return None
        return path.read_bytes()
    except OSError:
        return None


def text_file(path: Path) -> bool:
    """Whether ``path`` is a small UTF-8 text file (no NUL bytes)."""
    raw = _read_small(path)
    if raw is None or b"\0" in raw:
        return False
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def json_object(path: Path) -> Optional[dict]:
    """The JSON object in ``path`` (None when it is not a small JSON object file)."""
    raw = _read_small(path)
    try:
        data = json.loads(raw.decode("utf-8")) if raw is not None else None
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def json_with_keys(*keys: str, name: Optional[str] = None) -> Callable[[Path], bool]:
    """Signature: a JSON object with every key in ``keys`` (in ``folder/name`` for folders)."""
    def check(path: Path) -> bool:
        data = json_object(path / name if name else path)
        return data is not None and all(k in data for k in keys)
    return check


def csv_rows(path: Path) -> Optional[list[list[str]]]:
    """The rows of a small UTF-8 CSV file (None when it is not one)."""
    raw = _read_small(path)
    try:
        return list(csv.reader(io.StringIO(raw.decode("utf-8")))) if raw is not None else None
    except (UnicodeDecodeError, csv.Error):
        return None


def csv_with_header(header: Sequence[str], name: Optional[str] = None
                    ) -> Callable[[Path], bool]:
    """Signature: a CSV file whose first row is ``header`` (``folder/name`` for folders)."""
    def check(path: Path) -> bool:
        rows = csv_rows(path / name if name else path)
        return bool(rows) and rows[0] == list(header)
    return check


def torch_file_of_format(tag: str) -> Callable[[Path], bool]:
    """Signature: a torch zip archive whose pickled metadata holds the format tag ``tag``
    (read from the archive's ``data.pkl`` without unpickling anything)."""
    def check(path: Path) -> bool:
        try:
            with zipfile.ZipFile(path) as z:
                pkl = next((i for i in z.infolist() if i.filename.endswith("data.pkl")), None)
                if pkl is None or pkl.file_size > _SIGNATURE_BYTES:
                    return False
                return tag.encode("utf-8") in z.read(pkl)
        except (OSError, zipfile.BadZipFile, EOFError, ValueError, NotImplementedError):
            return False
    return check


def input_paths(*paths: Optional[PathLike]) -> list[Path]:
    """What a run reads from ``paths`` (None entries skipped): each path and, for a folder, its
    entries and their entries (a procedure's files; a cohort's patients and their files)."""
    out: list[Path] = []
    for path in paths:
        if path is None:
            continue
        path = Path(path)
        out.append(path)
        for entry in _visible(path):
            out.append(entry)
            if entry.name != "frames":
                out.extend(_visible(entry))
    return out


def procedure_inputs(proc: Any) -> list[Path]:
    """What a run on the :class:`..data.procedure.Procedure` ``proc`` reads: its folder and
    files (:func:`input_paths`), its recording, audio and mentions files wherever they lie
    (None entries skipped: e.g. frames that live in a Slicer sequence)."""
    return [*input_paths(getattr(proc, "path", None)), getattr(proc.source, "path", None),
            getattr(proc, "audio_path", None), getattr(proc, "mentions_path", None)]


def _visible(folder: Path) -> list[Path]:
    try:
        return [p for p in folder.iterdir() if not p.name.startswith(".")] \
            if folder.is_dir() else []
    except OSError:
        return []


# --------------------------------------------------------------------------- kinds
#: A procedure written into a cohort by the Slicer module's "add to cohort" (marker only).
COHORT_PROCEDURE = OutputKind(PROCEDURE_KIND, "a procedure added to a cohort by the "
                              "EUSVoiceLabel Slicer module", folder=True)


def owned(path: PathLike, kind: OutputKind) -> bool:
    """Whether ``path`` is our own earlier output of ``kind`` (see the module doc)."""
    path = Path(path)
    if kind.folder:
        if not path.is_dir():
            return False
        if marker_kind(path) is not None:
            return marker_kind(path) == kind.id
        return kind.signature is not None and kind.signature(path)
    return path.is_file() and kind.signature is not None and kind.signature(path)


def _real(path: PathLike) -> Path:
    return Path(os.path.realpath(os.path.abspath(os.fspath(path))))


def _inside(a: Path, b: Path) -> bool:
    """``a`` is ``b`` or lies inside it (real paths)."""
    return a == b or b in a.parents


def _is_procedure(folder: Path) -> bool:
    """A procedure folder that is not an output of ours (label outputs hold frames.seq.nrrd)."""
    try:
        return folder.is_dir() and find_recording(folder) is not None and \
            not is_output_folder(folder) and not (folder / "run.json").is_file()
    except OSError:
        return False


def _cohort_patient(folder: Path) -> Optional[Path]:
    """A patient folder of ``folder`` when it is a cohort (None otherwise)."""
    try:
        children = sorted(folder.iterdir())
    except OSError:
        return None
    return next((c for c in children if not c.name.startswith(".") and _is_procedure(c)), None)


def _refuse(out: Path, reason: str, hint: str) -> OutputError:
    return OutputError(reason, out, hint)


def _check_inputs(out: Path, real: Path, inputs: Iterable[Optional[PathLike]]) -> None:
    for inp in inputs:
        if inp is None or not os.path.lexists(inp):
            continue  # nothing there to protect (e.g. the name of a Slicer sequence)
        r = _real(inp)
        same = real.exists() and r.exists() and os.path.samefile(real, r)
        if same or real == r:
            raise _refuse(out, f"is an input of this run ({inp})",
                          "choose an output that is not one of the inputs")
        if _inside(real, r):
            raise _refuse(out, f"lies inside the input {inp}",
                          "choose an output outside the inputs")
        if _inside(r, real):
            raise _refuse(out, f"contains the input {inp}",
                          "choose an output folder that holds none of the inputs")


def _check_layout(out: Path, real: Path, kind: OutputKind, mine: bool) -> None:
    for parent in real.parents:
        if _is_procedure(parent):
            raise _refuse(out, f"lies inside the procedure folder {parent}",
                          "choose an output outside every procedure folder")
    if not kind.folder:
        return
    if not mine:  # our own earlier output may be a procedure or cohort (add to cohort, synth)
        if _is_procedure(real):
            raise _refuse(out, "is a procedure folder", "choose a new or empty output folder")
        patient = _cohort_patient(real)
        if patient is not None:
            raise _refuse(out, f"is a cohort folder (it holds the procedure {patient.name})",
                          "choose a new or empty output folder")


def _is_empty(folder: Path) -> bool:
    try:
        return all(is_leftover(p.name) or p.name.endswith(".lock") for p in folder.iterdir())
    except OSError:
        return False


def _check_existing(out: Path, kind: OutputKind, replace: bool) -> None:
    if not out.exists() and not out.is_symlink():
        return
    if kind.folder:
        if not out.is_dir():
            raise _refuse(out, "is a file, not a folder", "give a folder for --out")
        if _is_empty(out):
            return
    elif out.is_dir():
        raise _refuse(out, "is a folder, not a file", "give a file name for --out")
    if not owned(out, kind):
        if not kind.folder:
            raise _refuse(out, f"exists and is not {kind.what}, so it is not replaced",
                          "choose another file name")
        other = marker_kind(out)
        what = f"an eusvoicelabel '{other}' output" if other else "not empty"
        raise _refuse(out, f"is {what} and not {kind.what}; eusvoicelabel writes only into a "
                           "new or empty folder or its own earlier output of the same kind",
                      "choose a new or empty folder")
    if not replace:
        raise _refuse(out, f"already holds {kind.what}",
                      "choose a new folder or pass --force to replace it")


def mark_output(folder: PathLike, kind: OutputKind) -> None:
    """Write the marker that makes ``folder`` our output of ``kind``."""
    atomic_write_text(Path(folder) / MARKER, json.dumps(
        {"kind": kind.id, "written_by": "eusvoicelabel", "eusvoicelabel_version": __version__},
        indent=2) + "\n")


def claim_output(out: PathLike, kind: OutputKind, inputs: Iterable[Optional[PathLike]] = (),
                 replace: bool = True, create: bool = True) -> Path:
    """Check ``out`` against the rule (module doc), sweep our leftovers and, for a folder,
    create it and write its marker.

    Args:
        out: the output file or folder.
        kind: what is written there.
        inputs: every input file or folder of the run (None entries are skipped).
        replace: False refuses our own earlier output too (e.g. ``synth`` without --force).
        create: False leaves a folder output uncreated and unmarked (the caller moves a
            finished folder there and marks it itself).

    Returns:
        ``out`` as a Path.

    Inside an :func:`..core.outputlock.output_session` (every command of the command line)
    the output's lock is then held until the command ends.

    Raises:
        OutputError: the rule forbids the output (the message says why), another run holds
            its lock, or it cannot be created.
    """
    out = Path(out)
    real = _real(out)
    _check_inputs(out, real, inputs)
    _check_layout(out, real, kind, owned(out, kind))
    _check_existing(out, kind, replace)
    if not session_writes():
        return out
    # A shared output's lock is held only for this claim, so a second run waits its turn.
    with output_lock(out, session_command(f"eusvoicelabel ({kind.id})"),
                     wait_s=SHARED_CLAIM_WAIT_S if kind.shared else 0.0):
        if not kind.shared:
            keep_output_lock(out)  # one writer until the command ends
        remove_stale_parts(out, kind.sweep,
                           min_age_s=SHARED_LEFTOVER_AGE_S if kind.shared else 0.0)
        if kind.folder and create:
            try:
                out.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise OutputError(f"cannot create the folder ({exc.strerror})", out) from None
            if marker_kind(out) != kind.id:
                mark_output(out, kind)
    return out


__all__ = ["OutputKind", "claim_output", "mark_output", "owned", "MARKER",
           "COHORT_PROCEDURE", "input_paths", "procedure_inputs", "json_with_keys",
           "csv_with_header", "torch_file_of_format", "json_object", "csv_rows", "text_file"]
