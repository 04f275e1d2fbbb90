"""Slicer-free helpers of the Slicer module (no ``slicer``/``qt`` imports, tested with pytest).

The scripted module ``EUSVoiceLabel.py`` keeps only the MRML glue; everything it decides that
can be decided without Slicer lives here:

- **inputs**: :func:`path_or_none` (a parameter-node path that is really set),
  :func:`recording_kind`, :func:`procedure_from_files` (a video / frames folder / ``.seq.nrrd``
  + audio file + offset, or a procedure folder (docs/contracts.md)) and :func:`procedure_from_frames` (frames
  that already live in a Slicer sequence, read lazily through a callback),
  :func:`sequence_times` (times of a sequence's index values), :func:`apply_problems` (why
  Apply is not possible yet).
- **geometry**: :func:`cine_ijk_to_ras` (the DICOM-cine convention Slicer uses for 2-D
  sequences), :func:`sequence_crop` (whether a sequence's frames still need the crop) and
  :func:`crop_ijk_to_ras` (the heat map of a cropped region placed on the frame).
- **synchronised outputs**: :func:`overlay_timeline`, where each per-window output sequence
  needs an item so that the browser shows a window's heat map / evidence / label during the
  window and nothing elsewhere.
- **background training**: :func:`train_arguments` (``PythonSlicer -m EUSVoiceLabelLib train
  ... --progress json``, whose progress lines :func:`..core.progress.parse_progress_line`
  reads) and :func:`split_log_lines`.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from ..core.errors import ConfigError, MediaError, OutputError, ProcedureError
from ..core.variants import parse_image_size
from ..data.media import (AUDIO_SUFFIXES, IMAGE_SUFFIXES, FrameSource, VideoFileSource, open_frames,
                          write_wav)
from ..data.mentions import Mention, read_mentions, write_mentions_csv
from ..core.outputlock import output_session
from ..data.outputs import COHORT_PROCEDURE, claim_output, mark_output, procedure_inputs
from ..data.procedure import FPS, Procedure, default_crop, is_procedure_folder, load_procedure
from ..data.vocabulary import LabelSet, load_labelset
from .files import SequenceStreamWriter, write_frame_sequence

try:  # pip's own copy is always there in practice; without it only names are compared
    from packaging.requirements import Requirement
except ImportError:  # pragma: no cover
    Requirement = None  # type: ignore[assignment]

DEVICES = ("auto", "cpu", "cuda")

#: Frames of more than this many bytes make the module ask before loading a whole recording.
LARGE_SEQUENCE_BYTES = 4 << 30


# --------------------------------------------------------------------------- inputs
def path_or_none(value: object) -> Optional[Path]:
    """A path from a parameter node or widget, or None when unset.

    The parameter node stores an empty path as ``"."`` (``Path("")``): that means unset.
    """
    if value is None:
        return None
    text = os.fspath(value) if isinstance(value, os.PathLike) else str(value)
    text = text.strip()
    if text in ("", "."):
        return None
    return Path(text).expanduser()


def recording_kind(path: os.PathLike | str) -> str:
    """What a recording path is: ``"procedure"`` (a procedure folder,
    docs/contracts.md), ``"frames"`` (a
    folder of numbered images), ``"sequence"`` (``.seq.nrrd``) or ``"video"``.

    Raises:
        ProcedureError: the path does not exist or is a folder with neither.
    """
    path = Path(path)
    if not path.exists():
        raise ProcedureError("not found", path, "pick a video file, a frames folder or a "
                                                "procedure folder")
    if path.is_dir():
        if is_procedure_folder(path):
            return "procedure"
        if any(p.suffix.lower() in IMAGE_SUFFIXES for p in path.iterdir()):
            return "frames"
        raise ProcedureError("holds neither a procedure (video.*, frames/, frames.seq.nrrd) "
                             "nor numbered frames", path)
    if path.name.lower().endswith(".nrrd"):
        return "sequence"
    return "video"


def _check_audio(audio: Optional[Path]) -> None:
    if audio is None:
        return
    if not audio.is_file():
        raise MediaError("audio file not found", audio)
    if audio.suffix.lower() not in AUDIO_SUFFIXES + (".mp4", ".mov", ".mkv", ".avi", ".m4v"):
        raise MediaError(f"unsupported audio file type {audio.suffix!r}", audio,
                         "use " + ", ".join(AUDIO_SUFFIXES))


def _check_offset(offset: float) -> float:
    offset = float(offset)
    if not math.isfinite(offset) or abs(offset) > 24 * 3600:
        raise ConfigError(f"audio offset {offset!r} s is not a plausible number of seconds")
    return offset


def procedure_from_files(recording: os.PathLike | str, audio: Optional[os.PathLike | str] = None,
                         audio_offset_s: Optional[float] = None, fps: float = FPS,
                         labelset: Optional[LabelSet] = None,
                         mentions: Optional[os.PathLike | str | Sequence[Mention]] = None,
                         crop: Optional[Sequence[int]] = None) -> Procedure:
    """Open a recording the way the module's "Load procedure" does.

    Args:
        recording: a procedure folder (docs/contracts.md: its audio, offset, crop and mentions are used unless
            given here), a video file, a folder of numbered frames or a ``.seq.nrrd``.
        audio: audio file; default: the procedure folder's ``audio.*`` or the video's own track.
        audio_offset_s: audio time = video time + offset (default: the folder's
            ``procedure.json`` value, else 0; for a video's own track its container offset).
        fps: frame rate of a frames folder.
        labelset: vocabulary (default: the folder's ``labels.json`` or the paper's five).
        mentions: a mentions CSV / transcript, or Mention objects (default: none, or the
            procedure folder's ``mentions.csv``).
        crop: [x, y, w, h] (default: the central 690x350 region when frames are larger).

    Raises:
        ProcedureError, MediaError, MentionsError, ConfigError: naming the file at fault.
    """
    recording = Path(recording)
    kind = recording_kind(recording)
    audio_path = path_or_none(audio)
    _check_audio(audio_path)
    if kind == "procedure":
        proc = load_procedure(recording, labelset=labelset, mentions=mentions, crop=crop)
        if audio_path is not None:
            proc.audio_path = audio_path
            proc.audio_offset_s = 0.0
        if audio_offset_s is not None:
            proc.audio_offset_s = _check_offset(audio_offset_s)
        return proc
    labelset = labelset or load_labelset(None, recording.parent)
    if not (0 < fps <= 1000):
        raise ConfigError(f"frame rate {fps} must be positive", recording)
    source = open_frames(recording, fps=fps)
    offset = _check_offset(audio_offset_s or 0.0)
    if audio_path is None and isinstance(source, VideoFileSource) and source.has_audio:
        audio_path = recording
        if audio_offset_s is None:
            offset = source.audio_track_offset_s
    crop_t = _crop(crop, source.width, source.height, recording)
    proc = Procedure(path=recording, source=source, crop=crop_t, audio_offset_s=offset,
                     mentions=[], labelset=labelset, audio_path=audio_path)
    _attach_mentions(proc, mentions)
    return proc


def _crop(crop: Optional[Sequence[int]], width: int, height: int, where: Path
          ) -> tuple[int, int, int, int]:
    if crop is None:
        return default_crop(width, height)
    x, y, w, h = (int(v) for v in crop)
    if w <= 0 or h <= 0 or x < 0 or y < 0 or x + w > width or y + h > height:
        raise ConfigError(f"crop {[x, y, w, h]} lies outside the {width}x{height} frames", where,
                          "give [x, y, width, height] inside the frame")
    return x, y, w, h


def _attach_mentions(proc: Procedure, mentions) -> None:
    if mentions is None:
        return
    if isinstance(mentions, (str, os.PathLike)):
        proc.mentions_path = Path(mentions)
        proc.mentions = read_mentions(proc.mentions_path, proc.labelset,
                                      offset_s=proc.audio_offset_s)
    else:
        proc.mentions = sorted(mentions, key=lambda m: m.time_s)
    proc.check_mentions()


class CallbackFrameSource(FrameSource):
    """Frames fetched one at a time through ``get_frame(i) -> (H, W) or (H, W, C) array``.

    Used for a volume sequence that already lives in the Slicer scene (e.g. a DICOM cine
    loop): nothing is copied until a window asks for its frames.  ``times`` are the frames'
    times on the video clock (s, increasing); a requested time gets the nearest frame.
    """

    def __init__(self, get_frame: Callable[[int], np.ndarray], times: Sequence[float],
                 width: int, height: int, name: str = "sequence", cache_size: int = 32):
        self._get = get_frame
        self.times = np.asarray(times, dtype=np.float64)
        if self.times.ndim != 1 or len(self.times) == 0:
            raise MediaError("the sequence has no frames", name)
        if np.any(np.diff(self.times) < 0):
            raise MediaError("frame times are not increasing", name,
                             "sort the sequence by time")
        self.path = Path(name)
        self.width, self.height = int(width), int(height)
        step = float(np.median(np.diff(self.times))) if len(self.times) > 1 else 1.0 / FPS
        self.native_fps = 1.0 / step if step > 0 else FPS
        self.duration_s = float(self.times[-1] - self.times[0] + (step if step > 0 else 1 / FPS))
        self._cache: dict[int, np.ndarray] = {}
        self._cache_size = cache_size

    def _frame(self, i: int) -> np.ndarray:
        if i not in self._cache:
            if len(self._cache) >= self._cache_size:
                self._cache.pop(next(iter(self._cache)))
            self._cache[i] = to_grey_uint8(self._get(i), (self.height, self.width), self.path)
        return self._cache[i]

    def read(self, times: Sequence[float]) -> np.ndarray:
        t = np.asarray(times, dtype=np.float64) + self.times[0]
        pos = np.clip(np.searchsorted(self.times, t), 0, len(self.times) - 1)
        left = np.clip(pos - 1, 0, len(self.times) - 1)
        nearer_left = np.abs(t - self.times[left]) <= np.abs(self.times[pos] - t)
        idx = np.where(nearer_left, left, pos)
        out = np.empty((len(idx), self.height, self.width), dtype=np.uint8)
        for j, i in enumerate(idx):
            out[j] = self._frame(int(i))
        return out


def to_grey_uint8(frame: np.ndarray, shape: Optional[tuple[int, int]] = None,
                  where: object = "frame") -> np.ndarray:
    """A frame as grey uint8 (H, W): drops a leading 1-slice axis, converts RGB(A) with the
    usual luma weights and rescales other types to 0-255."""
    arr = np.asarray(frame)
    while arr.ndim > 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        arr = arr[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    elif arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise MediaError(f"frame has shape {np.shape(frame)}, expected a 2-D image", str(where))
    if arr.dtype != np.uint8:
        a = arr.astype(np.float32)
        in_range = a.size and 0.0 <= float(a.min()) and float(a.max()) <= 255.0
        # Values already on a 0-255 scale are kept; anything else (uint16 ultrasound, 0-1
        # floats, signed data) is stretched to 0-255.
        if in_range and (np.issubdtype(arr.dtype, np.integer) or float(a.max()) > 1.0):
            arr = np.rint(a).astype(np.uint8)
        else:
            lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
            arr = np.clip((a - lo) * (255.0 / (hi - lo) if hi > lo else 0.0), 0, 255
                          ).astype(np.uint8)
    if shape is not None and arr.shape != tuple(shape):
        raise MediaError(f"frame is {arr.shape[1]}x{arr.shape[0]}, the first frame is "
                         f"{shape[1]}x{shape[0]}", str(where), "all frames must share a size")
    return np.ascontiguousarray(arr)


def procedure_from_frames(get_frame: Callable[[int], np.ndarray], times: Sequence[float],
                          width: int, height: int, name: str = "sequence",
                          audio: Optional[os.PathLike | str] = None, audio_offset_s: float = 0.0,
                          labelset: Optional[LabelSet] = None,
                          mentions: Optional[os.PathLike | str | Sequence[Mention]] = None,
                          crop: Optional[Sequence[int]] = None) -> Procedure:
    """A procedure whose frames come from elsewhere (a Slicer sequence) plus an audio file.

    Frames are read lazily through ``get_frame`` (see :class:`CallbackFrameSource`).

    Raises:
        MediaError, MentionsError, ConfigError: naming what is wrong.
    """
    source = CallbackFrameSource(get_frame, times, width, height, name)
    audio_path = path_or_none(audio)
    _check_audio(audio_path)
    labelset = labelset or LabelSet.default()
    proc = Procedure(path=Path(name), source=source,
                     crop=_crop(crop, source.width, source.height, Path(name)),
                     audio_offset_s=_check_offset(audio_offset_s), mentions=[],
                     labelset=labelset, audio_path=audio_path)
    _attach_mentions(proc, mentions)
    return proc


def sequence_times(index_values: Sequence[str], index_unit: str = "s", fps: float = FPS
                   ) -> np.ndarray:
    """Times (s, from the first item) of a sequence's index values.

    Numeric values in ``s`` / ``ms`` / ``us`` are converted; frame numbers or values without a
    time unit (e.g. a DICOM cine loop without frame time: index "frame") are played at ``fps``.
    """
    n = len(index_values)
    if n == 0:
        return np.zeros(0)
    scale = {"s": 1.0, "sec": 1.0, "second": 1.0, "seconds": 1.0, "ms": 1e-3,
             "us": 1e-6, "\u00b5s": 1e-6}.get((index_unit or "").strip().lower())
    if scale is not None:
        try:
            vals = np.array([float(v) for v in index_values]) * scale
        except ValueError:
            vals = None
        if vals is not None and np.all(np.isfinite(vals)) and np.all(np.diff(vals) > 0):
            return vals - vals[0]
    return np.arange(n) / float(fps)


def index_value(time_s: float) -> str:
    """The index value string of a frame time, as Slicer's DICOM-cine loader writes it."""
    return f"{time_s:.3f}"


def apply_problems(has_frames: bool, has_audio: bool, model_path: Optional[Path],
                   n_mentions: int) -> list[str]:
    """Why labelling cannot start yet (empty when it can); shown as the Apply tooltip."""
    problems = []
    if not has_frames:
        problems.append("load a procedure or pick a volume sequence")
    if not has_audio:
        problems.append("give the audio file of the recording")
    if model_path is None:
        problems.append("choose a model checkpoint (.pt) or train one")
    elif not model_path.is_file():
        problems.append(f"model checkpoint not found: {model_path}")
    if n_mentions == 0:
        problems.append("add mentions (from a file, a transcript or automatic detection)")
    return problems


# --------------------------------------------------------------------------- geometry
def cine_ijk_to_ras(spacing_mm: Optional[Sequence[float]] = None) -> np.ndarray:
    """IJKToRAS of a 2-D frame in Slicer's DICOM-cine convention: ``diag(-sx, -sy, 1)`` with
    the origin at 0, so frames appear upright in the axial view (ijkToLPS ``diag(sx, sy, 1)``,
    the same geometry :mod:`EUSVoiceLabelLib.slicer.files` writes)."""
    sx, sy = (float(v) for v in (spacing_mm or (1.0, 1.0)))
    return np.diag([-sx, -sy, 1.0, 1.0])


def crop_ijk_to_ras(frame_ijk_to_ras: np.ndarray, crop: Sequence[int]) -> np.ndarray:
    """IJKToRAS of an image of the cropped region ``[x, y, w, h]`` of a frame, so that it lies
    exactly on that region of the frame (pixel (0, 0) of the crop = pixel (x, y) of the
    frame)."""
    m = np.asarray(frame_ijk_to_ras, dtype=np.float64).copy()
    x, y = float(crop[0]), float(crop[1])
    m[:3, 3] = m[:3, 3] + m[:3, 0] * x + m[:3, 1] * y
    return m


def sequence_crop(crop: Optional[Sequence[int]], width: int, height: int
                  ) -> Optional[tuple[int, int, int, int]]:
    """The crop to apply to a sequence's own ``width`` x ``height`` frames.

    A sequence made by "Load procedure" already holds the cropped frames: they are the crop's
    size, and cropping them again (or shifting overlays by the crop's offset) would move
    everything by (x, y).  A sequence of whole frames (e.g. a DICOM cine loop with a crop set
    on it) is cropped.  None when no crop is set.
    """
    if crop is None:
        return None
    x, y, w, h = (int(v) for v in crop)
    if (w, h) == (int(width), int(height)):
        return 0, 0, w, h
    return x, y, w, h


def parse_crop(text: Optional[str]) -> Optional[list[int]]:
    """The crop stored on a node attribute ("x y w h"), or None when unset."""
    return [int(v) for v in text.split()] if text else None


def format_crop(crop: Sequence[int]) -> str:
    """A crop as stored on a node attribute ("x y w h")."""
    return " ".join(str(int(v)) for v in crop)


# --------------------------------------------------------------------------- outputs in sync
@dataclass(frozen=True)
class TimelineItem:
    """An item of a per-window output sequence: at master item ``item`` show window
    ``window`` (None = show nothing)."""

    item: int
    window: Optional[int]


def overlay_timeline(spans: Sequence[tuple[float, float]], master_times: Sequence[float]
                     ) -> list[TimelineItem]:
    """Where per-window output sequences need items, in master-sequence item numbers.

    A browsed sequence that lacks an item at the current time shows its closest *previous*
    item (Slicer's default for non-recorded sequences), and before its first item its first
    item.  So a sparse sequence with an item where each window starts and a blank item where it
    ends shows every window over exactly its frames, and nothing elsewhere, without one copy
    per frame.  Later windows win where windows overlap.

    Args:
        spans: (start_s, end_s) of each window on the video clock; window = position.
        master_times: times (s) of the master sequence's items, increasing.

    Returns:
        Items sorted by ``item``, starting with item 0, without repeats of the same content.
    """
    times = np.asarray(master_times, dtype=np.float64)
    n = len(times)
    if n == 0:
        return []
    tol = 1e-6
    owner: list[Optional[int]] = [None] * n
    for w, (t0, t1) in enumerate(spans):
        first = int(np.searchsorted(times, t0 - tol, side="left"))
        stop = int(np.searchsorted(times, t1 - tol, side="left"))
        stop = max(stop, first + 1)  # a window shorter than a frame still gets its frame
        for i in range(first, min(stop, n)):
            owner[i] = w
    out: list[TimelineItem] = [TimelineItem(0, owner[0])]
    for i in range(1, n):
        if owner[i] != owner[i - 1]:
            out.append(TimelineItem(i, owner[i]))
    return out


def master_item_at(master_times: Sequence[float], time_s: float) -> int:
    """The master item shown at ``time_s``: the first item at or after it (clamped)."""
    times = np.asarray(master_times, dtype=np.float64)
    if len(times) == 0:
        return -1
    return int(min(np.searchsorted(times, time_s - 1e-6, side="left"), len(times) - 1))


# --------------------------------------------------------------------------- training
def train_arguments(cohort: os.PathLike | str, out: os.PathLike | str,
                    epochs: Optional[int] = None, image_size: Optional[str] = None,
                    device: str = "auto", variant: str = "proposed",
                    batch_size: Optional[int] = None, seed: int = 0) -> list[str]:
    """Arguments of ``PythonSlicer`` (or ``python``) for background training:
    ``-m EUSVoiceLabelLib train COHORT --out MODEL ... --progress json`` (progress as JSON
    lines, see :mod:`..core.progress`).

    Raises:
        ProcedureError: the cohort folder does not exist.
        ConfigError: a bad device, epoch count, batch size or image size, or ``out`` is a folder.
    """
    cohort, out = Path(cohort), Path(out)
    if not cohort.is_dir():
        raise ProcedureError("cohort folder not found", cohort)
    if out.is_dir():
        raise ConfigError("the model must be a file, not a folder", out, "e.g. model.pt")
    if device not in DEVICES:
        raise ConfigError(f"device must be one of {', '.join(DEVICES)}, not {device!r}")
    args = ["-m", "EUSVoiceLabelLib", "train", str(cohort), "--out", str(out),
            "--variant", variant, "--device", device, "--seed", str(int(seed)),
            "--progress", "json"]
    if epochs is not None:
        if int(epochs) < 1:
            raise ConfigError(f"epochs must be at least 1, not {epochs}")
        args += ["--epochs", str(int(epochs))]
    if batch_size is not None:
        if int(batch_size) < 1:
            raise ConfigError(f"batch size must be at least 1, not {batch_size}")
        args += ["--batch-size", str(int(batch_size))]
    if image_size:
        h, w = parse_image_size(image_size)
        args += ["--image-size", f"{h}x{w}"]
    return args


def split_log_lines(buffer: str) -> tuple[list[str], str]:
    """Complete lines of a process's output (``\\r`` and ``\\n`` both end a line) and the
    unfinished rest; progress lines among them are read with
    :func:`..core.progress.parse_progress_line`."""
    parts = re.split(r"\r\n|\r|\n", buffer)
    return [p for p in parts[:-1] if p.strip()], parts[-1]


# --------------------------------------------------------------------------- dependencies
def read_requirements(path: os.PathLike | str) -> list[str]:
    """Requirement lines of a ``requirements.txt`` (comments and blank lines dropped)."""
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            out.append(line)
    return out


def missing_requirements(requirements: Sequence[str]) -> list[str]:
    """The requirements not satisfied by the installed distributions (name and, when the
    ``packaging`` library is available, version range).  Used on Slicer 5.10, which lacks
    ``slicer.packaging.pip_ensure``."""
    missing = []
    for line in requirements:
        name, spec = re.split(r"[<>=!~;\[ ]", line, maxsplit=1)[0], None
        if Requirement is not None:
            req = Requirement(line)
            if req.marker is not None and not req.marker.evaluate():
                continue  # not for this platform
            name, spec = req.name, req.specifier
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            missing.append(line)
            continue
        if spec is not None and version and not spec.contains(version, prereleases=True):
            missing.append(line)
    return missing


# --------------------------------------------------------------------------- training data
def write_training_procedure(proc: Procedure, mentions: Sequence[Mention],
                             cohort: os.PathLike | str, name: Optional[str] = None,
                             frame_chunk: int = 250) -> Path:
    """Add a (reviewed) procedure to a cohort folder so training can use it.

    Writes ``COHORT/<name>/``: the recording (the video file, frames folder or ``.seq.nrrd``
    copied; frames from elsewhere, e.g. a Slicer sequence, streamed to ``frames.seq.nrrd`` on
    the 25 fps grid, already cropped), the audio file, ``mentions.csv`` with ``mentions`` (the
    reviewed labels) and ``procedure.json`` (offset and crop).  An existing folder of that name
    is replaced only once the new one is complete.

    Raises:
        ProcedureError: no mentions, or no audio to train the voice branch on.
        OutputError: the folder cannot be written.
    """
    if not mentions:
        raise ProcedureError("no labelled windows to add", proc.path,
                             "label the procedure and review at least one window")
    if proc.audio_path is None:
        raise ProcedureError("the procedure has no audio", proc.path,
                             "give the recording's audio file")
    cohort = Path(cohort)
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", name or proc.name).strip("._") or "procedure"
    dest = cohort / name
    with output_session("3D Slicer EUSVoiceLabel add to cohort"):
        # never over another procedure; locked while the copy is made
        claim_output(dest, COHORT_PROCEDURE, procedure_inputs(proc), create=False)
        return _write_training_procedure(proc, mentions, cohort, name, dest, frame_chunk)


def _write_training_procedure(proc: Procedure, mentions: Sequence[Mention], cohort: Path,
                              name: str, dest: Path, frame_chunk: int) -> Path:
    """The copy of :func:`write_training_procedure`, once ``dest`` is claimed."""
    try:
        cohort.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=cohort))
    except OSError as exc:
        raise OutputError(f"cannot write ({exc.strerror})", cohort) from None
    try:
        settings = _copy_recording(proc, tmp, frame_chunk)
        settings["audio_offset_s"] = round(_copy_audio(proc, tmp), 6)
        if proc.pixel_spacing_mm is not None:
            settings["pixel_spacing_mm"] = list(proc.pixel_spacing_mm)
        (tmp / "procedure.json").write_text(json.dumps(settings, indent=2) + "\n",
                                            encoding="utf-8")
        write_mentions_csv(tmp / "mentions.csv", mentions)
        mark_output(tmp, COHORT_PROCEDURE)
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OutputError(f"cannot write ({exc.strerror})", dest) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def _copy_recording(proc: Procedure, folder: Path, frame_chunk: int) -> dict:
    """Copy the frames of ``proc`` into ``folder`` (the video file, frames folder or
    ``.seq.nrrd``; frames from elsewhere streamed to ``frames.seq.nrrd``, already cropped);
    returns the ``procedure.json`` settings that read them back (crop, fps)."""
    src = proc.source
    if isinstance(src, VideoFileSource):
        shutil.copy2(src.path, folder / ("video" + src.path.suffix.lower()))
        return {"crop": list(proc.crop)}
    if isinstance(src, CallbackFrameSource):
        w, h = proc.frame_size
        writer = SequenceStreamWriter(folder / "frames.seq.nrrd", w, h,
                                      list(proc.frame_times), "uint8", proc.pixel_spacing_mm)
        try:
            for start in range(0, proc.n_frames, frame_chunk):
                for frame in proc.frames(start, start + frame_chunk):
                    writer.add(frame)
            writer.close()
        except BaseException:
            writer.abort()
            raise
        return {"crop": [0, 0, w, h]}
    if src.path.is_dir():
        shutil.copytree(src.path, folder / "frames")
        return {"crop": list(proc.crop), "fps": src.native_fps}
    shutil.copy2(src.path, folder / "frames.seq.nrrd")
    return {"crop": list(proc.crop)}


def _copy_audio(proc: Procedure, folder: Path) -> float:
    """Copy the audio file of ``proc`` into ``folder`` (not when it is the video's own track);
    returns the ``audio_offset_s`` that reads it back."""
    src = proc.source
    if proc.audio_path == getattr(src, "path", None) and isinstance(src, VideoFileSource):
        # the video's own track: load_procedure adds the track's offset back
        return float(proc.audio_offset_s - src.audio_track_offset_s)
    shutil.copy2(proc.audio_path, folder / ("audio" + proc.audio_path.suffix.lower()))
    return float(proc.audio_offset_s)


def write_tiny_procedure(folder: os.PathLike | str, seconds: float = 8.0,
                         size: tuple[int, int] = (96, 64),
                         labels: Sequence[str] = ("pancreas", "bile_duct", "pancreas",
                                                  "bile_duct"),
                         seed: int = 0,
                         crop: Optional[Sequence[int]] = None) -> Path:
    """A small self-contained procedure folder (``frames.seq.nrrd``, ``audio.wav``,
    ``mentions.csv``, and ``procedure.json`` with ``crop``) for the Slicer self-test and
    tutorials; no speech engine or video codec needed.

    Each mention gets its own 1 s window: the frames show a bright disc whose position depends
    on the label (inside ``crop`` = [x, y, w, h], default the whole frame), and the audio plays
    a tone whose pitch depends on the label, so a model trained for a few steps can tell them
    apart.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    x0, y0, w, h = (int(v) for v in (crop or (0, 0, *size)))
    n = int(round(seconds * FPS))
    frames = rng.integers(0, 40, size=(n, size[1], size[0]), dtype=np.uint8)
    rate = 16000
    audio = (0.003 * rng.standard_normal(int(seconds * rate))).astype(np.float32)
    yy, xx = np.mgrid[0:size[1], 0:size[0]] - np.array([y0, x0])[:, None, None]
    names = sorted(set(labels))
    step = (seconds - 1.0) / max(1, len(labels))
    rows = ["time_s,label,end_s,text"]
    for k, label in enumerate(labels):
        t0 = 0.5 + k * step
        cls = names.index(label)
        cx, cy = w * (0.3 + 0.4 * cls), h * 0.5
        disc = ((xx - cx) ** 2 + (yy - cy) ** 2) < (min(w, h) / 5) ** 2
        f0 = int(round(t0 * FPS))
        frames[f0:f0 + int(FPS), disc] = 220
        t = np.arange(int(0.6 * rate)) / rate
        a0 = int(t0 * rate)
        tone = 0.3 * np.sin(2 * np.pi * (300 + 500 * cls) * t).astype(np.float32)
        audio[a0:a0 + len(tone)] += tone[:len(audio) - a0]
        rows.append(f"{t0:.3f},{label},{t0 + 0.6:.3f},{label.replace('_', ' ')}")
    write_frame_sequence(folder / "frames.seq.nrrd", frames, np.arange(n) / FPS)
    write_wav(folder / "audio.wav", audio, rate)
    (folder / "mentions.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    if crop is not None:
        (folder / "procedure.json").write_text(json.dumps({"crop": [x0, y0, w, h]}) + "\n",
                                               encoding="utf-8")
    return folder
