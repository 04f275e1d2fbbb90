"""Files that 3D Slicer opens natively, written without Slicer (SPEC §4).

- Volume sequences (``.seq.nrrd``, Slicer 5.10+ layout): 4-D, ``kinds: domain domain domain
  list``, sizes ``W H 1 N``, time index values in seconds on the last axis, LPS space, written
  with :mod:`slicerio`.  A 2-D frame is a one-slice volume whose rows run towards posterior and
  columns towards left, so frames appear upright in Slicer's axial view.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .fileio import atomic_path

SCALAR_NODE = "vtkMRMLScalarVolumeNode"
LABELMAP_NODE = "vtkMRMLLabelMapVolumeNode"


def frame_geometry(spacing_mm: Optional[tuple[float, float]] = None,
                   origin_lps: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> np.ndarray:
    """The ijkToLPS matrix shared by every frame: column i -> L, row j -> P, slice k -> S."""
    sx, sy = spacing_mm or (1.0, 1.0)
    m = np.eye(4)
    m[0, 0], m[1, 1], m[2, 2] = sx, sy, 1.0
    m[:3, 3] = origin_lps
    return m


def pixel_to_lps(col: float, row: float, geometry: np.ndarray) -> list[float]:
    """Physical LPS position of a pixel centre (column, row) of a frame."""
    return [float(v) for v in (geometry @ np.array([col, row, 0.0, 1.0]))[:3]]


def write_frame_sequence(path: os.PathLike | str, frames: np.ndarray, times: Sequence[float],
                         spacing_mm: Optional[tuple[float, float]] = None,
                         node_class: str = SCALAR_NODE, compression_level: int = 1,
                         extra: Optional[dict] = None) -> Path:
    """Write frames (N, H, W) as a Slicer volume sequence with time index values (s).

    Written atomically; every frame shares one geometry (see :func:`frame_geometry`).
    """
    import slicerio

    frames = np.asarray(frames)
    if frames.ndim != 3 or len(frames) != len(times):
        raise ValueError(f"expected (N, H, W) frames and N times, got {frames.shape} and "
                         f"{len(times)}")
    geometry = frame_geometry(spacing_mm)
    # slicerio volumes are (i, j, k) = (column, row, slice).
    volumes = [{"voxels": np.ascontiguousarray(f.T)[..., None], "ijkToLPS": geometry}
               for f in frames]
    seq = slicerio.create_sequence(volumes, index_values=[f"{t:.6g}" for t in times],
                                   index_name="time", index_unit="s", index_type="numeric")
    seq["DataNodeClassName"] = node_class
    for key, value in (extra or {}).items():
        seq[key] = value
    path = Path(path)
    with atomic_path(path) as tmp:
        slicerio.write_volume(str(tmp), seq, compression_level=compression_level)
    return path
