"""Procedures and cohorts: the folder layout of docs/contracts.md loaded into one object.

A procedure folder holds the EUS recording (``video.*``, ``frames/`` or ``frames.seq.nrrd``),
optionally a separate audio file (``audio.*``), ``mentions.csv`` and ``procedure.json``
(``{"audio_offset_s": 0.0, "crop": [x, y, w, h], "fps": 25}``; audio time = video time +
offset).  :func:`load_procedure` opens it without decoding the video; frames are read by time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..core.errors import MediaError, MentionsError, ProcedureError
from ..core.outputlock import is_output_folder
from ..core.paper import CROP_SIZE, FPS, WINDOW_FRAMES
from .audio import SAMPLE_RATE, resample
from .media import (AUDIO_SUFFIXES, VIDEO_SUFFIXES, FrameSource, VideoFileSource, load_audio,
                    open_frames)
from .mentions import Mention, read_mentions
from .vocabulary import LabelSet, load_labelset

log = logging.getLogger(__name__)


def onset_frame(t: float, fps: float = FPS) -> int:
    """Index of the frame shown at time ``t`` on the ``fps`` grid (nearest; ties go up)."""
    return int(math.floor(t * fps + 0.5))


def window_frame_indices(time_s: float, frames: int = WINDOW_FRAMES, fps: float = FPS
                         ) -> np.ndarray:
    """The frame indices (int64, on the ``fps`` grid) of the window whose onset is ``time_s``:
    the onset frame and the ``frames - 1`` after it."""
    return onset_frame(time_s, fps) + np.arange(frames, dtype=np.int64)


def default_crop(width: int, height: int) -> tuple[int, int, int, int]:
    """The central 690x350 region when frames are larger, else the whole frame (per axis)."""
    w = min(width, CROP_SIZE[0])
    h = min(height, CROP_SIZE[1])
    return ((width - w) // 2, (height - h) // 2, w, h)


def _find_one(folder: Path, stem: str, suffixes: Sequence[str]) -> Optional[Path]:
    hits = sorted(p for p in folder.iterdir()
                  if p.is_file() and p.stem.lower() == stem and p.suffix.lower() in suffixes)
    return hits[0] if hits else None


def find_recording(folder: Path) -> Optional[Path]:
    """The frames of a procedure folder: video.*, frames/ or frames.seq.nrrd (None if none)."""
    video = _find_one(folder, "video", VIDEO_SUFFIXES)
    if video:
        return video
    if (folder / "frames").is_dir():
        return folder / "frames"
    if (folder / "frames.seq.nrrd").is_file():
        return folder / "frames.seq.nrrd"
    return None


def is_procedure_folder(folder: os.PathLike | str) -> bool:
    folder = Path(folder)
    try:
        return folder.is_dir() and find_recording(folder) is not None
    except OSError:
        return False


def find_patients(cohort: os.PathLike | str) -> list[Path]:
    """Procedure folders of a cohort, sorted by name.

    Raises:
        ProcedureError: the folder does not exist, is itself a single procedure, or holds no
            procedure folders.
    """
    cohort = Path(cohort)
    if not cohort.is_dir():
        raise ProcedureError("cohort folder not found", cohort)
    if is_procedure_folder(cohort):
        raise ProcedureError("is a single procedure, not a cohort", cohort,
                             "give the folder that contains one sub-folder per patient")
    patients = _procedure_folders(cohort)
    if not patients:
        raise ProcedureError("contains no procedure folders", cohort,
                             "each patient needs a folder with video.* (or frames/ or "
                             "frames.seq.nrrd) and audio")
    _check_distinct(patients)
    return patients


def _procedure_folders(folder: Path) -> list[Path]:
    """The procedure folders directly inside ``folder``, sorted by name.  Output folders of
    ours (a label output holds frames.seq.nrrd) and hidden folders are not procedures."""
    return sorted((p for p in folder.iterdir()
                   if not p.name.startswith(".") and is_procedure_folder(p)
                   and not is_output_folder(p)), key=lambda p: p.name)


def _check_distinct(patients: Sequence[Path]) -> None:
    """A patient may appear once: a second name for the same folder (a symbolic link) would
    put the held-out patient's own windows into its leave-one-patient-out training set.

    Raises:
        ProcedureError: two patient folders are the same folder (resolved real paths).
    Copies (same recording, audio and mentions under two names) are logged as a warning.
    """
    seen: dict[Path, Path] = {}
    content: dict[tuple, Path] = {}
    for p in patients:
        real = p.resolve()
        if real in seen:
            raise ProcedureError(f"is the same folder as {seen[real].name} ({real})", p,
                                 "a patient may appear once in a cohort: remove the link")
        seen[real] = p
        key = _fingerprint(p)
        if key is not None and key in content:
            log.warning("%s: holds the same recording, audio and mentions as %s (a copy?); "
                        "leave-one-patient-out results are optimistic while both are in the "
                        "cohort", p, content[key].name)
        elif key is not None:
            content[key] = p


def _fingerprint(folder: Path, block: int = 1 << 20) -> Optional[tuple]:
    """Cheap content identity of a procedure: size and first/last MiB of its recording, audio
    and mentions files (None when it cannot be read)."""
    try:
        files = [find_recording(folder), _find_one(folder, "audio", AUDIO_SUFFIXES),
                 folder / "mentions.csv"]
        key = []
        for f in files:
            if f is None or not f.is_file():
                key.append(None if f is None or not f.is_dir() else
                           tuple(sorted((q.name, q.stat().st_size) for q in f.iterdir())))
                continue
            size = f.stat().st_size
            with open(f, "rb") as fh:
                head = fh.read(block)
                fh.seek(max(0, size - block))
                tail = fh.read(block)
            key.append((size, hashlib.sha256(head + tail).hexdigest()))
        return tuple(key)
    except OSError:
        return None


@dataclass
class ProcedureSettings:
    """Contents of ``procedure.json``."""

    audio_offset_s: float = 0.0
    crop: Optional[tuple[int, int, int, int]] = None
    fps: Optional[float] = None  # frame rate of a frames/ folder
    pixel_spacing_mm: Optional[tuple[float, float]] = None  # (column, row) spacing if known

    @classmethod
    def load(cls, path: Path) -> "ProcedureSettings":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise ProcedureError(f"cannot read ({exc.__class__.__name__})", path) from None
        except json.JSONDecodeError as exc:
            raise ProcedureError(f"not valid JSON (line {exc.lineno}: {exc.msg})", path) from None
        except RecursionError:  # a bomb of nested brackets (found by fuzzing)
            raise ProcedureError("not valid settings JSON (nested too deeply)", path) from None
        if not isinstance(data, dict):
            raise ProcedureError("must hold a JSON object", path,
                                 'e.g. {"audio_offset_s": 0.0, "crop": [15, 65, 690, 350]}')
        out = cls()
        if "audio_offset_s" in data:
            off = data["audio_offset_s"]
            if isinstance(off, bool) or not isinstance(off, (int, float)) or \
                    not math.isfinite(off) or abs(off) > 24 * 3600:
                raise ProcedureError(f"audio_offset_s {off!r} is not a plausible number of "
                                     "seconds", path)
            out.audio_offset_s = float(off)
        if data.get("crop") is not None:
            crop = data["crop"]
            if not (isinstance(crop, list) and len(crop) == 4 and
                    all(isinstance(v, int) and not isinstance(v, bool) for v in crop)):
                raise ProcedureError(f"crop {crop!r} must be [x, y, width, height] in whole "
                                     "pixels", path)
            out.crop = tuple(crop)  # type: ignore[assignment]
        if data.get("fps") is not None:
            fps = data["fps"]
            if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not 0 < fps <= 1000:
                raise ProcedureError(f"fps {fps!r} must be a positive frame rate", path)
            out.fps = float(fps)
        if data.get("pixel_spacing_mm") is not None:
            sp = data["pixel_spacing_mm"]
            if not (isinstance(sp, list) and len(sp) == 2 and
                    all(isinstance(v, (int, float)) and v > 0 for v in sp)):
                raise ProcedureError("pixel_spacing_mm must be [column_mm, row_mm]", path)
            out.pixel_spacing_mm = (float(sp[0]), float(sp[1]))
        return out


@dataclass
class Procedure:
    """One recorded procedure, opened lazily.

    Frames are grey uint8, cropped, on a 25 fps grid: frame ``i`` is shown at ``i / 25`` s on
    the video clock.  Audio is mono float32 at 48 kHz on the audio clock
    (audio time = video time + ``audio_offset_s``).
    """

    path: Path
    source: FrameSource
    crop: tuple[int, int, int, int]
    audio_offset_s: float
    mentions: list[Mention]
    labelset: LabelSet
    audio_path: Optional[Path] = None
    mentions_path: Optional[Path] = None
    pixel_spacing_mm: Optional[tuple[float, float]] = None
    fps: float = FPS
    sample_rate: int = SAMPLE_RATE
    _audio: Optional[np.ndarray] = field(default=None, repr=False)
    _native: Optional[np.ndarray] = field(default=None, repr=False)
    _audio_native_rate: Optional[int] = field(default=None, repr=False)

    # ------------------------------------------------------------------ frames
    @property
    def name(self) -> str:
        return self.path.name

    @property
    def duration_s(self) -> float:
        return self.source.duration_s

    @property
    def n_frames(self) -> int:
        """Frames on the 25 fps grid."""
        return max(1, int(math.floor(self.duration_s * self.fps + 1e-6)))

    @property
    def frame_times(self) -> np.ndarray:
        return np.arange(self.n_frames) / self.fps

    @property
    def frame_size(self) -> tuple[int, int]:
        """(width, height) of the cropped frames."""
        return self.crop[2], self.crop[3]

    def frames_at(self, times: Sequence[float]) -> np.ndarray:
        """Cropped grey frames shown at ``times`` (s): uint8 (len(times), H, W)."""
        x, y, w, h = self.crop
        full = self.source.read(times)
        return np.ascontiguousarray(full[:, y:y + h, x:x + w])

    def frames_window(self, t0: float, n: int = WINDOW_FRAMES) -> np.ndarray:
        """The ``n`` frames of the 25 fps grid from the frame at ``t0`` on (edge frames repeat
        past the end of the recording)."""
        first = onset_frame(t0, self.fps)
        return self.frames_at((first + np.arange(n)) / self.fps)

    def frames(self, start: int = 0, stop: Optional[int] = None) -> np.ndarray:
        """Frames ``start:stop`` of the 25 fps grid (decoded on demand; keep ranges small)."""
        stop = self.n_frames if stop is None else min(stop, self.n_frames)
        return self.frames_at(np.arange(start, stop) / self.fps)

    # ------------------------------------------------------------------ audio
    @property
    def has_audio(self) -> bool:
        return self.audio_path is not None

    def native_audio(self) -> tuple[np.ndarray, int]:
        """(samples, rate): the recording at its file's own rate, as the detector decodes it
        (decoded once and kept: 4x smaller than 48 kHz for 16 kHz recordings, so long
        procedures stay light).

        Raises:
            MediaError: the procedure has no audio.
        """
        if self._native is None:
            if self.audio_path is None:
                raise MediaError("no audio: no audio.* file and no audio track in the video",
                                 self.path, "add the recording's audio as audio.wav")
            samples, rate = load_audio(self.audio_path)
            self._native = samples
            self._audio_native_rate = rate
        return self._native, int(self._audio_native_rate)  # type: ignore[arg-type]

    @property
    def audio(self) -> np.ndarray:
        """The whole recording as mono float32 at 48 kHz (resampled on first use).

        Raises:
            MediaError: the procedure has no audio.
        """
        if self._audio is None:
            samples, rate = self.native_audio()
            self._audio = resample(samples, rate, self.sample_rate)
        return self._audio

    @property
    def audio_duration_s(self) -> float:
        samples, rate = self.native_audio()
        return len(samples) / rate

    def audio_segment(self, t0: float, t1: float) -> np.ndarray:
        """Audio between video times ``t0`` and ``t1`` at 48 kHz (zeros where there is no
        audio).  Only the segment is resampled, with a margin that hides filter edges."""
        n_out = max(0, int(round((t1 - t0) * self.sample_rate)))
        out = np.zeros(n_out, dtype=np.float32)
        if n_out == 0:
            return out
        if self._audio is not None:
            src, rate = self._audio, self.sample_rate
        else:
            src, rate = self.native_audio()
        a0 = t0 + self.audio_offset_s
        margin = 0.05 if rate != self.sample_rate else 0.0
        i0 = int(np.floor((a0 - margin) * rate))
        i1 = int(np.ceil((t1 + self.audio_offset_s + margin) * rate))
        seg = np.zeros(max(0, i1 - i0), dtype=np.float32)
        lo, hi = max(i0, 0), min(i1, len(src))
        if hi <= lo:
            return out
        seg[lo - i0:hi - i0] = src[lo:hi]
        seg = resample(seg, rate, self.sample_rate)
        start = int(round((a0 - i0 / rate) * self.sample_rate))
        piece = seg[start:start + n_out]
        out[:len(piece)] = piece
        # Zero what lies outside the recording (the margin may have smeared into it).
        before = int(round(-a0 * self.sample_rate))
        if before > 0:
            out[:before] = 0
        after = int(round((len(src) / rate - a0) * self.sample_rate))
        if after < n_out:
            out[max(after, 0):] = 0
        return out

    def voice_window(self, mention: Mention, length_s: float = 1.0) -> np.ndarray:
        """The voice input of a mention: from onset to end (1 s when the end is unknown),
        cropped or zero-padded to ``length_s``.

        Raises:
            MentionsError: the mention starts outside the audio recording.
        """
        audio_t = mention.time_s + self.audio_offset_s
        if audio_t < 0 or audio_t >= self.audio_duration_s:
            raise MentionsError(
                f"mention at {mention.time_s:.2f} s ({mention.label}) lies outside the audio "
                f"({self.audio_duration_s:.2f} s long, offset {self.audio_offset_s:+.2f} s)",
                self.mentions_path or self.path,
                "check the mention times and audio_offset_s in procedure.json")
        end = mention.end_s if mention.end_s is not None else mention.time_s + length_s
        end = min(end, mention.time_s + length_s)
        if end + self.audio_offset_s > self.audio_duration_s:
            log.warning("%s: audio ends during the mention at %.2f s; padding with silence",
                        self.name, mention.time_s)
        voice = self.audio_segment(mention.time_s, end)
        out = np.zeros(int(round(length_s * self.sample_rate)), dtype=np.float32)
        out[:min(len(voice), len(out))] = voice[:len(out)]
        return out

    def check_mentions(self, mentions: Optional[Sequence[Mention]] = None) -> None:
        """Raise MentionsError for mentions outside the recording."""
        for m in (self.mentions if mentions is None else mentions):
            if m.time_s >= self.duration_s:
                raise MentionsError(
                    f"mention at {m.time_s:.2f} s ({m.label}) is after the end of the video "
                    f"({self.duration_s:.2f} s)", self.mentions_path or self.path,
                    "check that the mentions belong to this recording")

    def validate(self) -> None:
        """Check that every mention has frames and audio (decodes the audio).

        Raises:
            MentionsError: a mention outside the video or the audio.
            MediaError: mentions exist but there is no usable audio.
        """
        self.check_mentions()
        if self.mentions:
            for m in self.mentions:
                self.voice_window(m)

    # ------------------------------------------------------------------ summary
    def summary(self) -> dict:
        """What was loaded, for ``eusvoicelabel info`` and logs."""
        out = {
            "procedure": str(self.path),
            "frames from": str(self.source.path),
            "duration_s": round(self.duration_s, 3),
            "native_fps": round(self.source.native_fps, 3),
            "fps": self.fps,
            "frame_count": self.n_frames,
            "frame_size": f"{self.source.width}x{self.source.height}",
            "crop": list(self.crop),
            "cropped_size": f"{self.crop[2]}x{self.crop[3]}",
            "audio": str(self.audio_path) if self.audio_path else "none",
        }
        if self.audio_path is not None:
            out["audio_native_rate"] = self.native_audio()[1]
            out["audio_rate"] = self.sample_rate
            out["audio_duration_s"] = round(self.audio_duration_s, 3)
        out["audio_offset_s"] = self.audio_offset_s
        counts = {lid: 0 for lid in self.labelset.ids}
        for m in self.mentions:
            counts[m.label] = counts.get(m.label, 0) + 1
        out["mentions"] = len(self.mentions)
        out["mentions_per_label"] = counts
        return out


def load_procedure(path: os.PathLike | str, labelset: Optional[LabelSet] = None,
                   mentions: Optional[os.PathLike | str | Sequence[Mention]] = None,
                   crop: Optional[Sequence[int]] = None) -> Procedure:
    """Open a procedure folder (docs/contracts.md layout) without decoding its video.

    Args:
        path: the procedure folder.
        labelset: vocabulary for mentions (default: ``labels.json`` of the folder or its parent,
            else the paper's five landmarks).
        mentions: a mentions CSV / SRT / WebVTT file, or Mention objects, instead of the
            folder's ``mentions.csv``.
        crop: [x, y, w, h] overriding ``procedure.json`` and the default central 690x350 crop.

    Returns:
        A :class:`Procedure`.

    Raises:
        ProcedureError, MediaError, MentionsError: with the file at fault and what to do.
    """
    path = Path(path)
    if not path.exists():
        raise ProcedureError("procedure folder not found", path)
    if not path.is_dir():
        raise ProcedureError("is not a folder", path,
                             "give the procedure folder that holds video.* and audio.*")
    labelset = labelset or load_labelset(None, path)
    recording = find_recording(path)
    if recording is None:
        inside = _procedure_folders(path)
        if inside:  # a cohort given where one procedure is expected
            raise ProcedureError(f"is a cohort of {len(inside)} procedure folders, not one "
                                 "procedure", path,
                                 f"give one of them, e.g. {inside[0]}")
        raise ProcedureError("not a procedure folder: no video.*, frames/ or frames.seq.nrrd",
                             path, "see the cohort layout in the README")
    settings = ProcedureSettings()
    settings_path = path / "procedure.json"
    if settings_path.is_file():
        settings = ProcedureSettings.load(settings_path)
    source = open_frames(recording, fps=settings.fps or FPS)

    if crop is not None:
        crop_t = tuple(int(v) for v in crop)
        where = path
    elif settings.crop is not None:
        crop_t, where = settings.crop, settings_path
    else:
        crop_t, where = default_crop(source.width, source.height), path
    x, y, w, h = crop_t
    if w <= 0 or h <= 0 or x < 0 or y < 0 or x + w > source.width or y + h > source.height:
        raise ProcedureError(f"crop {list(crop_t)} lies outside the {source.width}x"
                             f"{source.height} frames", where,
                             "give [x, y, width, height] inside the frame")

    audio_path = _find_one(path, "audio", AUDIO_SUFFIXES)
    offset = settings.audio_offset_s
    if audio_path is None and isinstance(source, VideoFileSource) and source.has_audio:
        audio_path = source.path
        offset += source.audio_track_offset_s

    mentions_path: Optional[Path] = None
    if mentions is None:
        if (path / "mentions.csv").is_file():
            mentions_path = path / "mentions.csv"
    elif isinstance(mentions, (str, os.PathLike)):
        mentions_path = Path(mentions)
    if mentions_path is not None:
        mention_list = read_mentions(mentions_path, labelset, offset_s=offset)
    elif mentions is not None:
        mention_list = list(mentions)  # type: ignore[arg-type]
    else:
        mention_list = []

    proc = Procedure(path=path, source=source, crop=crop_t, audio_offset_s=offset,  # type: ignore[arg-type]
                     mentions=mention_list, labelset=labelset, audio_path=audio_path,
                     mentions_path=mentions_path, pixel_spacing_mm=settings.pixel_spacing_mm)
    proc.check_mentions()
    return proc


@dataclass
class Cohort:
    """A cohort folder: one procedure folder per patient and an optional ``labels.json``."""

    path: Path
    labelset: LabelSet
    patients: list[Path]

    @property
    def patient_ids(self) -> list[str]:
        return [p.name for p in self.patients]

    def procedure(self, patient: str) -> Procedure:
        for p in self.patients:
            if p.name == patient:
                return load_procedure(p, labelset=self.labelset)
        raise ProcedureError(f"no patient {patient!r} in the cohort", self.path)

    def procedures(self):
        """Open each patient's procedure in turn."""
        for p in self.patients:
            yield load_procedure(p, labelset=self.labelset)


def load_cohort(path: os.PathLike | str, labelset: Optional[LabelSet] = None) -> Cohort:
    """Open a cohort folder (see :func:`find_patients`)."""
    path = Path(path)
    patients = find_patients(path)
    return Cohort(path, labelset or load_labelset(None, path), patients)
