"""What a window's Grad-CAM heat map shows the clinician: the display map, its transparency
threshold and the evidence region (docs/evidence.md says what they are and why).

Grad-CAM (:mod:`.explain`) gives a map on the last image-branch convolution, a few cells
wide, ReLU'd and divided by its maximum.  Upsampled to the frame it is smooth and, on trained
models, positive almost everywhere: the share of each cell in the decision, not a segmentation.
Two choices turn it into something a reader can use:

- **Display map** (``cam.seq.nrrd``, the heat-map layer): the map stretched per window so its
  lowest value is 0 and its peak 1 (:func:`display_map`).  A map that never reaches 0 otherwise
  keeps a floor of "evidence" everywhere; after the stretch :data:`DISPLAY_THRESHOLD` is a
  fraction of the window's own range, and values below it are transparent.
- **Evidence region** (``landmarks.seq.nrrd``, the module's segmentation): the connected
  part of the display map around the peak where the map is at least half its range
  (:data:`REGION_THRESHOLD`, Grad-CAM's usual half-maximum) and among the strongest
  :data:`REGION_MAX_FRACTION` of the frame's pixels (:func:`evidence_region`).  One compact
  blob around the strongest evidence: a sharp map is cut at its half-maximum, a broad one (a
  coarse last layer, or a model that looks everywhere) at its strongest tenth, instead of
  covering most of the frame.

One implementation for the command line and the 3D Slicer module.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

#: Display-map values below this are transparent in the heat-map layer (fraction of the
#: window's own range, see :func:`display_map`).
DISPLAY_THRESHOLD = 0.5
#: The evidence region: the display map at or above this (fraction of the window's range) ...
REGION_THRESHOLD = 0.5
#: ... and within this share of the frame's strongest pixels, connected to the peak.
REGION_MAX_FRACTION = 0.1


def display_map(cam: np.ndarray) -> np.ndarray:
    """A heat map stretched to its own range: ``(cam - min) / (max - min)`` in 0-1 (float32;
    all zeros for a flat map).  The peak stays where it was."""
    m = np.asarray(cam, dtype=np.float32)
    if m.size == 0:
        return m.copy()
    lo, hi = float(m.min()), float(m.max())
    if not hi > lo:
        return np.zeros_like(m)
    return ((m - lo) / (hi - lo)).astype(np.float32)


def peak_of(m: np.ndarray) -> tuple[int, int]:
    """(column, row) of a map's maximum (the first one in row order)."""
    row, col = np.unravel_index(int(np.argmax(m)), m.shape)
    return int(col), int(row)


def evidence_region(cam: np.ndarray, threshold: float = REGION_THRESHOLD,
                    peak: Optional[tuple[int, int]] = None,
                    max_fraction: float = REGION_MAX_FRACTION) -> np.ndarray:
    """The evidence region of a heat map: the 8-connected component that contains the peak of
    the pixels where ``display_map(cam)`` is at least ``threshold`` and at least its
    ``1 - max_fraction`` quantile (bool, the map's shape; empty for a flat map).

    Args:
        cam: the heat map (any range; it is stretched with :func:`display_map`).
        threshold: the lowest level, as a fraction of the map's range (0-1].
        peak: (column, row) to grow from (default: the map's maximum).
        max_fraction: the region keeps to this share of the strongest pixels (0-1]; 1 turns
            the cap off.
    """
    # deferred: scipy is not bundled with 3D Slicer, which imports this module's thresholds
    # when the module loads (before the packages of requirements.txt are installed)
    from scipy import ndimage

    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"region threshold must lie in (0, 1], not {threshold}")
    if not 0.0 < max_fraction <= 1.0:
        raise ValueError(f"region share of the frame must lie in (0, 1], not {max_fraction}")
    m = display_map(cam)
    if m.size == 0 or not m.any():
        return np.zeros(m.shape, bool)
    col, row = peak if peak is not None else peak_of(m)
    level = max(threshold, float(np.quantile(m, 1.0 - max_fraction)))
    mask = m >= level
    if not mask[row, col]:
        return np.zeros(m.shape, bool)
    labels, _ = ndimage.label(mask, structure=np.ones((3, 3), bool))
    return labels == labels[row, col]
