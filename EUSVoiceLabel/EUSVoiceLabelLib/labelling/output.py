"""The outputs of a labelling run, streamed window by window into the output folder:
``labels.csv``, ``frame_labels.csv``, the frame, heat-map and landmark sequences, the colour
table, the markups points (all of them, and as a sequence that shows each window's point only
during its window), ``run.json`` and the scene file (docs/contracts.md)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .. import __version__
from ..core.csvtext import csv_text
from ..core.errors import ConfigError
from ..core.fileio import StagedFolder, atomic_write_text
from ..core.paper import WINDOW_FRAMES
from ..data.mentions import Mention
from ..data.outputs import OutputKind, claim_output, json_with_keys, procedure_inputs
from ..data.procedure import Procedure, window_frame_indices
from ..data.vocabulary import LabelSet
from ..slicer.files import (LABELMAP_NODE, SequenceStreamWriter, color_table_csv, frame_geometry,
                            markups_points_json, pixel_to_lps, write_point_sequence)
from ..slicer.overlays import window_point
from ..slicer.scene import write_scene_mrml
from .run import DEFAULT_CAM_THRESHOLD, LabelResult, WindowResult, frame_owners
from .runs import runs_of


def labels_csv(result: LabelResult) -> str:
    """One row per window: times, the spoken label, the network's predicted label, confidence
    and class probabilities (``p_<label>``), whether they agree, the mention's source, phrase
    and detector confidence (automatic mentions), the heat-map peak, then the window's
    ``label`` (fused with what was said, :mod:`.fusion`), its ``label_confidence`` and the
    review flag (``needs_review`` 1/0, ``review_reason``)."""
    ids = result.labelset.ids
    header = ["window", "time_s", "end_s", "spoken_label", "predicted_label", "confidence",
              "agrees", "source", "text", "mention_confidence", "peak_col", "peak_row",
              "label", "label_confidence", "needs_review", "review_reason",
              *[f"p_{i}" for i in ids]]
    rows = []
    for w in result.windows:
        spoken = w.spoken_label or ""
        rows.append([w.index, f"{w.time_s:.3f}", "" if w.end_s is None else f"{w.end_s:.3f}",
                     spoken, w.predicted, f"{w.confidence:.4f}",
                     "" if not spoken else int(spoken == w.predicted), w.mention.source,
                     w.mention.text,
                     "" if w.mention.confidence is None else f"{w.mention.confidence:.4f}",
                     "" if w.peak is None else w.peak[0],
                     "" if w.peak is None else w.peak[1],
                     w.label, f"{w.label_confidence:.4f}", int(w.needs_review), w.review_reason,
                     *[f"{p:.4f}" for p in w.probabilities]])
    return csv_text(header, rows)


FRAME_COLUMNS = ("frame_index", "time_s", "label", "confidence", "window", "spoken_label",
                 "predicted_label", "predicted_confidence", "needs_review")


def frame_labels_csv(result: LabelResult) -> str:
    """One row per labelled frame (:data:`FRAME_COLUMNS`; ``label`` and ``confidence`` are the
    fused label's, ``predicted_*`` the network's)."""
    rows = [[r["frame_index"], f"{r['time_s']:.3f}", r["label"], f"{r['confidence']:.4f}",
             r["window"], r["spoken_label"], r["predicted_label"],
             f"{r['predicted_confidence']:.4f}", int(r["needs_review"])]
            for r in result.frame_labels()]
    return csv_text(FRAME_COLUMNS, rows)


#: ``label --out`` (and the Slicer module's export): a folder of the files below.  Folders
#: written before the output marker existed are recognised by their ``run.json``.
LABEL_OUTPUT = OutputKind("label", "a 'label' output folder", folder=True,
                          signature=json_with_keys("eusvoicelabel_version", "procedure_name",
                                                   name="run.json"))


def labelmap_dtype(labelset: LabelSet) -> str:
    """Voxel type of the landmark labelmap: value k + 1 marks label k, 0 is background."""
    return "uint8" if len(labelset) < 256 else "uint16"


class LabelOutputWriter:
    """Streams a labelling run to ``out_dir`` (the files of docs/contracts.md), one window
    at a time.

    Create it with the windows' mentions, pass :meth:`add` as ``on_window`` to
    :func:`label_procedure`, then call :meth:`finish`.  ``out_dir`` is claimed first
    (:func:`..data.outputs.claim_output`: not the procedure, not one of ``inputs``, new, empty or
    an earlier label output).  Every file is written into a staging folder and moved in by
    :meth:`finish` at once, so an interrupted or failing run (a full disk: one-line
    ``OutputError``) leaves the previous output folder as it was.
    """

    SEQUENCES = ("frames.seq.nrrd", "cam.seq.nrrd", "landmarks.seq.nrrd")
    POINTS_SEQUENCE = "landmark_points.seq.mrb"

    def __init__(self, out_dir: os.PathLike | str, proc: Procedure, labelset: LabelSet,
                 mentions: Sequence[Mention], frames_per_window: int,
                 cam_threshold: float = DEFAULT_CAM_THRESHOLD, write_sequences: bool = True,
                 provenance: Optional[dict] = None,
                 inputs: Sequence[os.PathLike | str] = ()):
        if not 0.0 < cam_threshold < 1.0:
            raise ConfigError(f"cam threshold must lie between 0 and 1, not {cam_threshold}")
        self.out_dir = Path(out_dir)
        claim_output(self.out_dir, LABEL_OUTPUT, [*procedure_inputs(proc), *inputs])
        self._stage = StagedFolder(self.out_dir)
        self.provenance = dict(provenance or {})
        self.proc = proc
        self.labelset = labelset
        self.cam_threshold = cam_threshold
        self.frames_per_window = int(frames_per_window)
        mentions = sorted(mentions, key=lambda m: m.time_s)
        # Which frames each window writes.
        owner = frame_owners([window_frame_indices(m.time_s, frames_per_window, proc.fps)
                              for m in mentions], proc.n_frames)
        self._owned: dict[int, list[int]] = {}
        for f, k in owner.items():
            self._owned.setdefault(k, []).append(f)
        self.frame_indices = sorted(owner)
        times = [f / proc.fps for f in self.frame_indices]
        w, h = proc.frame_size
        spacing = proc.pixel_spacing_mm
        self._labelmap = np.dtype(labelmap_dtype(labelset))
        self._writers: list[SequenceStreamWriter] = []
        if write_sequences:
            try:
                with self._stage.writing() as stage:
                    self._writers = [
                        SequenceStreamWriter(stage / "frames.seq.nrrd", w, h, times, "uint8",
                                             spacing),
                        SequenceStreamWriter(stage / "cam.seq.nrrd", w, h, times, "float32",
                                             spacing),
                        SequenceStreamWriter(stage / "landmarks.seq.nrrd", w, h, times,
                                             self._labelmap.name, spacing,
                                             node_class=LABELMAP_NODE),
                    ]
            except BaseException:
                self.abort()
                raise
        self.geometry = frame_geometry(spacing, (w, h))

    def add(self, window: WindowResult, frames: np.ndarray) -> None:
        """Write the frames this window owns (frames = the window's cropped frames)."""
        if not self._writers:
            return
        first = int(window.frame_indices[0])
        cam = window.cam if window.cam is not None else np.zeros(frames.shape[1:], np.float32)
        region = np.zeros(frames.shape[1:], self._labelmap)
        if window.region is not None:
            region[window.region] = self.labelset.index(window.label) + 1
        frames_w, cam_w, land_w = self._writers
        with self._stage.writing():
            for f in self._owned.get(window.index, []):
                frames_w.add(frames[f - first])
                cam_w.add(cam.astype(np.float32))
                land_w.add(region)

    def abort(self) -> None:
        """Drop everything written so far (the output folder keeps its previous content)."""
        for w in self._writers:
            w.abort()
        if getattr(self, "_whole_preview", None) is not None:
            self._whole_preview.abort()
        self._stage.abort()

    #: The files of a whole-procedure run (``--whole``), besides its ``frame_labels.csv``.
    WHOLE_FILES = ("whole_labels.seq.mrb", "whole_frames.seq.nrrd", "whole.mrml",
                   "timeline.png")

    def start_whole(self, steps: np.ndarray, preview_every: int = 0):
        """Open the preview frames sequence of a whole run (every ``preview_every``-th
        labelled frame, half resolution; 0: none) and return the ``on_chunk`` callback of
        :func:`.whole.label_whole` that streams them."""
        self._whole_preview = None
        if preview_every <= 0 or not len(steps):
            return None
        picked = steps[::preview_every]
        w, h = self.proc.frame_size
        sx, sy = self.proc.pixel_spacing_mm or (1.0, 1.0)
        with self._stage.writing() as stage:
            self._whole_preview = SequenceStreamWriter(
                stage / "whole_frames.seq.nrrd", (w + 1) // 2, (h + 1) // 2,
                [f / self.proc.fps for f in picked], "uint8", (2 * sx, 2 * sy))
        wanted = set(int(f) for f in picked)
        writer = self._whole_preview

        def on_chunk(chunk_steps: np.ndarray, frames: np.ndarray) -> None:
            with self._stage.writing():
                for f, frame in zip(chunk_steps, frames):
                    if int(f) in wanted:
                        writer.add(frame[::2, ::2])
        return on_chunk

    def _write_whole(self, stage: Path, whole) -> dict[str, Path]:
        """The files of a whole-procedure run into the staging folder."""
        from .timeline import write_timeline_png
        from .whole import write_frame_labels
        from ..slicer.files import write_text_sequence
        from ..slicer.scene import write_whole_scene_mrml

        out = {"frame_labels.csv": write_frame_labels(stage / "frame_labels.csv", whole)}
        names = {lab.id: lab.name for lab in self.labelset.labels}

        def texts():
            for r in whole.rows():
                name = names.get(r["label"], r["label"])
                yield r["time_s"], f"{name} {r['confidence']:.2f} ({r['source']})"

        out["whole_labels.seq.mrb"] = write_text_sequence(
            stage / "whole_labels.seq.mrb", texts(), f"{self.proc.name} frame labels")
        preview = getattr(self, "_whole_preview", None)
        frames_seq = None
        if preview is not None:
            if preview.count == len(preview.times):
                out["whole_frames.seq.nrrd"] = frames_seq = preview.close()
            else:
                preview.abort()
        if len(whole):
            out["whole.mrml"] = write_whole_scene_mrml(
                stage / "whole.mrml", frames_seq="whole_frames.seq.nrrd" if frames_seq
                else None, fps=self.proc.fps / whole.settings.stride, name=self.proc.name)
        stride = whole.settings.stride
        every = max(1, len(whole) // 4000)
        rows = list(whole.rows())
        conf = (np.array([r["time_s"] for r in rows[::every]]),
                np.array([r["confidence"] for r in rows[::every]]))
        mentions = [(a.frame_indices[0] / self.proc.fps, a.label) for a in whole.anchors]
        out["timeline.png"] = write_timeline_png(
            stage / "timeline.png", runs_of(rows), self.labelset, self.proc.fps, stride,
            mentions, conf, title=f"{self.proc.name}: landmark per frame (opacity: confidence; "
            "outlined: spoken window; triangles: mentions)")
        return out

    def finish(self, result: LabelResult, whole=None) -> dict[str, Path]:
        """Close the sequences and write the CSV, colour table, markups and scene files (and
        with ``whole``, a :class:`.whole.WholeResult`, the whole-procedure files), then
        move them into the output folder at once; returns every file written by name."""
        self._whole = whole
        try:
            with self._stage.writing():
                staged = self._write_all(result)
            # A cancelled run writes no sequences: an earlier run's would not match its tables.
            self._stage.commit(drop=(*self.SEQUENCES, self.POINTS_SEQUENCE, "scene.mrml",
                                     *self.WHOLE_FILES))
        except BaseException:
            self.abort()
            raise
        return {name: self.out_dir / name for name in staged}

    def _write_all(self, result: LabelResult) -> list[str]:
        """Every file into the staging folder; returns their names."""
        out: dict[str, Path] = {}
        if any(w.count != len(w.times) for w in self._writers):
            # A cancelled run has frames missing: drop the sequences, keep the tables.
            for w in self._writers:
                w.abort()
            self._writers = []
        for w in self._writers:
            out[w.path.name] = w.close()
        stage = self._stage.path
        points = self._window_points(result)
        texts = {"labels.csv": labels_csv(result), "frame_labels.csv": frame_labels_csv(result),
                 "landmarks.csv": self._color_table(),
                 "landmarks.mrk.json": markups_points_json(
                     "EUS landmarks", [p for w in result.windows for p in points[w.index]]),
                 "run.json": json.dumps(self._run_info(result), indent=2) + "\n"}
        for name, text in texts.items():
            atomic_write_text(stage / name, text)
            out[name] = stage / name
        if self._writers:
            out[self.POINTS_SEQUENCE] = self._point_sequence(stage, result, points)
        if getattr(self, "_whole", None) is not None:
            out.update(self._write_whole(stage, self._whole))
        if "frames.seq.nrrd" in out:
            out["scene.mrml"] = write_scene_mrml(stage / "scene.mrml", fps=self.proc.fps,
                                                 name=self.proc.name)
        return list(out)

    def _color_table(self) -> str:
        """``landmarks.csv``: the labelmap value (class index + 1) of each landmark."""
        return color_table_csv([(i + 1, lab.name, lab.color)
                                for i, lab in enumerate(self.labelset.labels)])

    def _window_points(self, result: LabelResult) -> dict[int, list[dict]]:
        """Window index -> its markups control points: the heat-map peak (none for a window
        without a heat map)."""
        points: dict[int, list[dict]] = {}
        for w in result.windows:
            point = window_point(w, self.labelset)
            points[w.index] = [] if point is None else [
                {**point, "position": pixel_to_lps(point["col"], point["row"], self.geometry)}]
        return points

    def _point_sequence(self, folder: Path, result: LabelResult,
                        points: dict[int, list[dict]]) -> Path:
        """``landmark_points.seq.mrb``: each window's point from its first frame on (the frames
        hold only labelled windows, and the next window's item takes over at its first
        frame)."""
        items = [(min(self._owned[w.index]) / self.proc.fps, points[w.index])
                 for w in result.windows if self._owned.get(w.index)]
        return write_point_sequence(folder / self.POINTS_SEQUENCE, items)

    def _run_info(self, result: LabelResult) -> dict:
        """``run.json``: what was labelled, with what, and how far."""
        return {"procedure": str(self.proc.path), "procedure_name": self.proc.name,
                "labels": self.labelset.to_json(), "cam_threshold": self.cam_threshold,
                "windows": len(result.windows), "cancelled": result.cancelled,
                "frames": len(self.frame_indices), "eusvoicelabel_version": __version__,
                **self.provenance, **self._whole_info()}

    def _whole_info(self) -> dict:
        whole = getattr(self, "_whole", None)
        if whole is None:
            return {}
        return {"window_frames": self.frames_per_window,
                "whole": {"settings": whole.settings.to_json(),
                          "reject_below": whole.reject_below, "labelled_frames": len(whole),
                          "cancelled": whole.cancelled, **whole.info}}


def write_label_outputs(result: LabelResult, out_dir: os.PathLike | str,
                        frames_per_window: Optional[int] = None) -> dict[str, Path]:
    """Write every output of a finished :class:`LabelResult` (re-reading its frames)."""
    n = frames_per_window or (len(result.windows[0].frame_indices) if result.windows else WINDOW_FRAMES)
    writer = LabelOutputWriter(out_dir, result.procedure, result.labelset,
                               [w.mention for w in result.windows], n, result.cam_threshold)
    try:
        for w in result.windows:
            writer.add(w, result.procedure.frames_window(w.time_s, n))
        return writer.finish(result)
    except BaseException:
        writer.abort()
        raise
