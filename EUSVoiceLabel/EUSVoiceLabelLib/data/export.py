"""Exporting voice-derived labels as an image dataset other tools can train on.

Layout (torchvision ``ImageFolder``-compatible)::

    OUT/images/<label>/<patient>_<time>_<k>.png     one grey PNG per frame of each window
    OUT/labels.csv                                  path,label,patient,time_s,frame_index,k,window,source

From a **cohort**, the label of a window is the landmark that was said (``mentions.csv``); from
a **label output folder** (``eusvoicelabel label``), it is the reviewed label when a reviewer
corrected it (``reviewed_label`` column of ``labels.csv``), else the model's prediction.
"""

from __future__ import annotations

import logging
import math
import os
import re
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import numpy as np
from PIL import Image

from ..core.csvtext import csv_text, unescape_cell
from ..core.errors import ProcedureError, VocabularyError
from ..core.fileio import StagedFolder, atomic_path, atomic_write_text
from ..core.paper import FPS, WINDOW_FRAMES
from ..core.progress import ProgressLike, as_progress
from .media import NrrdSequenceSource
from .outputs import (OutputKind, claim_output, csv_rows, csv_with_header, input_paths,
                      json_object)
from .procedure import find_patients, load_procedure, window_frame_indices
from .vocabulary import LabelSet, load_labelset

log = logging.getLogger(__name__)

RUN_INFO = "run.json"
HEADER = ["path", "label", "patient", "time_s", "frame_index", "k", "window", "source"]
#: The header of a dataset exported from a whole-procedure label folder: ``confidence`` added.
WHOLE_HEADER = [*HEADER, "confidence"]
#: Rows of a whole run's frame_labels.csv that belong to a spoken window.
SPOKEN_SOURCE = "spoken window"


def _export_signature(path: Path) -> bool:
    return csv_with_header(HEADER, name="labels.csv")(path) or \
        csv_with_header(WHOLE_HEADER, name="labels.csv")(path)


#: ``export --out`` (and the Slicer module's dataset): ``images/`` and ``labels.csv``; folders
#: written before the output marker existed are recognised by the header of their labels.csv.
EXPORT_DATASET = OutputKind("export", "an exported image dataset", folder=True,
                            signature=_export_signature)


def _safe(text: str) -> str:
    """A file-name part made of ``text`` (never empty, ``.`` or ``..``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._") or "x"


def _save_png(path: Path, frame: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(np.ascontiguousarray(frame, dtype=np.uint8)).save(tmp, format="PNG")


class _Exporter:
    """Writes the dataset into a staging folder; :meth:`finish` moves it into ``out_dir``."""

    def __init__(self, out_dir: Path, every: int, header: Sequence[str] = HEADER):
        self.out_dir = out_dir
        self.every = max(1, int(every))
        self.rows: list[list] = []
        self.header = list(header)
        self.stage = StagedFolder(out_dir)

    def add_window(self, patient: str, label: str, time_s: float, window: int,
                   frame_indices: Iterable[int], frames: np.ndarray, source: str,
                   confidence: Optional[float] = None) -> None:
        for k, (f, frame) in enumerate(zip(frame_indices, frames)):
            if k % self.every:
                continue
            rel = Path("images") / _safe(label) / f"{_safe(patient)}_{time_s:08.3f}_{k:02d}.png"
            _save_png(self.stage.path / rel, frame)
            self._row([rel.as_posix(), label, patient, f"{time_s:.3f}", int(f), k, window,
                       source], confidence)

    def add_frame(self, patient: str, label: str, frame_index: int, time_s: float,
                  frame: np.ndarray, source: str, confidence: float) -> None:
        """One inferred frame of a whole-procedure run (named by its own time, k = 00)."""
        rel = Path("images") / _safe(label) / f"{_safe(patient)}_{time_s:08.3f}_00.png"
        _save_png(self.stage.path / rel, frame)
        self._row([rel.as_posix(), label, patient, f"{time_s:.3f}", int(frame_index), 0, "",
                   source], confidence)

    def _row(self, row: list, confidence: Optional[float]) -> None:
        if len(self.header) > len(HEADER):
            row.append("" if confidence is None else f"{confidence:.4f}")
        self.rows.append(row)

    def finish(self) -> Path:
        atomic_write_text(self.stage.path / "labels.csv", csv_text(self.header, self.rows))
        self.stage.commit(drop=("images",))
        return self.out_dir / "labels.csv"


def _exporting(out_dir: Path, every: int, fill: Callable[[_Exporter], None],
               header: Sequence[str] = HEADER) -> Path:
    """Let ``fill`` add the windows, then move the dataset into ``out_dir`` at once: any
    failure (a bad input, a full disk, Ctrl-C) leaves the previous dataset as it was."""
    exporter = _Exporter(out_dir, every, header)
    try:
        with exporter.stage.writing():
            fill(exporter)
            return exporter.finish()
    except BaseException:
        exporter.stage.abort()
        raise


def export_cohort(cohort: os.PathLike | str, out_dir: os.PathLike | str, every: int = 1,
                  frames: int = WINDOW_FRAMES, progress: ProgressLike = False) -> Path:
    """Export every mention window of a cohort with its spoken label."""
    cohort, out_dir = Path(cohort), Path(out_dir)
    claim_output(out_dir, EXPORT_DATASET, input_paths(cohort))
    labelset = load_labelset(None, cohort)

    def fill(exporter: _Exporter) -> None:
        patients = find_patients(cohort)
        with as_progress(progress).task("export", total=len(patients), unit="patient") as task:
            for folder in patients:
                proc = load_procedure(folder, labelset=labelset)
                for k, m in enumerate(sorted(proc.mentions, key=lambda m: m.time_s)):
                    exporter.add_window(proc.name, m.label, m.time_s, k,
                                        window_frame_indices(m.time_s, frames, proc.fps),
                                        proc.frames_window(m.time_s, frames), "spoken")
                task.advance()

    return _exporting(out_dir, every, fill)


def _table(path: Path, columns: Sequence[str]) -> list[dict[str, str]]:
    """Rows of a CSV of a label folder, with the ``columns`` it must have (cells unescaped)."""
    if not path.is_file():
        raise ProcedureError(f"the label folder has no {path.name}", path.parent,
                             "the folder is incomplete: label the procedure again")
    rows = csv_rows(path)
    if rows is None:
        raise ProcedureError("is not a readable UTF-8 CSV file", path,
                             "label the procedure again")
    if not rows:
        raise ProcedureError("is empty", path, "label the procedure again")
    header = rows[0]
    missing = [c for c in columns if c not in header]
    if missing:
        raise ProcedureError(f"has no column {missing[0]!r}", path,
                             "it must be the file 'eusvoicelabel label' wrote")
    return [{h: unescape_cell(row[i]) if i < len(row) else "" for i, h in enumerate(header)}
            for row in rows[1:] if any(c.strip() for c in row)]


def _number(row: dict[str, str], column: str, path: Path, n: int, kind: type = int):
    try:
        value = kind(row[column])
    except (TypeError, ValueError):
        raise ProcedureError(f"row {n}: {column} {row[column]!r} is not a number", path,
                             "it must be the file 'eusvoicelabel label' wrote") from None
    if kind is float and not math.isfinite(value):
        raise ProcedureError(f"row {n}: {column} is {row[column]!r}", path)
    return value


def _run_info(label_dir: Path) -> dict:
    path = label_dir / RUN_INFO
    if not path.exists():
        return {}
    info = json_object(path)
    if info is None:
        raise ProcedureError("is not a JSON object of 'eusvoicelabel label'", path,
                             "label the procedure again")
    return info


def export_label_dir(label_dir: os.PathLike | str, out_dir: os.PathLike | str,
                     every: int = 1) -> Path:
    """Export the frames of a ``label`` output folder with their reviewed label, else the
    window's label (``labels.csv`` column ``label``, fused with what was said).

    Raises:
        ProcedureError: a missing, malformed or inconsistent file of the label folder (a
            hand-edited ``run.json``, a missing column, a window id or label not in it).
    """
    label_dir, out_dir = Path(label_dir), Path(out_dir)
    claim_output(out_dir, EXPORT_DATASET, input_paths(label_dir))
    info = _run_info(label_dir)
    patient = str(info.get("procedure_name") or label_dir.name)
    try:
        labelset = LabelSet.from_json(info["labels"], str(label_dir / RUN_INFO)) \
            if "labels" in info else load_labelset(None, label_dir)
    except VocabularyError as exc:
        raise ProcedureError(exc.message, label_dir / RUN_INFO, exc.hint) from None
    labels_path, frames_path = label_dir / "labels.csv", label_dir / "frame_labels.csv"
    windows = _table(labels_path, ("window", "time_s", "predicted_label"))
    frame_rows = _table(frames_path, ("window", "frame_index"))
    whole = bool(frame_rows) and "source" in frame_rows[0]
    inferred: list[dict[str, str]] = []
    if whole:  # a whole-procedure run: the spoken windows' rows, and the inferred frames
        inferred = [r for r in frame_rows if r["source"] != SPOKEN_SOURCE]
        frame_rows = [r for r in frame_rows if r["source"] == SPOKEN_SOURCE]
    seq = NrrdSequenceSource(label_dir / "frames.seq.nrrd")
    positions = None
    if whole:  # the rows may be every stride-th frame: find each in the window frames
        fps = float(info.get("fps") or FPS)
        n_win = int(info.get("window_frames") or WINDOW_FRAMES)
        owned: set[int] = set()
        for n, w in enumerate(windows, start=2):
            owned.update(int(f) for f in window_frame_indices(
                _number(w, "time_s", labels_path, n, float), n_win, fps))
        order = {f: i for i, f in enumerate(sorted(owned))}
        positions = [order.get(_number(r, "frame_index", frames_path, n), -1)
                     for n, r in enumerate(frame_rows, start=2)]
        if len(seq.frames) < len(order) or min(positions, default=0) < 0:
            raise ProcedureError("frames.seq.nrrd does not hold the spoken windows' frames of "
                                 "frame_labels.csv", label_dir,
                                 "the folder is incomplete: label the procedure again")
    elif len(seq.frames) != len(frame_rows):
        raise ProcedureError(f"frames.seq.nrrd has {len(seq.frames)} frames but "
                             f"frame_labels.csv lists {len(frame_rows)}", label_dir,
                             "the folder is incomplete: label the procedure again")
    by_window: dict[int, tuple[str, str, float]] = {}
    for n, w in enumerate(windows, start=2):
        reviewed = (w.get("reviewed_label") or "").strip()
        # The window's label (fused with what was said); files from before fusion have none.
        label = reviewed or (w.get("label") or "").strip() or w["predicted_label"].strip()
        if label not in labelset:
            raise ProcedureError(f"row {n}: unknown label {label!r}", labels_path,
                                 "known labels: " + ", ".join(labelset.ids))
        by_window[_number(w, "window", labels_path, n)] = (
            label, "reviewed" if reviewed else "predicted",
            _number(w, "time_s", labels_path, n, float))
    groups: dict[int, list[int]] = {}
    indices: list[int] = []
    for n, row in enumerate(frame_rows, start=2):
        win = _number(row, "window", frames_path, n)
        if win not in by_window:
            raise ProcedureError(f"row {n}: window {win} is not in labels.csv", frames_path,
                                 "the folder is inconsistent: label the procedure again")
        groups.setdefault(win, []).append(n - 2)
        indices.append(_number(row, "frame_index", frames_path, n))

    confidences = {}
    for n, w in enumerate(windows, start=2):
        c = (w.get("label_confidence") or "").strip()
        confidences[_number(w, "window", labels_path, n)] = float(c) if c else None

    def fill(exporter: _Exporter) -> None:
        for win, rows in sorted(groups.items()):
            label, source, time_s = by_window[win]
            picked = rows if positions is None else [positions[i] for i in rows]
            exporter.add_window(patient, label, time_s, win, [indices[i] for i in rows],
                                seq.frames[picked], source,
                                None if by_window[win][1] == "reviewed" else confidences[win])
        if inferred:
            _export_inferred(exporter, label_dir, info, patient, labelset, inferred, every,
                             frames_path)

    return _exporting(out_dir, every, fill, WHOLE_HEADER if whole else HEADER)


def _export_inferred(exporter: _Exporter, label_dir: Path, info: dict, patient: str,
                     labelset: LabelSet, rows: list[dict[str, str]], every: int,
                     frames_path: Path, chunk: int = 200) -> None:
    """Every ``every``-th inferred frame of a whole-procedure run with a landmark (``none``
    frames are not exported), read from the procedure in chunks."""
    picked = [r for r in rows[::max(1, every)] if r["label"].strip() != "none"]
    if not picked:
        return
    proc_path = info.get("procedure")
    if not proc_path or not Path(proc_path).is_dir():
        raise ProcedureError("the procedure of this whole-procedure run is not found "
                             f"({proc_path})", label_dir / RUN_INFO,
                             "the inferred frames are read from the procedure: keep it where "
                             "it was labelled")
    proc = load_procedure(proc_path, labelset=labelset, mentions=[])
    for n, r in enumerate(picked, start=2):
        if r["label"] not in labelset:
            raise ProcedureError(f"unknown label {r['label']!r}", frames_path,
                                 "known labels: " + ", ".join(labelset.ids))
    for i in range(0, len(picked), chunk):
        part = picked[i:i + chunk]
        idx = [int(r["frame_index"]) for r in part]
        frames = proc.frames_at(np.array(idx) / proc.fps)
        for r, f, frame in zip(part, idx, frames):
            exporter.add_frame(patient, r["label"], f, f / proc.fps, frame, r["source"],
                               float(r["confidence"]))


def export_dataset(source: os.PathLike | str, out_dir: os.PathLike | str, every: int = 1,
                   progress: ProgressLike = False) -> Path:
    """Export a cohort folder or a ``label`` output folder (see the module doc).

    Returns:
        the written ``labels.csv``.
    """
    source = Path(source)
    if (source / "labels.csv").is_file() and (source / "frames.seq.nrrd").is_file():
        return export_label_dir(source, out_dir, every)
    if source.is_dir():
        return export_cohort(source, out_dir, every, progress=progress)
    raise ProcedureError("is neither a cohort folder nor a 'label' output folder", source,
                         "give a cohort or the --out folder of 'eusvoicelabel label'")
