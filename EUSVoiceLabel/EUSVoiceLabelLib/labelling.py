"""Labelling a procedure: every mention window gets a predicted landmark, its confidence, class
probabilities and a Grad-CAM heat map, and the results are written as CSV files and as files
3D Slicer opens natively.

Windows are processed one at a time (decoded by time range), so a 20-minute procedure never
sits in memory; the Slicer files are streamed frame by frame.  Each frame of the labelled
windows belongs to one window: the latest window whose 25 frames include it (a mention spoken
while the previous window is still running takes over from its onset).

The landmark region of a window (``landmarks.seq.nrrd``) is where its heat map reaches
``cam_threshold`` (default 0.5, i.e. half of the map's peak, the usual Grad-CAM
"evidence region"), labelled with the predicted landmark's value (class index + 1).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from .data.audio import SpectrogramSettings, spectrogram
from .data.dataset import WindowSettings, resize_frames
from .core.errors import ConfigError, MentionsError, OutputError
from .nn.explain import grad_cam, peak_of, upsample_map
from .core.fileio import atomic_write_text
from .data.mentions import Mention
from .data.procedure import Procedure, onset_frame
from .slicer.files import (LABELMAP_NODE, SequenceStreamWriter, color_table_csv, frame_geometry,
                           markups_points_json, pixel_to_lps)
from .data.vocabulary import LabelSet

log = logging.getLogger(__name__)

DEFAULT_CAM_THRESHOLD = 0.5


class LabelModel:
    """A trained model ready to label windows (read from a checkpoint, never unpickled)."""

    def __init__(self, loaded, device) -> None:
        from .nn.fastpath import optimise_for_inference

        self._loaded = loaded
        # Frozen weights, BatchNorm folded, channels-last: same predictions, and Grad-CAM's
        # backward stops at the heat-map layer (measured 2x faster; docs/benchmarks.md).
        # In place: the loaded copy is used for nothing else (saves a copy of the weights).
        self.model = optimise_for_inference(loaded.model, device, inplace=True)
        self.labelset: LabelSet = loaded.labelset
        self.variant: str = loaded.config.variant
        self.device = device
        pre = loaded.preprocessing or {}
        size = pre.get("image_size") or list(loaded.config.image_size)
        self.settings = WindowSettings(
            image_size=tuple(int(v) for v in size),
            frames=int(pre.get("frames", loaded.config.frames)),
            spectrogram=SpectrogramSettings.from_json(pre.get("spectrogram", {})))

    @classmethod
    def load(cls, path: os.PathLike | str, device: str = "auto",
             labelset: Optional[LabelSet] = None) -> "LabelModel":
        """Load a checkpoint written by ``eusvoicelabel train``.

        Raises:
            CheckpointError: unreadable, untrusted or incompatible checkpoint.
        """
        from .train.checkpoints import load_checkpoint
        from .nn.devices import select_device

        dev = select_device(device)
        return cls(load_checkpoint(path, labelset=labelset, device=dev), dev)

    @property
    def has_image(self) -> bool:
        return getattr(self.model, "image_branch", None) is not None


@dataclass
class WindowResult:
    """The labelling of one mention window."""

    index: int
    mention: Mention
    predicted: str
    confidence: float
    probabilities: np.ndarray  # float32 (K,)
    frame_indices: np.ndarray  # int64 (frames,) on the 25 fps grid
    cam: Optional[np.ndarray] = None  # float32 (H, W) at the cropped frame size, 0-1
    joint: Optional[np.ndarray] = None  # float32 (H, W) joint image-voice map, 0-1
    peak: Optional[tuple[int, int]] = None  # (column, row) of the heat-map maximum

    @property
    def time_s(self) -> float:
        return self.mention.time_s

    @property
    def end_s(self) -> Optional[float]:
        return self.mention.end_s

    @property
    def spoken_label(self) -> Optional[str]:
        """The label that was said (known for file / transcript / detected mentions)."""
        return self.mention.label or None


@dataclass
class LabelResult:
    """All windows of a labelled procedure."""

    procedure: Procedure
    labelset: LabelSet
    windows: list[WindowResult] = field(default_factory=list)
    cancelled: bool = False
    cam_threshold: float = DEFAULT_CAM_THRESHOLD

    def frame_owners(self) -> dict[int, int]:
        """Frame index -> index (in ``windows``) of the window that labels it."""
        return frame_owners([w.frame_indices for w in self.windows], self.procedure.n_frames)

    def frame_labels(self) -> list[dict]:
        """One row per labelled frame: frame_index, time_s, label, confidence, window,
        spoken_label."""
        rows = []
        for f, k in self.frame_owners().items():
            w = self.windows[k]
            rows.append({"frame_index": f, "time_s": f / self.procedure.fps,
                         "label": w.predicted, "confidence": w.confidence, "window": w.index,
                         "spoken_label": w.spoken_label or ""})
        return rows


def frame_owners(windows: Sequence[np.ndarray], n_frames: int) -> dict[int, int]:
    """Frame index -> position in ``windows`` (frame-index arrays in onset order) of the window
    that labels it, sorted by frame: a later window takes over overlapping frames, frames past
    the recording belong to none."""
    owners: dict[int, int] = {}
    for k, indices in enumerate(windows):
        for f in indices:
            if 0 <= f < n_frames:
                owners[int(f)] = k
    return dict(sorted(owners.items()))


def window_frame_indices(mention: Mention, frames: int, fps: float) -> np.ndarray:
    """The frame indices (25 fps grid) of a mention's window."""
    return onset_frame(mention.time_s, fps) + np.arange(frames, dtype=np.int64)


def label_procedure(proc: Procedure, model: LabelModel,
                    mentions: Optional[Sequence[Mention]] = None, with_cam: bool = True,
                    joint_map: bool = False,
                    progress: Optional[Callable[[int, int], None]] = None,
                    should_stop: Optional[Callable[[], bool]] = None,
                    on_window: Optional[Callable[[WindowResult, np.ndarray], None]] = None,
                    cam_threshold: float = DEFAULT_CAM_THRESHOLD) -> LabelResult:
    """Label every mention window of a procedure.

    Args:
        proc: the procedure.
        model: a :class:`LabelModel`.
        mentions: windows to label (default: the procedure's mentions).
        with_cam: compute Grad-CAM heat maps (needs an image branch).
        joint_map: also keep the joint image-voice map C.
        progress: called with (done, total) after each window.
        should_stop: checked before each window; when it returns True labelling stops and the
            result (``cancelled=True``) keeps the windows done so far.
        on_window: called with each window's result and its cropped frames (uint8), e.g. to
            stream outputs to disk.
    """
    import torch

    mentions = sorted(proc.mentions if mentions is None else mentions, key=lambda m: m.time_s)
    if not mentions:
        raise MentionsError("no mentions to label", proc.path,
                            "give --mentions auto, a mentions CSV or a transcript")
    if list(model.labelset.ids) != list(proc.labelset.ids):
        log.info("labelling with the model's labels %s", model.labelset.ids)
    proc.check_mentions(mentions)
    settings = model.settings
    result = LabelResult(proc, model.labelset, cam_threshold=cam_threshold)
    net = model.model.eval()
    crop_hw = (proc.frame_size[1], proc.frame_size[0])
    for k, m in enumerate(mentions):
        if should_stop is not None and should_stop():
            result.cancelled = True
            break
        frames = proc.frames_window(m.time_s, settings.frames)
        image = resize_frames(frames, settings.image_size).astype(np.float32) / 255.0
        voice = spectrogram(proc.voice_window(m), proc.sample_rate, settings.spectrogram)
        img_t = torch.from_numpy(image)[None].to(model.device)
        voice_t = torch.from_numpy(voice)[None].to(model.device)
        cam = joint = None
        if with_cam and model.has_image:
            exp = grad_cam(net, img_t, voice_t, joint=joint_map)
            probs = exp.probabilities
            if exp.cam is not None:
                cam = upsample_map(exp.cam, crop_hw)
            if exp.joint is not None:
                joint = upsample_map(exp.joint, crop_hw)
        else:
            with torch.inference_mode():
                probs = torch.softmax(net(img_t, voice_t).float(), dim=1)[0].cpu().numpy()
        cls = int(np.argmax(probs))
        w = WindowResult(index=k, mention=m, predicted=model.labelset.ids[cls],
                         confidence=float(probs[cls]), probabilities=probs.astype(np.float32),
                         frame_indices=window_frame_indices(m, settings.frames, proc.fps),
                         cam=cam, joint=joint, peak=peak_of(cam) if cam is not None else None)
        result.windows.append(w)
        if on_window is not None:
            on_window(w, frames)
        if progress is not None:
            progress(k + 1, len(mentions))
    return result


# --------------------------------------------------------------------------- outputs
def _csv_text(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def labels_csv(result: LabelResult) -> str:
    """One row per window: times, spoken and predicted labels, the network's confidence, the
    mention's source, phrase and detector confidence (automatic mentions), the heat-map peak and
    the class probabilities."""
    ids = result.labelset.ids
    header = ["window", "time_s", "end_s", "spoken_label", "predicted_label", "confidence",
              "agrees", "source", "text", "mention_confidence", "peak_col", "peak_row",
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
                     *[f"{p:.4f}" for p in w.probabilities]])
    return _csv_text(header, rows)


def frame_labels_csv(result: LabelResult) -> str:
    rows = [[r["frame_index"], f"{r['time_s']:.3f}", r["label"], f"{r['confidence']:.4f}",
             r["window"], r["spoken_label"]] for r in result.frame_labels()]
    return _csv_text(["frame_index", "time_s", "label", "confidence", "window", "spoken_label"],
                     rows)


class LabelOutputWriter:
    """Streams a labelling run to ``out_dir`` (SPEC §3 files), one window at a time.

    Create it with the windows' mentions, pass :meth:`add` as ``on_window`` to
    :func:`label_procedure`, then call :meth:`finish`.  Every file is written through a
    temporary file and renamed, so an interrupted run leaves no half-written output.
    """

    SEQUENCES = ("frames.seq.nrrd", "cam.seq.nrrd", "landmarks.seq.nrrd")

    def __init__(self, out_dir: os.PathLike | str, proc: Procedure, labelset: LabelSet,
                 mentions: Sequence[Mention], frames_per_window: int,
                 cam_threshold: float = DEFAULT_CAM_THRESHOLD, write_sequences: bool = True,
                 provenance: Optional[dict] = None):
        if not 0.0 < cam_threshold < 1.0:
            raise ConfigError(f"cam threshold must lie between 0 and 1, not {cam_threshold}")
        self.out_dir = Path(out_dir)
        if self.out_dir.resolve() == proc.path.resolve() or \
                proc.path.resolve() in self.out_dir.resolve().parents:
            raise OutputError("the output folder lies inside the input procedure", self.out_dir,
                              "choose an output folder outside the procedure folder")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.provenance = dict(provenance or {})
        self.proc = proc
        self.labelset = labelset
        self.cam_threshold = cam_threshold
        mentions = sorted(mentions, key=lambda m: m.time_s)
        # Which frames each window writes.
        owner = frame_owners([window_frame_indices(m, frames_per_window, proc.fps)
                              for m in mentions], proc.n_frames)
        self._owned: dict[int, list[int]] = {}
        for f, k in owner.items():
            self._owned.setdefault(k, []).append(f)
        self.frame_indices = sorted(owner)
        times = [f / proc.fps for f in self.frame_indices]
        w, h = proc.frame_size
        spacing = proc.pixel_spacing_mm
        self._writers: list[SequenceStreamWriter] = []
        if write_sequences:
            self._writers = [
                SequenceStreamWriter(self.out_dir / "frames.seq.nrrd", w, h, times, "uint8",
                                     spacing),
                SequenceStreamWriter(self.out_dir / "cam.seq.nrrd", w, h, times, "float32",
                                     spacing),
                SequenceStreamWriter(self.out_dir / "landmarks.seq.nrrd", w, h, times, "uint8",
                                     spacing, node_class=LABELMAP_NODE),
            ]
        self.geometry = frame_geometry(spacing, (w, h))

    def add(self, window: WindowResult, frames: np.ndarray) -> None:
        """Write the frames this window owns (frames = the window's cropped frames)."""
        if not self._writers:
            return
        first = int(window.frame_indices[0])
        cam = window.cam if window.cam is not None else np.zeros(frames.shape[1:], np.float32)
        value = self.labelset.index(window.predicted) + 1
        region = np.where(cam >= self.cam_threshold, value, 0).astype(np.uint8)
        if window.cam is None:
            region[:] = 0
        for f in self._owned.get(window.index, []):
            frames_w, cam_w, land_w = self._writers
            frames_w.add(frames[f - first])
            cam_w.add(cam.astype(np.float32))
            land_w.add(region)

    def abort(self) -> None:
        for w in self._writers:
            w.abort()

    def finish(self, result: LabelResult) -> dict[str, Path]:
        """Close the sequences and write the CSV, colour table, markups and scene files."""
        out: dict[str, Path] = {}
        if any(w.count != len(w.times) for w in self._writers):
            # A cancelled run has frames missing: drop the sequences, keep the tables.
            self.abort()
            self._writers = []
        for w in self._writers:
            out[w.path.name] = w.close()
        d = self.out_dir
        atomic_write_text(d / "labels.csv", labels_csv(result))
        out["labels.csv"] = d / "labels.csv"
        atomic_write_text(d / "frame_labels.csv", frame_labels_csv(result))
        out["frame_labels.csv"] = d / "frame_labels.csv"
        entries = [(i + 1, lab.name, lab.color) for i, lab in enumerate(self.labelset.labels)]
        atomic_write_text(d / "landmarks.csv", color_table_csv(entries))
        out["landmarks.csv"] = d / "landmarks.csv"
        points = []
        for w in result.windows:
            if w.peak is None:
                continue
            lab = self.labelset.get(w.predicted)
            points.append({
                "label": lab.name,
                "position": pixel_to_lps(w.peak[0], w.peak[1], self.geometry),
                "description": f"t={w.time_s:.2f} s, confidence {w.confidence:.2f}"
                               + (f", said: {w.spoken_label}" if w.spoken_label else "")})
        atomic_write_text(d / "landmarks.mrk.json",
                          markups_points_json("EUS landmarks", points))
        out["landmarks.mrk.json"] = d / "landmarks.mrk.json"
        from . import __version__

        run = {"procedure": str(self.proc.path), "procedure_name": self.proc.name,
               "labels": self.labelset.to_json(), "cam_threshold": self.cam_threshold,
               "windows": len(result.windows), "cancelled": result.cancelled,
               "frames": len(self.frame_indices), "eusvoicelabel_version": __version__,
               **self.provenance}
        atomic_write_text(d / "run.json", json.dumps(run, indent=2) + "\n")
        out["run.json"] = d / "run.json"
        if "frames.seq.nrrd" in out:
            try:
                from .slicer.scene import write_scene_mrml
            except ImportError:  # pragma: no cover - scene writer not available
                write_scene_mrml = None
            if write_scene_mrml is not None:
                out["scene.mrml"] = write_scene_mrml(d / "scene.mrml", fps=self.proc.fps,
                                                     name=self.proc.name)
        return out


def write_label_outputs(result: LabelResult, out_dir: os.PathLike | str,
                        frames_per_window: Optional[int] = None) -> dict[str, Path]:
    """Write every output of a finished :class:`LabelResult` (re-reading its frames)."""
    n = frames_per_window or (len(result.windows[0].frame_indices) if result.windows else 25)
    writer = LabelOutputWriter(out_dir, result.procedure, result.labelset,
                               [w.mention for w in result.windows], n, result.cam_threshold)
    try:
        for w in result.windows:
            writer.add(w, result.procedure.frames_window(w.time_s, n))
        return writer.finish(result)
    except BaseException:
        writer.abort()
        raise


def resolve_mentions(proc: Procedure, mentions: Optional[str], labelset: LabelSet,
                     progress: bool = False) -> list[Mention]:
    """The windows to label: ``"auto"`` detects them from the audio, a path reads a mentions
    CSV or SRT/WebVTT transcript, None takes the procedure's own mentions.csv (else auto)."""
    from .data.mentions import read_mentions

    if mentions is None and proc.mentions:
        return list(proc.mentions)
    if mentions is None or str(mentions) == "auto":
        from .speech.detect import detect_mentions

        found = detect_mentions(proc.audio, proc.sample_rate, labelset,
                                audio_offset_s=proc.audio_offset_s, progress=progress)
        found = [m for m in found if 0 <= m.time_s < proc.duration_s]
        if not found:
            raise MentionsError("no landmark mention was detected in the audio", proc.path,
                                "check the recording, or give a mentions CSV or transcript")
        return found
    return read_mentions(mentions, labelset, offset_s=proc.audio_offset_s)


def label_to_folder(procedure: os.PathLike | str, model_path: os.PathLike | str,
                    out_dir: os.PathLike | str, mentions: Optional[str] = None,
                    device: str = "auto", with_cam: bool = True,
                    cam_threshold: float = DEFAULT_CAM_THRESHOLD,
                    progress: bool = True) -> tuple[LabelResult, dict[str, Path]]:
    """Label a procedure folder and write every output into ``out_dir`` (the command
    ``eusvoicelabel label``)."""
    from tqdm.auto import tqdm

    from .data.procedure import load_procedure

    model = LabelModel.load(model_path, device)
    proc = load_procedure(procedure, labelset=model.labelset)
    chosen = resolve_mentions(proc, mentions, model.labelset, progress=progress)
    proc.check_mentions(chosen)
    writer = LabelOutputWriter(out_dir, proc, model.labelset, chosen, model.settings.frames,
                               cam_threshold, provenance={
                                   "model": str(model_path), "variant": model.variant,
                                   "mentions": "procedure" if mentions is None else str(mentions),
                                   "device": str(model.device)})
    bar = tqdm(total=len(chosen), desc="label", unit="window", disable=not progress)
    try:
        result = label_procedure(proc, model, chosen, with_cam=with_cam,
                                 progress=lambda done, total: bar.update(1),
                                 on_window=writer.add, cam_threshold=cam_threshold)
        files = writer.finish(result)
    except BaseException:
        writer.abort()
        raise
    finally:
        bar.close()
    return result, files
