"""Long synthetic recordings made fast, for timing (``eusvoicelabel bench``): an H.264 video of
any length (one short clip encoded, its packets remuxed again and again) and a procedure folder
around it with spoken landmark phrases."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterator

import av
import numpy as np

from ..core.fileio import atomic_write_text
from ..core.paper import FPS, SAMPLE_RATE, VIDEO_SIZE
from ..data.media import write_wav
from ..data.vocabulary import LabelSet
from .speech import speak


def _clip_frames(n: int, size: tuple[int, int], seed: int = 0) -> Iterator[np.ndarray]:
    """Smooth moving grey blobs with light speckle (compresses like real EUS, unlike noise)."""
    w, h = size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    centres = rng.uniform(0, 1, (5, 2)) * (w, h)
    speed = rng.normal(0, 2, (5, 2))
    speckle = rng.normal(0, 6, (h, w)).astype(np.float32)
    for i in range(n):
        img = np.full((h, w), 30.0, np.float32)
        for (cx, cy), (vx, vy) in zip(centres, speed):
            img += 120 * np.exp(-(((xx - cx - vx * i) / 60) ** 2 + ((yy - cy - vy * i) / 40) ** 2))
        yield np.clip(img + speckle, 0, 255).astype(np.uint8)


def write_long_video(path: Path, seconds: float, size: tuple[int, int] = VIDEO_SIZE,
                     clip_seconds: float = 10.0, fps: int = int(FPS)) -> Path:
    """A long H.264 video made fast: one short clip is encoded, then its packets are remuxed
    with shifted timestamps until ``seconds`` are covered."""
    clip = path.with_suffix(".clip.mp4")
    n_clip = int(clip_seconds * fps)
    with av.open(str(clip), "w") as out:
        vs = out.add_stream("libx264", rate=fps)
        vs.width, vs.height = size
        vs.pix_fmt = "yuv420p"
        vs.options = {"preset": "ultrafast", "crf": "30", "g": str(fps)}
        for i, img in enumerate(_clip_frames(n_clip, size)):
            vf = av.VideoFrame.from_ndarray(img, format="gray").reformat(format="yuv420p")
            vf.pts = i
            for p in vs.encode(vf):
                out.mux(p)
        for p in vs.encode(None):
            out.mux(p)
    return repeat_clip(clip, path, seconds, clip_seconds)


def repeat_clip(clip: Path, path: Path, seconds: float, clip_seconds: float) -> Path:
    """Remux the packets of a short H.264 ``clip`` again and again with shifted timestamps
    into ``path`` until ``seconds`` are covered (no re-encoding), then delete the clip."""
    repeats = int(math.ceil(seconds / clip_seconds))
    with av.open(str(clip)) as src:
        sv = src.streams.video[0]
        packets = [p for p in src.demux(sv) if p.size]
        span = int(round(clip_seconds / sv.time_base))  # the clip's length in stream ticks
        with av.open(str(path), "w") as out:
            ov = out.add_stream_from_template(sv)
            for r in range(repeats):
                for p in packets:
                    q = av.Packet(bytes(p))
                    q.stream = ov
                    q.pts = p.pts + r * span
                    q.dts = p.dts + r * span
                    q.time_base = sv.time_base
                    q.is_keyframe = p.is_keyframe
                    out.mux(q)
    clip.unlink()
    return path


def make_procedure(folder: Path, seconds: float, n_mentions: int, seed: int = 0,
                   size: tuple[int, int] = VIDEO_SIZE) -> Path:
    """A procedure folder for timing: long video, a 48 kHz wav with quiet room noise and a
    spoken landmark phrase (flite TTS) at each mention, and mentions.csv."""
    folder.mkdir(parents=True, exist_ok=True)
    write_long_video(folder / "video.mp4", seconds, size)
    rate = SAMPLE_RATE
    rng = np.random.default_rng(seed)
    audio = (0.01 * rng.standard_normal(int(seconds * rate))).astype(np.float32)
    labels = LabelSet.default()
    times = np.linspace(5.0, max(6.0, seconds - 8.0), n_mentions)
    rows = ["time_s,label,end_s"]
    for k, t in enumerate(times):
        lab = labels.labels[k % len(labels)]
        end = t + 1.0
        try:
            x = 0.5 * speak(f"this is the {lab.name}", "flite_slt")
            i = int(t * rate)
            x = x[: len(audio) - i]
            audio[i:i + len(x)] += x
            end = t + len(x) / rate
        except Exception:  # pragma: no cover - TTS engines missing: a silent mention
            pass
        rows.append(f"{t:.3f},{lab.id},{end:.3f}")
    atomic_write_text(folder / "mentions.csv", "\n".join(rows) + "\n")
    write_wav(folder / "audio.wav", audio, rate)
    return folder


__all__ = ["write_long_video", "repeat_clip", "make_procedure"]
