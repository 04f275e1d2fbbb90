"""Small real media files for tests: videos with and without audio tracks, frame folders,
audio files.  Frame ``i`` of a generated video is a flat grey level ``frame_level(i)`` (encoded
losslessly), so a test can tell exactly which frame a reader returned."""

from __future__ import annotations

import json
import subprocess
import tempfile
import wave
from fractions import Fraction
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from scipy.io import wavfile
from scipy.signal import resample_poly


def say(text: str, voice: str, stretch: float = 1.0, rate: int = 16000) -> np.ndarray:
    """flite speech at ``rate`` Hz, leading and trailing silence trimmed (``stretch``: slower
    speech, each sound that many times its usual length; flite must be installed)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "say.wav"
        subprocess.run(["flite", "-voice", voice, "--setf", f"duration_stretch={stretch}",
                        "-t", text, "-o", str(path)], check=True)
        native, x = wavfile.read(path)
    x = x.astype(np.float32) / 32768.0
    if native != rate:
        x = resample_poly(x, rate, native).astype(np.float32)
    loud = np.flatnonzero(np.abs(x) > 0.02 * np.abs(x).max())
    return x[loud[0]:loud[-1] + 1]


def frame_level(i: int) -> int:
    return 16 + (4 * i) % 224


def frame_index_of(level: float) -> int:
    return int(round((level - 16) / 4))


def tone(seconds: float, rate: int = 48000, freq: float = 440.0, amp: float = 0.3,
         channels: int = 1) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    x = (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return np.repeat(x[:, None], channels, axis=1) if channels > 1 else x


def write_wav(path: Path, samples: np.ndarray, rate: int) -> Path:
    samples = np.asarray(samples, dtype=np.float32)
    channels = 1 if samples.ndim == 1 else samples.shape[1]
    pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return path


def write_audio(path: Path, samples: np.ndarray, rate: int, codec: str = "aac") -> Path:
    """Write mono audio with PyAV in any container (m4a/mp3/flac)."""
    import av

    samples = np.asarray(samples, dtype=np.float32).reshape(1, -1)
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=rate, layout="mono")
        fmt = stream.codec_context.format.name if stream.codec_context.format else "fltp"
        frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
        frame.sample_rate = rate
        resampler = av.AudioResampler(format=fmt, layout="mono", rate=rate)
        for f in resampler.resample(frame):
            for packet in stream.encode(f):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def write_video(path: Path, n_frames: int, fps: float = 25.0, size: tuple[int, int] = (96, 64),
                audio: Optional[np.ndarray] = None, audio_rate: int = 48000,
                frames: Optional[Sequence[np.ndarray]] = None, codec: str = "libx264",
                lossless: bool = True) -> Path:
    """Write a video whose frame i is flat grey ``frame_level(i)`` (or the given frames)."""
    import av

    w, h = size
    with av.open(str(path), "w") as out:
        rate = Fraction(fps).limit_denominator(1001)
        vs = out.add_stream(codec, rate=rate)
        vs.width, vs.height = w, h
        vs.pix_fmt = "yuv420p"
        if codec == "libx264":
            vs.options = {"qp": "0", "preset": "ultrafast"} if lossless else \
                {"preset": "ultrafast"}
        as_ = None
        if audio is not None:
            as_ = out.add_stream("aac", rate=audio_rate, layout="mono")
        for i in range(n_frames):
            img = frames[i] if frames is not None else np.full((h, w), frame_level(i), np.uint8)
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="gray")
            vf = vf.reformat(format="yuv420p")
            vf.pts = i
            for p in vs.encode(vf):
                out.mux(p)
        for p in vs.encode(None):
            out.mux(p)
        if as_ is not None:
            a = np.asarray(audio, dtype=np.float32).reshape(1, -1)
            af = av.AudioFrame.from_ndarray(a, format="fltp", layout="mono")
            af.sample_rate = audio_rate
            af.pts = 0
            for f in av.AudioResampler(format="fltp", layout="mono", rate=audio_rate).resample(af):
                for p in as_.encode(f):
                    out.mux(p)
            for p in as_.encode(None):
                out.mux(p)
    return path


def write_frames_folder(folder: Path, n_frames: int, size: tuple[int, int] = (96, 64),
                        ext: str = ".png") -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    w, h = size
    for i in range(n_frames):
        rgb = np.zeros((h, w, 3), np.uint8)
        rgb[:] = frame_level(i)
        Image.fromarray(rgb).save(folder / f"frame_{i + 1}{ext}")  # 1-based, unpadded
    return folder


def make_procedure(folder: Path, seconds: float = 4.0, size: tuple[int, int] = (96, 64),
                   mentions: Optional[str] = "time_s,label,end_s\n1.0,pancreas,1.6\n2.0,bile_duct,\n",
                   audio: str = "wav", offset: float = 0.0, audio_rate: int = 48000,
                   settings: Optional[dict] = None) -> Path:
    """A procedure folder: video.mp4 + audio (wav / track / none) + mentions + procedure.json.

    The audio is a 440 Hz tone whose amplitude steps with the audio time (amp = 0.1 * (1 + s)
    in second s) so tests can check which audio a window got.
    """
    folder.mkdir(parents=True, exist_ok=True)
    n = int(round(seconds * 25))
    a_len = seconds + 1.0
    t = np.arange(int(a_len * audio_rate)) / audio_rate
    samples = (0.1 * (1 + np.floor(t)) * np.sin(2 * np.pi * 440 * t)).astype(np.float32) * 0.2
    write_video(folder / "video.mp4", n, size=size,
                audio=samples if audio == "track" else None, audio_rate=audio_rate)
    if audio == "wav":
        write_wav(folder / "audio.wav", samples, audio_rate)
    if mentions is not None:
        (folder / "mentions.csv").write_text(mentions)
    data = dict(settings or {})
    if offset:
        data["audio_offset_s"] = offset
    if data:
        (folder / "procedure.json").write_text(json.dumps(data))
    return folder


def write_long_video(path: Path, seconds: float, size: tuple[int, int] = (720, 480),
                     clip_seconds: float = 10.0, fps: int = 25) -> Path:
    """A long H.264 video made fast: one short clip is encoded, then its packets are remuxed
    again and again with shifted timestamps (frame i shows ``frame_level(i % clip_frames)``)."""
    from EUSVoiceLabelLib.synth.longvideo import repeat_clip

    clip = path.with_suffix(".clip.mp4")
    write_video(clip, int(clip_seconds * fps), fps=fps, size=size, lossless=False)
    return repeat_clip(clip, path, seconds, clip_seconds)
