"""What the labelled procedure shows over its frames, per window, decided without Slicer.

A labelling run gives each mention window a label (the network's prediction fused with what
was said, :mod:`..labelling.fusion`), a heat map, an evidence region and a peak point.  In 3D Slicer they become sequences synchronised with the frames' browser
(the module's ``label`` outputs) or files next to ``scene.mrml`` (the command line's outputs);
both show the same thing, decided here:

- :func:`window_text`: the text shown for a window ("Pancreas (0.99) - said: Pancreas -
  network: Bile duct - review").
- :func:`window_point`: the window's peak point as a markups control point (label, description).
- :func:`overlay_items`: where the per-window output sequences need items (a window's outputs at
  its first frame, blank ones where it ends), with what each item shows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Sequence

from ..data.vocabulary import LabelSet
from .support import overlay_timeline

if TYPE_CHECKING:  # the labelling run needs torch; only its types are used here
    from ..labelling.run import LabelResult, WindowResult


def window_text(win: "WindowResult", labelset: LabelSet, reviewed: Optional[str] = None) -> str:
    """The label shown over a window's frames: the window's (fused) landmark and its
    confidence, what was said, the network's label where it differs, the review flag and the
    reviewed label."""
    text = f"{labelset.get(win.label).name} ({win.label_confidence:.2f})"
    if win.spoken_label:
        text += f" - said: {labelset.get(win.spoken_label).name}"
    if win.predicted != win.label:
        text += f" - network: {labelset.get(win.predicted).name}"
    if win.needs_review and not reviewed:
        text += " - review"
    if reviewed:
        text += f" - reviewed: {labelset.get(reviewed).name}"
    return text


def window_point(win: "WindowResult", labelset: LabelSet) -> Optional[dict]:
    """The window's heat-map peak as a control point: ``col``, ``row`` (pixel of the cropped
    frame), ``label`` (landmark and confidence, shown next to the point) and ``description``
    (window, time, confidence of its label, what was said, the network's label where it
    differs, the review flag), ``review`` (the window needs review: the point is written
    *selected*, so Slicer draws it in the list's selected colour,
    :data:`~.files.REVIEW_POINT_COLOR`); None for a window without a heat map.  The label is
    the window's fused one."""
    if win.peak is None:
        return None
    description = (f"window {win.index}, t={win.time_s:.2f} s, "
                   f"confidence {win.label_confidence:.2f}")
    if win.spoken_label:
        description += f", said: {labelset.get(win.spoken_label).name}"
    if win.predicted != win.label:
        description += (f", network: {labelset.get(win.predicted).name} "
                        f"({win.confidence:.2f})")
    if win.needs_review:
        description += f", review: {win.review_reason}"
    return {"col": int(win.peak[0]), "row": int(win.peak[1]),
            "label": f"{labelset.get(win.label).name} {win.label_confidence:.2f}",
            "description": description, "review": bool(win.needs_review)}


@dataclass(frozen=True)
class OverlayItem:
    """One item of the per-window output sequences: from master item ``item`` on, show
    ``window`` (None: nothing)."""

    item: int
    window: Optional["WindowResult"]


def overlay_items(result: "LabelResult", master_times: Sequence[float]) -> list[OverlayItem]:
    """The items of the per-window output sequences (text, heat map, evidence, point) of a
    labelling run shown on a sequence whose items are at ``master_times`` (s); see
    :func:`~.support.overlay_timeline`."""
    proc = result.procedure
    frames = len(result.windows[0].frame_indices) if result.windows else 0
    spans = [(w.time_s, w.time_s + frames / proc.fps) for w in result.windows]
    return [OverlayItem(t.item, None if t.window is None else result.windows[t.window])
            for t in overlay_timeline(spans, master_times)]
