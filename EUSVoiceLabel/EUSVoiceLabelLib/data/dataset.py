"""Sample windows of a cohort, cached on disk so training never decodes a video twice.

A sample is one spoken mention: the voice is the audio from the onset to the end of the spoken
name (1 s when the end is unknown), cropped or zero-padded to 1 s and turned into the paper's
1024 x 66 spectrogram; the image is the 25 frames from the onset frame on, cropped, grey and
resized to the network's input size.  For speech augmentation during training
(:mod:`..train.augment`) a window also keeps the power spectrogram (dB, float16) of a stretch
of audio around its onset, ``CONTEXT_LEAD_FRAMES`` spectrogram frames before it.

Each patient's windows are stored in ``<cache>/<patient>-<key>.npz`` where the key hashes the
content of every input file (video or frames, audio, mentions, procedure.json, labels) and
every preprocessing setting, so a changed input or setting is never served stale data.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..core.errors import ProcedureError
from ..core.fileio import atomic_path, file_sha256
from ..core.outputlock import is_leftover
from ..core.paper import (FRAME_LENGTH, FRAME_STEP, IMAGE_SIZE, N_BINS, N_FRAMES,
                          SAMPLE_RATE, SPECTROGRAM_SHAPE, WINDOW_FRAMES)
from ..core.progress import ProgressLike, as_progress
from .audio import SpectrogramSettings, power_db_context, spectrogram_batch
from .mentions import Mention
from .outputs import OutputKind, claim_output, input_paths
from .procedure import Procedure, find_patients, load_procedure
from .vocabulary import LabelSet, labels_file, load_labelset

log = logging.getLogger(__name__)

_ENTRY_RE = re.compile(r"^.+-[0-9a-f]{24}\.npz$")


def _earlier_cache(folder: Path) -> bool:
    """A window cache written before the output marker existed: only cache entries."""
    entries = [p for p in folder.iterdir() if not is_leftover(p.name)]
    return bool(entries) and all(p.is_file() and _ENTRY_RE.match(p.name) for p in entries)


#: The window cache (``--cache``; default under :func:`default_cache_root`).
WINDOW_CACHE = OutputKind("window-cache", "an eusvoicelabel window cache", folder=True,
                          signature=_earlier_cache, shared=True)

CACHE_VERSION = 2

#: Spectrogram frames of a window's speech context before the onset (0.5 s).
CONTEXT_LEAD_FRAMES = 33
#: Spectrogram frames of a window's speech context: the lead, the window's 66, and room for
#: the speed and shift of augmentation.
CONTEXT_FRAMES = CONTEXT_LEAD_FRAMES + N_FRAMES + 16
#: Audio samples (48 kHz) a speech context is computed from.
CONTEXT_SAMPLES = (CONTEXT_FRAMES - 1) * FRAME_STEP + FRAME_LENGTH


def resize_frames(frames: np.ndarray, size: Optional[tuple[int, int]]) -> np.ndarray:
    """Resize uint8 frames (N, H, W) to ``size`` = (H, W) with anti-aliased bilinear filtering."""
    if size is None or tuple(frames.shape[-2:]) == tuple(size):
        return frames

    x = torch.from_numpy(np.ascontiguousarray(frames)).float()[:, None]
    y = F.interpolate(x, size=tuple(size), mode="bilinear", antialias=True,
                      align_corners=False)
    return y[:, 0].round().clamp(0, 255).to(torch.uint8).numpy()


@dataclass
class WindowSettings:
    """Preprocessing that defines a sample window (part of every cache key and checkpoint)."""

    image_size: Optional[tuple[int, int]] = IMAGE_SIZE
    frames: int = WINDOW_FRAMES
    spectrogram: SpectrogramSettings = field(default_factory=SpectrogramSettings)

    def to_json(self) -> dict:
        return {"image_size": None if self.image_size is None else list(self.image_size),
                "frames": self.frames, "spectrogram": self.spectrogram.to_json()}

    @classmethod
    def from_json(cls, data: dict) -> "WindowSettings":
        size = data.get("image_size")
        return cls(tuple(size) if size else None, int(data.get("frames", WINDOW_FRAMES)),
                   SpectrogramSettings.from_json(data.get("spectrogram", {})))


@dataclass
class Windows:
    """The preprocessed windows of one procedure."""

    images: np.ndarray  # uint8 (N, frames, H, W)
    voices: np.ndarray  # float32 (N, 1024, 66)
    labels: list[str]
    times: np.ndarray  # float64 (N,)
    ends: np.ndarray  # float64 (N,), NaN when unknown
    voice_context: Optional[np.ndarray] = None  # float16 (N, 1024, CONTEXT_FRAMES) dB


def speech_context(proc: Procedure, time_s: float) -> np.ndarray:
    """The audio around an onset that a window's speech context is computed from (48 kHz,
    ``CONTEXT_LEAD_FRAMES`` spectrogram frames before the onset)."""
    t0 = time_s - CONTEXT_LEAD_FRAMES * FRAME_STEP / SAMPLE_RATE
    wave = proc.audio_segment(t0, t0 + CONTEXT_SAMPLES / SAMPLE_RATE)
    out = np.zeros(CONTEXT_SAMPLES, np.float32)
    out[:min(len(wave), CONTEXT_SAMPLES)] = wave[:CONTEXT_SAMPLES]
    return out


def extract_windows(proc: Procedure, mentions: Optional[Sequence[Mention]] = None,
                    settings: Optional[WindowSettings] = None,
                    progress: ProgressLike = None) -> Windows:
    """Decode and preprocess the windows of a procedure's mentions (seeking per window).

    Args:
        proc: an opened procedure.
        mentions: the mentions to use (default: the procedure's own).
        settings: image size, frame count and spectrogram scaling.
        progress: reporter of the windows done (see :mod:`..core.progress`).
    """
    settings = settings or WindowSettings()
    mentions = list(proc.mentions if mentions is None else mentions)
    proc.check_mentions(mentions)
    h, w = settings.image_size or (proc.frame_size[1], proc.frame_size[0])
    images = np.empty((len(mentions), settings.frames, h, w), dtype=np.uint8)
    waves = np.empty((len(mentions), proc.sample_rate), dtype=np.float32)
    contexts = np.empty((len(mentions), CONTEXT_SAMPLES), dtype=np.float32)
    with as_progress(progress).task(proc.name, total=len(mentions), unit="window",
                                    transient=True) as task:
        for i, m in enumerate(mentions):
            if m.time_s + settings.frames / proc.fps > proc.duration_s + 1e-6:
                log.warning("%s: the window at %.2f s runs past the end of the video; "
                            "repeating the last frame", proc.name, m.time_s)
            images[i] = resize_frames(proc.frames_window(m.time_s, settings.frames),
                                      settings.image_size)
            waves[i] = proc.voice_window(m)
            contexts[i] = speech_context(proc, m.time_s)
            task.advance()
    voices = spectrogram_batch(waves, settings.spectrogram) if len(mentions) else \
        np.zeros((0, *SPECTROGRAM_SHAPE), np.float32)
    context = power_db_context(contexts) if len(mentions) else \
        np.zeros((0, N_BINS, CONTEXT_FRAMES), np.float16)
    return Windows(images, voices, [m.label for m in mentions],
                   np.array([m.time_s for m in mentions], dtype=np.float64),
                   np.array([np.nan if m.end_s is None else m.end_s for m in mentions]),
                   context)


def _inputs_of(folder: Path) -> list[Path]:
    files = []
    for p in sorted(folder.iterdir()):
        if p.name.startswith("."):
            continue
        if p.is_file():
            files.append(p)
        elif p.is_dir() and p.name == "frames":
            files.extend(sorted(q for q in p.iterdir() if q.is_file()))
    return files


def cache_key(folder: Path, labelset: LabelSet, settings: WindowSettings) -> str:
    """Hash of a procedure folder's input files and of the preprocessing settings."""
    h = hashlib.sha256()
    h.update(json.dumps({"version": CACHE_VERSION, "settings": settings.to_json(),
                         "labels": labelset.ids}, sort_keys=True).encode())
    for f in _inputs_of(folder):
        if f.name == "truth.json":
            continue  # never read by the pipeline
        h.update(f.name.encode())
        h.update(file_sha256(f).encode())
    return h.hexdigest()[:24]


def load_windows_cached(folder: Path, labelset: LabelSet, settings: WindowSettings,
                        cache_dir: Optional[Path]) -> Windows:
    """The windows of one procedure, from the cache when the key matches."""
    if cache_dir is None:
        return extract_windows(load_procedure(folder, labelset=labelset), settings=settings)
    key = cache_key(folder, labelset, settings)
    path = cache_dir / f"{folder.name}-{key}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                return Windows(z["images"], z["voices"], [str(s) for s in z["labels"]],
                               z["times"], z["ends"], z["voice_context"])
        except (OSError, ValueError, KeyError, EOFError) as exc:
            log.warning("%s: unreadable cache entry (%s); rebuilding it", path, exc)
    windows = extract_windows(load_procedure(folder, labelset=labelset), settings=settings)
    try:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, images=windows.images, voices=windows.voices,
                         labels=np.array(windows.labels, dtype=str), times=windows.times,
                         ends=windows.ends, voice_context=windows.voice_context)
        for old in cache_dir.glob(f"{folder.name}-*.npz"):
            if old != path:
                old.unlink(missing_ok=True)  # stale entries of the same patient
    except OSError as exc:
        log.warning("cannot write the window cache %s (%s); continuing without it", path, exc)
    return windows


@dataclass
class WindowSet:
    """All sample windows of a cohort, in memory, with the patient of every sample."""

    images: np.ndarray  # uint8 (N, frames, H, W)
    voices: np.ndarray  # float32 (N, 1024, 66)
    labels: np.ndarray  # int64 (N,)
    patients: list[str]
    times: np.ndarray  # float64 (N,)
    labelset: LabelSet
    settings: WindowSettings = field(default_factory=WindowSettings)
    #: What the windows were read from (the cohort, its patients and their files): the
    #: inputs no output of a run on these windows may overwrite (data.outputs).
    sources: tuple[Path, ...] = ()
    #: float16 (N, 1024, CONTEXT_FRAMES) speech contexts in dB (None: no speech augmentation)
    voice_context: Optional[np.ndarray] = None
    #: float64 (N,) end of the spoken name after the onset in seconds (NaN: unknown)
    voice_ends: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def patient_ids(self) -> list[str]:
        return sorted(set(self.patients))

    def subset(self, indices: Sequence[int]) -> "WindowSet":
        idx = np.asarray(indices, dtype=np.int64)
        return WindowSet(self.images[idx], self.voices[idx], self.labels[idx],
                         [self.patients[i] for i in idx], self.times[idx], self.labelset,
                         self.settings, self.sources,
                         None if self.voice_context is None else self.voice_context[idx],
                         None if self.voice_ends is None else self.voice_ends[idx])

    def indices_of(self, patients: Sequence[str]) -> np.ndarray:
        wanted = set(patients)
        return np.array([i for i, p in enumerate(self.patients) if p in wanted], dtype=np.int64)

    def label_counts(self) -> dict[str, int]:
        ids = self.labelset.ids
        return {ids[k]: int(np.sum(self.labels == k)) for k in range(len(ids))}

    def torch_dataset(self, indices: Optional[Sequence[int]] = None):
        """A torch Dataset of (image float32 (frames, H, W) in [0, 1], voice (1024, 66),
        label int64)."""
        ws = self if indices is None else self.subset(indices)

        class _WindowDataset(Dataset):
            def __len__(self) -> int:
                return len(ws)

            def __getitem__(self, i: int):
                return (torch.from_numpy(ws.images[i].astype(np.float32) / 255.0),
                        torch.from_numpy(ws.voices[i]),
                        torch.tensor(int(ws.labels[i]), dtype=torch.int64))

        return _WindowDataset()


def build_window_set(cohort: os.PathLike | str, labelset: Optional[LabelSet] = None,
                     image_size: Optional[tuple[int, int]] = IMAGE_SIZE,
                     frames: int = WINDOW_FRAMES, cache_dir: Optional[os.PathLike | str] = None,
                     progress: ProgressLike = True,
                     spectrogram_settings: Optional[SpectrogramSettings] = None,
                     use_cache: bool = True,
                     settings: Optional[WindowSettings] = None) -> WindowSet:
    """Preprocess every mention window of a cohort (cached; see the module doc).

    Args:
        cohort: the cohort folder (one procedure folder per patient).
        labelset: vocabulary (default: the cohort's labels.json or the paper's five).
        image_size: (H, W) the frames are resized to after cropping (None keeps the crop size;
            then every procedure must share a crop size).
        frames: frames per window.
        cache_dir: where cached windows live (default: a folder per cohort under
            :func:`default_cache_root`; the cohort folder itself is never written to).
        progress: reporter of the patients done (True: a progress bar; see
            :mod:`..core.progress`).
        spectrogram_settings: spectrogram scaling (default: see :mod:`EUSVoiceLabelLib.data.audio`).
        use_cache: False decodes everything and writes no cache.
        settings: the window settings as a whole (e.g. ``TrainConfig.window_settings()``);
            when given, ``image_size``, ``frames`` and ``spectrogram_settings`` are not used.

    Raises:
        ProcedureError: no patient has any mention.
    """
    cohort = Path(cohort)
    labelset = labelset or load_labelset(None, cohort)
    if settings is None:
        settings = WindowSettings(tuple(image_size) if image_size else None, frames,
                                  spectrogram_settings or SpectrogramSettings())
    patients = find_patients(cohort)
    sources = tuple(input_paths(cohort, labels_file(cohort)))
    cache: Optional[Path] = None
    if use_cache:
        cache = Path(cache_dir) if cache_dir is not None else _default_cache_dir(cohort)
        claim_output(cache, WINDOW_CACHE, sources)

    parts: list[tuple[str, Windows]] = []
    with as_progress(progress).task("windows", total=len(patients), unit="patient",
                                    transient=True) as task:
        for folder in patients:
            if not (folder / "mentions.csv").is_file():
                log.warning("%s: no mentions.csv; the patient is skipped", folder)
            else:
                windows = load_windows_cached(folder, labelset, settings, cache)
                if len(windows.labels):
                    parts.append((folder.name, windows))
            task.advance()
    if not parts:
        raise ProcedureError("no patient has any mention", cohort,
                             "add mentions.csv files (or run 'eusvoicelabel detect')")
    shapes = {w.images.shape[1:] for _, w in parts}
    if len(shapes) > 1:
        raise ProcedureError(f"procedures have different frame sizes {sorted(shapes)}", cohort,
                             "pass --image-size HxW to resize every window to one size")
    return WindowSet(
        images=np.concatenate([w.images for _, w in parts]),
        voices=np.concatenate([w.voices for _, w in parts]),
        labels=np.array([labelset.index(lab) for _, w in parts for lab in w.labels],
                        dtype=np.int64),
        patients=[name for name, w in parts for _ in w.labels],
        times=np.concatenate([w.times for _, w in parts]),
        labelset=labelset, settings=settings, sources=sources,
        voice_context=np.concatenate([w.voice_context for _, w in parts]),
        voice_ends=np.concatenate([w.ends - w.times for _, w in parts]))


def default_cache_root() -> Path:
    """Root of the window cache: ``$EUSVOICELABEL_CACHE``, else ``~/.cache/eusvoicelabel``."""
    env = os.environ.get("EUSVOICELABEL_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "eusvoicelabel"


def _default_cache_dir(cohort: Path) -> Path:
    # Outside the cohort: input folders are never written to.
    digest = hashlib.sha256(str(cohort.resolve()).encode()).hexdigest()[:12]
    return default_cache_root() / f"{cohort.name}-{digest}"
