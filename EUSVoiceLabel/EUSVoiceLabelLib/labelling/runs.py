"""Runs of labelled frames: consecutive frames of a whole-procedure labelling with one label
and source, the segments its timeline shows and the Slicer module reviews at once, and the
review of them (a run's reviewed label applies to every frame of it).  Standard library only, so
the Slicer module reads and writes its timeline table before torch is installed."""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

#: The label of frames that show none of the landmarks.
NONE = "none"


@dataclass
class Run:
    """Consecutive labelled frames with one label and source (the timeline's segments, what
    the Slicer module reviews at once)."""

    start_frame: int
    end_frame: int           # last frame of the run (inclusive)
    label: str
    source: str
    confidence: float        # mean over the run
    frames: int

    def start_s(self, fps: float) -> float:
        return self.start_frame / fps

    def end_s(self, fps: float, stride: int = 1) -> float:
        return (self.end_frame + stride) / fps


def runs_of(rows: Sequence[dict] | Iterator[dict]) -> list[Run]:
    """Group labelled-frame rows into runs of one label and source."""
    runs: list[Run] = []
    total = 0.0
    for r in rows:
        last = runs[-1] if runs else None
        if last is not None and last.label == r["label"] and last.source == r["source"]:
            last.end_frame = r["frame_index"]
            last.frames += 1
            total += r["confidence"]
            last.confidence = total / last.frames
        else:
            total = float(r["confidence"])
            runs.append(Run(r["frame_index"], r["frame_index"], r["label"], r["source"],
                            total, 1))
    return runs


#: Columns of the timeline table (the Slicer module's whole-procedure review).
TIMELINE_COLUMNS = ("run", "start_s", "end_s", "label", "confidence", "source", "frames",
                    "reviewed_label", "status")
REVIEWED = "reviewed"


def timeline_rows(runs: Sequence[Run], fps: float, stride: int,
                  reviewed: Optional[dict] = None) -> list[list[str]]:
    """One row of :data:`TIMELINE_COLUMNS` per run (``reviewed``: run -> label)."""
    reviewed = reviewed or {}
    rows = []
    for k, r in enumerate(runs):
        rev = reviewed.get(k, "")
        status = "" if not rev else "accepted" if rev == r.label else "corrected"
        rows.append([str(k), f"{r.start_s(fps):.3f}", f"{r.end_s(fps, stride):.3f}", r.label,
                     f"{r.confidence:.3f}", r.source, str(r.frames), rev, status])
    return rows


def reviewed_rows(rows: Sequence[dict], runs: Sequence[Run], reviewed: dict) -> list[dict]:
    """``rows`` (of :meth:`WholeResult.rows`) with each reviewed run's frames set to its
    reviewed label (confidence 1, source ``reviewed``)."""
    out = [dict(r) for r in rows]
    starts = [r.start_frame for r in runs]
    for r in out:
        k = bisect.bisect_right(starts, r["frame_index"]) - 1
        if k >= 0 and k in reviewed and r["frame_index"] <= runs[k].end_frame:
            r["label"], r["confidence"], r["source"] = reviewed[k], 1.0, REVIEWED
            r["needs_review"] = False
    return out


__all__ = ["NONE", "Run", "runs_of", "TIMELINE_COLUMNS", "REVIEWED", "timeline_rows",
           "reviewed_rows"]
