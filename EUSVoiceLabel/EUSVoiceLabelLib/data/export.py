"""Exporting voice-derived labels as an image dataset other tools can train on.

Layout (torchvision ``ImageFolder``-compatible)::

    OUT/images/<label>/<patient>_<time>_<k>.png     one grey PNG per frame of each window
    OUT/labels.csv                                  path,label,patient,time_s,frame_index,k,window,source

From a **cohort**, the label of a window is the landmark that was said (``mentions.csv``); from
a **label output folder** (``eusvoicelabel label``), it is the reviewed label when a reviewer
corrected it (``reviewed_label`` column of ``labels.csv``), else the model's prediction.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image

from ..core.errors import OutputError, ProcedureError
from ..core.fileio import atomic_path, atomic_write_text
from ..core.paper import WINDOW_FRAMES
from ..core.progress import ProgressLike, as_progress
from .media import NrrdSequenceSource
from .procedure import find_patients, load_procedure, window_frame_indices
from .vocabulary import load_labelset

log = logging.getLogger(__name__)

RUN_INFO = "run.json"
HEADER = ["path", "label", "patient", "time_s", "frame_index", "k", "window", "source"]


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "x"


def _save_png(path: Path, frame: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(np.ascontiguousarray(frame, dtype=np.uint8)).save(tmp, format="PNG")


class _Exporter:
    def __init__(self, out_dir: Path, every: int):
        self.out_dir = out_dir
        self.every = max(1, int(every))
        self.rows: list[list] = []

    def add_window(self, patient: str, label: str, time_s: float, window: int,
                   frame_indices: Iterable[int], frames: np.ndarray, source: str) -> None:
        for k, (f, frame) in enumerate(zip(frame_indices, frames)):
            if k % self.every:
                continue
            rel = Path("images") / _safe(label) / f"{_safe(patient)}_{time_s:08.3f}_{k:02d}.png"
            _save_png(self.out_dir / rel, frame)
            self.rows.append([rel.as_posix(), label, patient, f"{time_s:.3f}", int(f), k, window,
                              source])

    def finish(self) -> Path:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(HEADER)
        writer.writerows(self.rows)
        atomic_write_text(self.out_dir / "labels.csv", buf.getvalue())
        return self.out_dir / "labels.csv"


def _check_out(source: Path, out_dir: Path) -> None:
    src, out = source.resolve(), out_dir.resolve()
    if out == src or src in out.parents:
        raise OutputError("the output folder lies inside the input folder", out_dir,
                          "choose an output folder outside the input")


def export_cohort(cohort: os.PathLike | str, out_dir: os.PathLike | str, every: int = 1,
                  frames: int = WINDOW_FRAMES, progress: ProgressLike = False) -> Path:
    """Export every mention window of a cohort with its spoken label."""
    cohort, out_dir = Path(cohort), Path(out_dir)
    _check_out(cohort, out_dir)
    labelset = load_labelset(None, cohort)
    exporter = _Exporter(out_dir, every)
    patients = find_patients(cohort)
    with as_progress(progress).task("export", total=len(patients), unit="patient") as task:
        for folder in patients:
            proc = load_procedure(folder, labelset=labelset)
            for k, m in enumerate(sorted(proc.mentions, key=lambda m: m.time_s)):
                exporter.add_window(proc.name, m.label, m.time_s, k,
                                    window_frame_indices(m.time_s, frames, proc.fps),
                                    proc.frames_window(m.time_s, frames), "spoken")
            task.advance()
    return exporter.finish()


def export_label_dir(label_dir: os.PathLike | str, out_dir: os.PathLike | str,
                     every: int = 1) -> Path:
    """Export the frames of a ``label`` output folder with their reviewed or predicted label."""
    label_dir, out_dir = Path(label_dir), Path(out_dir)
    _check_out(label_dir, out_dir)
    info = {}
    if (label_dir / RUN_INFO).is_file():
        info = json.loads((label_dir / RUN_INFO).read_text(encoding="utf-8"))
    patient = info.get("procedure_name") or label_dir.name
    with open(label_dir / "labels.csv", newline="", encoding="utf-8") as fh:
        windows = list(csv.DictReader(fh))
    with open(label_dir / "frame_labels.csv", newline="", encoding="utf-8") as fh:
        frame_rows = list(csv.DictReader(fh))
    seq = NrrdSequenceSource(label_dir / "frames.seq.nrrd")
    if len(seq.frames) != len(frame_rows):
        raise ProcedureError(f"frames.seq.nrrd has {len(seq.frames)} frames but "
                             f"frame_labels.csv lists {len(frame_rows)}", label_dir,
                             "the folder is incomplete: label the procedure again")
    by_window = {int(w["window"]): w for w in windows}
    exporter = _Exporter(out_dir, every)
    groups: dict[int, list[int]] = {}
    for i, row in enumerate(frame_rows):
        groups.setdefault(int(row["window"]), []).append(i)
    for win, rows in sorted(groups.items()):
        w = by_window[win]
        label = (w.get("reviewed_label") or "").strip() or w["predicted_label"]
        source = "reviewed" if (w.get("reviewed_label") or "").strip() else "predicted"
        idx = [int(frame_rows[i]["frame_index"]) for i in rows]
        exporter.add_window(patient, label, float(w["time_s"]), win, idx,
                            seq.frames[rows], source)
    return exporter.finish()


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
