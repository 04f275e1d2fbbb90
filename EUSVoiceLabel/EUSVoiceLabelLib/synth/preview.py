"""Frame-grid pictures of a synthetic cohort (for the docs and for eyeballing the data)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageDraw

from ..core.fileio import atomic_path
from ..core.paper import WINDOW_FRAMES
from ..data.procedure import find_patients, load_procedure


def landmark_grid(cohort: Union[str, os.PathLike], label: str, out: Union[str, os.PathLike],
                  examples: int = 4, frames: tuple[int, ...] = (0, 12, 24),
                  boxes: bool = True, scale: float = 1.0) -> Path:
    """Save a PNG grid: one row per mention of ``label`` (up to ``examples``, from different
    patients first), columns = frames of its 1 s window, named landmark boxed (red) and other
    visible landmarks boxed (yellow); ``scale`` resizes the picture.  Reads the video through
    the project's procedure loader."""
    picks = []
    for pat in find_patients(cohort):
        truth = json.loads((pat / "truth.json").read_text())
        for m in truth["mentions"]:
            if m["label"] == label:
                picks.append((pat, m))
                break
    for pat in find_patients(cohort):  # fill up with second mentions
        if len(picks) >= examples:
            break
        truth = json.loads((pat / "truth.json").read_text())
        ms = [m for m in truth["mentions"] if m["label"] == label][1:2]
        picks.extend((pat, m) for m in ms)
    picks = picks[:examples]
    if not picks:
        raise ValueError(f"no mention of {label!r} in {cohort}")
    rows = []
    for pat, m in picks:
        proc = load_procedure(pat)
        win = proc.frames_window(m["time_s"], WINDOW_FRAMES)
        tiles = []
        for f in frames:
            img = Image.fromarray(win[min(f, len(win) - 1)]).convert("RGB")
            if boxes:
                d = ImageDraw.Draw(img)
                for lab, info in m["window"]["landmarks"].items():
                    if info["bbox"] and info["visible"]:
                        x, y, w, h = info["bbox"]
                        d.rectangle([x, y, x + w - 1, y + h - 1],
                                    outline=(255, 40, 40) if lab == label else (230, 210, 40))
            tiles.append(np.asarray(img))
        row = np.concatenate([np.pad(t, ((2, 2), (2, 2), (0, 0))) for t in tiles], 1)
        rows.append(row)
    grid = Image.fromarray(np.concatenate(rows, 0))
    if scale != 1.0:
        grid = grid.resize((int(grid.width * scale), int(grid.height * scale)),
                           Image.Resampling.LANCZOS)
    out = Path(out)
    with atomic_path(out) as tmp:
        grid.save(tmp, format="PNG", optimize=True)
    return out
