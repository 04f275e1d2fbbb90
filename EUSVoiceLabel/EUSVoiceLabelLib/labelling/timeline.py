"""The timeline picture of a whole-procedure run (``timeline.png``): the label of every frame
against time, one row per landmark and one for ``none``, each run of frames drawn in its
landmark's colour with its confidence as the opacity, spoken windows outlined, mentions marked
above, and the confidence as a curve below.  Optionally a reference row (what was in view, for
synthetic cohorts) for reports.  Drawn from runs, so its cost does not grow with the frames."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..core.fileio import atomic_path
from ..data.vocabulary import LabelSet
from .runs import Run
from .whole import NONE, SPOKEN

NONE_COLOR = (0.55, 0.55, 0.55)


def write_timeline_png(path: os.PathLike | str, runs: Sequence[Run], labelset: LabelSet,
                       fps: float, stride: int = 1,
                       mentions: Sequence[tuple[float, str]] = (),
                       confidence: Optional[tuple[np.ndarray, np.ndarray]] = None,
                       title: str = "", reference: Sequence[tuple[float, float, str]] = ()
                       ) -> Path:
    """Draw the timeline into ``path`` (PNG, atomically).

    Args:
        runs: the runs of labelled frames (:func:`.runs.runs_of`).
        mentions: (time_s, label id) of the spoken mentions.
        confidence: (times_s, confidence) for the curve (subsample long runs freely).
        reference: (start_s, end_s, label id) segments drawn as a "reference" row.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    ids = list(labelset.ids)
    rows = ids + [NONE]
    names = [lab.name for lab in labelset.labels] + ["none"]
    colors = {lab.id: tuple(lab.color) for lab in labelset.labels}
    colors[NONE] = NONE_COLOR
    end_s = max([r.end_s(fps, stride) for r in runs] + [1.0])
    minutes = end_s > 180
    scale = 60.0 if minutes else 1.0
    n_rows = len(rows) + (1 if reference else 0)
    fig, (ax, axc) = plt.subplots(2, 1, figsize=(12, 1.0 + 0.42 * n_rows + 1.3), sharex=True,
                                  gridspec_kw={"height_ratios": [n_rows, 1.6]})
    for r in runs:
        y = rows.index(r.label) if r.label in rows else len(ids)
        x0, x1 = r.start_s(fps) / scale, r.end_s(fps, stride) / scale
        alpha = float(np.clip(0.15 + 0.85 * r.confidence, 0.15, 1.0))
        ax.add_patch(Rectangle((x0, y - 0.4), x1 - x0, 0.8, facecolor=colors.get(r.label),
                               alpha=alpha, linewidth=0))
        if r.source == SPOKEN:
            ax.add_patch(Rectangle((x0, y - 0.4), x1 - x0, 0.8, fill=False,
                                   edgecolor="black", linewidth=0.8))
    labels_y = list(names)
    if reference:
        y = len(rows)
        for t0, t1, lab in reference:
            ax.add_patch(Rectangle((t0 / scale, y - 0.4), (t1 - t0) / scale, 0.8,
                                   facecolor=colors.get(lab, NONE_COLOR), linewidth=0))
        labels_y.append("in view (reference)")
    for t, lab in mentions:
        ax.plot([t / scale], [-0.9], marker="v", markersize=6,
                color=colors.get(lab, NONE_COLOR), markeredgecolor="black",
                markeredgewidth=0.5, linestyle="none")
    ax.set_ylim(n_rows - 0.5, -1.3)
    ax.set_yticks(range(n_rows))
    ax.set_yticklabels(labels_y, fontsize=8)
    ax.set_xlim(0, end_s / scale)
    ax.set_title(title or "landmark per frame (opacity: confidence; outlined: spoken window; "
                 "triangles: mentions)", fontsize=9)
    if confidence is not None:
        t, c = confidence
        axc.plot(np.asarray(t) / scale, c, linewidth=0.6, color="black")
    axc.set_ylim(0, 1.02)
    axc.set_ylabel("confidence", fontsize=8)
    axc.set_xlabel("time (min)" if minutes else "time (s)", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


__all__ = ["write_timeline_png"]
