"""Voice activity: the stretches of a recording that hold speech (only they are decoded)."""

from __future__ import annotations

import numpy as np
from pocketsphinx import Vad

from .denoise import RATE


def voiced_regions(pcm16: np.ndarray, *, pad_s: float = 0.3, min_gap_s: float = 0.6,
                   min_len_s: float = 0.2, max_len_s: float = 20.0, overlap_s: float = 2.0,
                   mode: int = 1) -> list[tuple[int, int]]:
    """Sample ranges [start, stop) of 16 kHz audio that contain speech.

    WebRTC-style frame classification (pocketsphinx ``Vad``), padded by ``pad_s`` so word edges
    are kept, merged across gaps shorter than ``min_gap_s``; regions longer than ``max_len_s``
    are cut into overlapping pieces (``overlap_s``) so no phrase is lost at a cut.
    """
    vad = Vad(mode, RATE)
    step = vad.frame_bytes // 2
    n = len(pcm16) // step
    if n == 0:
        return []
    frames = np.ascontiguousarray(pcm16[:n * step], dtype=np.int16).reshape(n, step)
    voiced = np.fromiter((vad.is_speech(f.tobytes()) for f in frames), bool, n)
    if not voiced.any():
        return []
    # Runs of voiced frames -> padded sample ranges, merged across short gaps.
    edges = np.flatnonzero(np.diff(np.r_[0, voiced.astype(np.int8), 0]))
    pad, gap = int(pad_s * RATE), int(min_gap_s * RATE)
    regions: list[list[int]] = []
    for a, b in zip(edges[::2], edges[1::2]):
        s0, s1 = max(0, a * step - pad), min(len(pcm16), b * step + pad)
        if regions and s0 - regions[-1][1] < gap:
            regions[-1][1] = s1
        else:
            regions.append([s0, s1])
    out: list[tuple[int, int]] = []
    max_len, ov = int(max_len_s * RATE), int(overlap_s * RATE)
    for s0, s1 in regions:
        if s1 - s0 < min_len_s * RATE:
            continue
        while s1 - s0 > max_len:
            out.append((s0, s0 + max_len))
            s0 += max_len - ov
        out.append((s0, s1))
    return out
