"""Reading frames and audio: video files (PyAV), frame folders, ``.seq.nrrd`` and audio files.

Frames are always read *by time*: a caller asks for the frames shown at a list of times and
gets grey uint8 images, decoded by seeking to the nearest key frame before the first time and
decoding forward.  A 20-minute procedure is therefore never decoded into memory as a whole.
Every library exception is turned into a :class:`~EUSVoiceLabelLib.core.errors.MediaError` naming
the file.
"""

from __future__ import annotations

import logging
import math
import os
import re
import struct
import wave
import zlib
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np

from ..core.errors import MediaError
from ..core.fileio import atomic_path
from ..core.paper import FPS

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".m4v", ".webm", ".mpg", ".mpeg")
AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".m4a", ".aac", ".ogg", ".opus")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
MIN_SAMPLE_RATE = 4_000
MAX_SAMPLE_RATE = 768_000
MAX_FRAME_SIDE = 8192
MAX_AUDIO_CHANNELS = 64
#: A ``.seq.nrrd`` is decoded into memory whole, so its decoded data may hold at most this many
#: bytes (1 GiB: 4,400 grey 690x350 frames, three minutes at 25 fps; longer recordings belong
#: in a video file).  Checked from the header before anything is inflated, so a small gzip
#: "bomb" is refused at once.
MAX_SEQUENCE_BYTES = 1 << 30


def _av():
    import av  # deferred: heavy; the Slicer module imports this before requirements.txt

    return av


def _av_errors() -> tuple[type[BaseException], ...]:
    av = _av()
    # AttributeError: PyAV raises it for streams whose header is too broken to give a codec
    # context (e.g. a WAV with an absurd sample rate); found by fuzzing (test_fuzz.py).
    return (av.error.FFmpegError, ValueError, EOFError, OSError, IndexError, RuntimeError,
            MemoryError, OverflowError, ZeroDivisionError, TypeError, AttributeError)


# --------------------------------------------------------------------------- frame sources
class FrameSource(ABC):
    """Frames of one recording, addressed by time on the video clock (first frame = 0 s)."""

    path: Path
    width: int
    height: int
    native_fps: float
    duration_s: float

    @abstractmethod
    def read(self, times: Sequence[float]) -> np.ndarray:
        """Grey frames shown at ``times`` (s), as uint8 (len(times), height, width).

        Each time gets the frame whose timestamp is nearest; times past either end get the edge
        frame.
        """

    def describe(self) -> str:
        return f"{self.path.name} ({self.width}x{self.height}, {self.native_fps:.3g} fps)"


def _check_size(path: Path, width: int, height: int) -> None:
    if not (1 <= width <= MAX_FRAME_SIDE and 1 <= height <= MAX_FRAME_SIDE):
        raise MediaError(f"implausible frame size {width}x{height}", path,
                         "the file header is probably corrupt")


class VideoFileSource(FrameSource):
    """A video file decoded with PyAV (mp4, avi, mov, mkv, ...)."""

    def __init__(self, path: os.PathLike | str):
        self.path = Path(path)
        try:
            with _av().open(str(self.path), metadata_errors="ignore") as container:
                if not container.streams.video:
                    raise MediaError("has no video stream", self.path,
                                     "give a video file, a frames/ folder or frames.seq.nrrd")
                stream = container.streams.video[0]
                self.width = int(stream.codec_context.width or 0)
                self.height = int(stream.codec_context.height or 0)
                _check_size(self.path, self.width, self.height)
                rate = stream.average_rate or stream.guessed_rate or stream.base_rate
                self.native_fps = float(rate) if rate else 0.0
                self._time_base = float(stream.time_base) if stream.time_base else None
                self._start = self._first_frame_time(container)
                duration = None
                if stream.duration is not None and stream.time_base is not None:
                    duration = float(stream.duration * stream.time_base)
                elif container.duration:
                    duration = container.duration / 1e6
                if not duration or duration <= 0:
                    if stream.frames and self.native_fps > 0:
                        duration = stream.frames / self.native_fps
                if not duration or not math.isfinite(duration) or duration <= 0:
                    raise MediaError("cannot tell the video's duration", self.path,
                                     "re-encode it, e.g. ffmpeg -i in.avi -c:v libx264 out.mp4")
                self.duration_s = duration
                self.has_audio = bool(container.streams.audio)
                self._audio_start = None
                if self.has_audio:
                    a = container.streams.audio[0]
                    if a.start_time is not None and a.time_base is not None:
                        self._audio_start = float(a.start_time * a.time_base)
        except MediaError:
            raise
        except _av_errors() as exc:
            raise MediaError(f"cannot read video ({_short(exc)})", self.path,
                             "the file is missing, corrupt or not a supported video") from None
        if self.native_fps <= 0 or not math.isfinite(self.native_fps) or self.native_fps > 1000:
            raise MediaError(f"implausible frame rate {self.native_fps}", self.path)

    def _first_frame_time(self, container) -> float:
        for frame in container.decode(video=0):
            if frame.time is not None:
                return float(frame.time)
            return 0.0
        raise MediaError("contains no decodable video frame", self.path,
                         "the file is empty or corrupt")

    @property
    def audio_track_offset_s(self) -> float:
        """Offset to add to video time to reach the embedded audio track's sample clock."""
        if self._audio_start is None:
            return 0.0
        return self._start - self._audio_start

    def _decode_from(self, container, stream, t: float) -> Iterator[tuple[float, object]]:
        """Yield (time on the video clock, frame) from a key frame at or before ``t``."""
        target = t + self._start
        if target > self._start + 0.5 and self._time_base:
            container.seek(int(max(0.0, target - 0.5) / self._time_base), stream=stream,
                           backward=True, any_frame=False)
        else:
            container.seek(0, stream=stream, backward=True, any_frame=False)
        for frame in container.decode(stream):
            if frame.time is None:
                continue
            yield float(frame.time) - self._start, frame

    def read(self, times: Sequence[float]) -> np.ndarray:
        times = np.asarray(times, dtype=np.float64)
        out = np.empty((len(times), self.height, self.width), dtype=np.uint8)
        if len(times) == 0:
            return out
        order = np.argsort(times, kind="stable")
        try:
            with _av().open(str(self.path), metadata_errors="ignore") as container:
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                filled = self._fill(container, stream, times, order, out)
                if not filled:
                    # Some containers seek past the wanted frame: decode from the start instead.
                    filled = self._fill(container, stream, times, order, out, from_start=True)
        except MediaError:
            raise
        except _av_errors() as exc:
            raise MediaError(f"cannot decode video ({_short(exc)})", self.path,
                             "the file may be truncated or corrupt") from None
        if not filled:
            raise MediaError("contains no decodable video frame at the requested times",
                             self.path, "the file may be truncated or corrupt")
        return out

    def _fill(self, container, stream, times, order, out, from_start: bool = False) -> bool:
        first = 0.0 if from_start else float(times[order[0]])
        k = 0  # next target (in sorted order)
        prev_t, prev_frame = None, None
        cache: dict[float, np.ndarray] = {}

        def grey(t: float, frame) -> np.ndarray:
            # Keyed by timestamp: consecutive targets often share a frame.
            if t not in cache:
                cache.clear()
                arr = frame.to_ndarray(format="gray")
                if arr.shape != (self.height, self.width):
                    raise MediaError(f"frame size changes mid-stream to {arr.shape[1]}x"
                                     f"{arr.shape[0]}", self.path)
                cache[t] = arr
            return cache[t]

        for t, frame in self._decode_from(container, stream, first):
            if prev_t is None and t > float(times[order[0]]) + 0.5 and first > 0:
                return False  # the seek landed after the first wanted time
            while k < len(order) and t >= times[order[k]]:
                # The wanted time lies between prev and this frame: take the nearer one.
                target = times[order[k]]
                if prev_frame is not None and (target - prev_t) < (t - target):
                    out[order[k]] = grey(prev_t, prev_frame)
                else:
                    out[order[k]] = grey(t, frame)
                k += 1
            if k >= len(order):
                return True
            prev_t, prev_frame = t, frame
        if prev_frame is None:
            return False
        # Times after the last frame repeat the last frame.
        while k < len(order):
            out[order[k]] = grey(prev_t, prev_frame)
            k += 1
        return True


_NUM_RE = re.compile(r"(\d+)")


def _natural_key(name: str) -> list:
    return [int(p) if p.isdigit() else p.lower() for p in _NUM_RE.split(name)]


class FrameFolderSource(FrameSource):
    """A folder of numbered PNG/JPEG frames, played at ``fps``."""

    def __init__(self, path: os.PathLike | str, fps: float = FPS):
        self.path = Path(path)
        try:
            names = [p.name for p in self.path.iterdir()
                     if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")]
        except OSError as exc:
            raise MediaError(f"cannot list frames ({exc.strerror})", self.path) from None
        if not names:
            raise MediaError("no PNG/JPEG frames in the folder", self.path,
                             "name frames like 000001.png, 000002.png, ...")
        self.files = [self.path / n for n in sorted(names, key=_natural_key)]
        if not (0 < fps <= 1000):
            raise MediaError(f"implausible frame rate {fps}", self.path)
        self.native_fps = float(fps)
        self.duration_s = len(self.files) / self.native_fps
        first = self._load(0)
        self.height, self.width = first.shape
        _check_size(self.path, self.width, self.height)

    def _load(self, index: int) -> np.ndarray:
        from PIL import Image, UnidentifiedImageError  # deferred: requirements.txt (Slicer)

        path = self.files[index]
        try:
            with Image.open(path) as img:
                if img.width * img.height > MAX_FRAME_SIDE ** 2:
                    raise MediaError(f"implausible image size {img.width}x{img.height}", path)
                arr = np.asarray(img.convert("L"), dtype=np.uint8)
        except MediaError:
            raise
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError,
                Image.DecompressionBombError) as exc:
            raise MediaError(f"cannot read frame ({_short(exc)})", path,
                             "replace or remove the corrupt image") from None
        if hasattr(self, "height") and arr.shape != (self.height, self.width):
            raise MediaError(f"frame is {arr.shape[1]}x{arr.shape[0]}, the first frame is "
                             f"{self.width}x{self.height}", path, "all frames must share a size")
        return arr

    def read(self, times: Sequence[float]) -> np.ndarray:
        idx = np.clip(np.rint(np.asarray(times, dtype=np.float64) * self.native_fps),
                      0, len(self.files) - 1).astype(int)
        out = np.empty((len(idx), self.height, self.width), dtype=np.uint8)
        loaded: dict[int, np.ndarray] = {}
        for j, i in enumerate(idx):
            if i not in loaded:
                loaded = {i: self._load(int(i))}  # keep one frame: windows repeat edge frames
            out[j] = loaded[i]
        return out


class NrrdSequenceSource(FrameSource):
    """A Slicer volume sequence (``.seq.nrrd``) of 2-D frames; times from its index values."""

    def __init__(self, path: os.PathLike | str):
        import nrrd  # deferred: requirements.txt (Slicer)

        self.path = Path(path)
        try:
            with open(self.path, "rb") as fh:
                header = nrrd.read_header(fh)
                _check_nrrd_size(self.path, header)
                data = nrrd.read_data(header, fh, str(self.path))
        except FileNotFoundError:
            raise MediaError("file not found", self.path) from None
        except MediaError:
            raise
        # zlib.error (corrupt gzip data) and StopIteration (an empty file) come from pynrrd's
        # reader on damaged files; found by fuzzing (test_fuzz.py).
        except (nrrd.NRRDError, OSError, ValueError, EOFError, KeyError, TypeError,
                IndexError, MemoryError, OverflowError, UnicodeDecodeError, zlib.error,
                StopIteration, struct.error, AttributeError) as exc:
            raise MediaError(f"cannot read NRRD ({_short(exc)})", self.path,
                             "the file is corrupt or not a NRRD volume sequence") from None
        kinds = [str(k).lower() for k in header.get("kinds", [])]
        if data.ndim < 3:
            raise MediaError(f"is {data.ndim}-D, a frame sequence needs a time axis", self.path)
        list_axis = None
        for i, k in enumerate(kinds):
            if k == "list":
                list_axis = i
        if list_axis is None:
            list_axis = data.ndim - 1
        frames = np.moveaxis(data, list_axis, 0)  # (N, ...)
        axis_kinds = [k for i, k in enumerate(kinds) if i != list_axis] if kinds else []
        # Colour components (a "vector"/"RGB-color" axis) become grey.
        comp_axis = next((i for i, k in enumerate(axis_kinds)
                          if k in ("vector", "rgb-color", "rgba-color", "3-color")), None)
        if comp_axis is not None:
            comp = np.moveaxis(frames, comp_axis + 1, -1).astype(np.float32)
            weights = np.array([0.299, 0.587, 0.114, 0.0][:comp.shape[-1]], dtype=np.float32)
            frames = (comp[..., :3] * weights[:3]).sum(-1) if comp.shape[-1] >= 3 \
                else comp[..., 0]
        frames = np.squeeze(frames)
        if frames.ndim == 2:
            frames = frames[None]
        if frames.ndim != 3:
            raise MediaError(f"frames have shape {frames.shape[1:]}, expected 2-D frames",
                             self.path)
        # NRRD axes are (x, y) = (columns, rows): transpose to rows x columns.
        frames = np.transpose(frames, (0, 2, 1))
        if frames.dtype != np.uint8:
            # In float32 and in place: at most 4 bytes per value besides the decoded data.
            grey = np.asarray(frames, dtype=np.float32)
            lo, hi = float(np.nanmin(grey)), float(np.nanmax(grey))
            grey -= lo
            grey *= 255.0 / (hi - lo) if hi > lo else 0.0
            frames = np.clip(grey, 0, 255, out=grey).astype(np.uint8)
        self.frames = np.ascontiguousarray(frames)
        n, self.height, self.width = self.frames.shape
        times = _index_values(header, list_axis, n)
        if times is None:
            times = np.arange(n) / FPS
        self.times = times - times[0]
        step = np.median(np.diff(self.times)) if n > 1 else 1.0 / FPS
        self.native_fps = float(1.0 / step) if step > 0 else FPS
        self.duration_s = float(self.times[-1] + (step if step > 0 else 1.0 / FPS))

    def read(self, times: Sequence[float]) -> np.ndarray:
        times = np.asarray(times, dtype=np.float64)
        pos = np.searchsorted(self.times, times)
        pos = np.clip(pos, 1, len(self.times) - 1) if len(self.times) > 1 else np.zeros_like(pos)
        if len(self.times) > 1:
            left = self.times[pos - 1]
            right = self.times[pos]
            pos = np.where(np.abs(times - left) <= np.abs(right - times), pos - 1, pos)
        return self.frames[pos]


# Bytes per value of the NRRD types (the format's own names); anything else counts as 8.
_NRRD_ITEMSIZE = {
    **dict.fromkeys(("signed char", "int8", "int8_t", "uchar", "unsigned char", "uint8",
                     "uint8_t"), 1),
    **dict.fromkeys(("short", "short int", "signed short", "signed short int", "int16",
                     "int16_t", "ushort", "unsigned short", "unsigned short int", "uint16",
                     "uint16_t"), 2),
    **dict.fromkeys(("int", "signed int", "int32", "int32_t", "uint", "unsigned int",
                     "uint32", "uint32_t", "float"), 4),
}


def _nrrd_itemsize(header: dict) -> int:
    kind = str(header.get("type", "")).strip().lower()
    if kind == "block":
        return max(1, int(header.get("block size", header.get("blocksize", 1)) or 1))
    return _NRRD_ITEMSIZE.get(kind, 8)


def _check_nrrd_size(path: Path, header: dict) -> None:
    """Refuse a sequence whose header announces no frames or more decoded data than
    :data:`MAX_SEQUENCE_BYTES`, before any of it is read."""
    sizes = [int(v) for v in np.atleast_1d(header.get("sizes", []))]
    if not sizes or min(sizes) < 1:
        raise MediaError(f"holds no frames (sizes {sizes})", path,
                         "the sequence is empty: export it again from Slicer")
    if max(sizes[:2]) > MAX_FRAME_SIDE:
        raise MediaError(f"implausible frame size {sizes[0]}x{sizes[1]}", path,
                         "the file header is probably corrupt")
    total = math.prod(sizes) * _nrrd_itemsize(header)
    if total > MAX_SEQUENCE_BYTES:
        raise MediaError(f"would decode to {total / 2 ** 30:.1f} GiB of frames, more than the "
                         f"{MAX_SEQUENCE_BYTES / 2 ** 30:.0f} GiB a .seq.nrrd may hold", path,
                         "store long recordings as a video file (video.mp4) instead")


def _index_values(header: dict, axis: int, n: int) -> Optional[np.ndarray]:
    for key in (f"axis {axis} index values", "axis 0 index values"):
        value = header.get(key)
        if value is None:
            continue
        try:
            vals = np.array([float(v) for v in str(value).replace(",", " ").split()])
        except ValueError:
            return None
        if len(vals) == n and np.all(np.isfinite(vals)) and np.all(np.diff(vals) >= 0):
            return vals
    return None


def open_frames(path: os.PathLike | str, fps: float = FPS) -> FrameSource:
    """Open a video file, a frames folder or a ``.seq.nrrd`` as a :class:`FrameSource`."""
    path = Path(path)
    if path.is_dir():
        return FrameFolderSource(path, fps)
    if not path.exists():
        raise MediaError("file not found", path)
    if path.name.lower().endswith(".nrrd"):
        return NrrdSequenceSource(path)
    return VideoFileSource(path)


# --------------------------------------------------------------------------- audio
def load_audio(path: os.PathLike | str) -> tuple[np.ndarray, int]:
    """Decode the first audio stream of a file (audio or video container) to mono float32.

    Returns:
        (samples, sample_rate) at the file's own rate; channels are averaged.

    Raises:
        MediaError: no audio stream, undecodable data, an implausible sample rate, or samples
            that are NaN / infinite.
    """
    path = Path(path)
    if not path.is_file():
        raise MediaError("file not found", path)
    av = _av()
    chunks: list[np.ndarray] = []
    try:
        with av.open(str(path), metadata_errors="ignore") as container:
            if not container.streams.audio:
                raise MediaError("has no audio stream", path,
                                 "add an audio file (audio.wav) to the procedure folder")
            stream = container.streams.audio[0]
            rate = int(stream.rate or stream.codec_context.sample_rate or 0)
            if not (MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE):
                raise MediaError(f"implausible sample rate {rate} Hz", path,
                                 f"expected {MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz")
            channels = int(stream.codec_context.channels or 0)
            if not 1 <= channels <= MAX_AUDIO_CHANNELS:
                raise MediaError(f"implausible channel count {channels}", path,
                                 f"expected 1-{MAX_AUDIO_CHANNELS} audio channels")
            # Interleaved float at the native rate and layout: one plane.  PyAV counts a
            # frame's planes by walking FFmpeg's plane pointers up to a NULL that planar frames
            # of 8 or more channels do not have (AVFrame holds 8 pointers inline), so
            # to_ndarray of a planar 7.1 AAC or 8-channel WAV/FLAC frame read garbage pointers
            # and crashed the process.  Channels are averaged here (ffmpeg's own down-mix
            # scales by -3 dB instead).
            resampler = av.AudioResampler(format="flt")
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunks.append(_mono(out))
            for out in resampler.resample(None):
                chunks.append(_mono(out))
    except MediaError:
        raise
    except _av_errors() as exc:
        if chunks:
            log.warning("%s: audio decoding stopped early (%s); using the %.1f s decoded",
                        path, _short(exc), sum(len(c) for c in chunks) / rate)
        else:
            raise MediaError(f"cannot decode audio ({_short(exc)})", path,
                             "the file is corrupt or not a supported audio format") from None
    samples = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
    if samples.size == 0:
        raise MediaError("audio stream holds no samples", path)
    if not np.all(np.isfinite(samples)):
        raise MediaError("audio contains NaN or infinite samples", path,
                         "re-export the recording as 16-bit PCM WAV")
    return samples, rate


def _mono(frame) -> np.ndarray:
    """The channel average of an interleaved float audio frame."""
    channels = len(frame.layout.channels)
    if not 1 <= channels <= MAX_AUDIO_CHANNELS:
        raise ValueError(f"audio frame with {channels} channels")
    return frame.to_ndarray().reshape(-1, channels).mean(axis=1, dtype=np.float32)


def write_wav(path: os.PathLike | str, samples: np.ndarray, rate: int) -> Path:
    """Write mono float samples (-1..1) as a 16-bit PCM WAV file, atomically."""
    pcm = (np.clip(np.asarray(samples, dtype=np.float32), -1, 1) * 32767).astype("<i2")
    path = Path(path)
    with atomic_path(path) as tmp:
        with wave.open(str(tmp), "wb") as wf:
            wf.setnchannels(1)
            wf.setsampwidth(2)
            wf.setframerate(int(rate))
            wf.writeframes(pcm.tobytes())
    return path


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
    return text[:200]
