"""Files that 3D Slicer opens natively, written without Slicer (their layout:
docs/contracts.md, "Outputs").

- Volume sequences (``.seq.nrrd``, Slicer 5.10+ layout): 4-D, ``kinds: domain domain domain
  list``, sizes ``W H 1 N``, time index values in seconds on the last axis, LPS space.  Small
  sequences are written with :mod:`slicerio`; long ones stream frame by frame through
  :class:`SequenceStreamWriter` (no library writes a NRRD incrementally, and a procedure's
  frames do not fit in memory).  A 2-D frame is a one-slice volume whose columns run towards
  left and rows towards posterior (IJK-to-RAS ``diag(-sx, -sy, 1)``, Slicer's DICOM-cine
  convention), so frames appear upright in the axial view.
- Colour tables (``.csv``: ``LabelValue,Name,Color_R,Color_G,Color_B,Color_A``, 0-255).
- Markups point lists (``.mrk.json``, schema v1.0.3).
- Point-list sequences (``.seq.mrb``, :func:`write_point_sequence`): one point list per index
  value, so that a sequence browser shows each window's point only while its window plays.
- Text sequences (``.seq.mrb``, :func:`write_text_sequence`): one text node per index value,
  the label of each frame of a whole-procedure run.
"""

from __future__ import annotations

import io
import json
import os
import re
import tempfile
import xml.etree.ElementTree as ET
import zipfile
import zlib
from pathlib import Path
from typing import Iterable, Optional, Sequence
from xml.sax.saxutils import quoteattr

import numpy as np

from ..core.fileio import atomic_path

SCALAR_NODE = "vtkMRMLScalarVolumeNode"
LABELMAP_NODE = "vtkMRMLLabelMapVolumeNode"


def frame_geometry(spacing_mm: Optional[tuple[float, float]] = None,
                   size: Optional[tuple[int, int]] = None) -> np.ndarray:
    """The ijkToLPS matrix shared by every frame: column i -> L, row j -> P, slice k -> S.

    With ``size`` = (W, H) the frame is centred on the origin, where Slicer's slice views look
    by default.
    """
    sx, sy = spacing_mm or (1.0, 1.0)
    m = np.eye(4)
    m[0, 0], m[1, 1], m[2, 2] = sx, sy, 1.0
    if size is not None:
        m[0, 3] = -(size[0] - 1) / 2.0 * sx
        m[1, 3] = -(size[1] - 1) / 2.0 * sy
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
    import slicerio  # deferred: requirements.txt, not bundled with Slicer

    frames = np.asarray(frames)
    if frames.ndim != 3 or len(frames) != len(times):
        raise ValueError(f"expected (N, H, W) frames and N times, got {frames.shape} and "
                         f"{len(times)}")
    geometry = frame_geometry(spacing_mm, (frames.shape[2], frames.shape[1]))
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


_NRRD_TYPES = {"uint8": "uint8", "uint16": "uint16", "float32": "float"}


def _nrrd_vector(values: Sequence[float]) -> str:
    return "(" + ",".join(f"{float(v):.10g}" for v in values) + ")"


class SequenceStreamWriter:
    """Write a ``.seq.nrrd`` one frame at a time (gzip-compressed, atomic on close).

    The number of frames and their times are fixed up front (they go in the header); frames
    arrive in order through :meth:`add`.  NRRD stores the fastest axis first, so with sizes
    ``W H 1 N`` each frame is simply its rows one after another.
    """

    def __init__(self, path: os.PathLike | str, width: int, height: int,
                 times: Sequence[float], dtype: str = "uint8",
                 spacing_mm: Optional[tuple[float, float]] = None,
                 node_class: str = SCALAR_NODE, compression_level: int = 1):
        if dtype not in _NRRD_TYPES:
            raise ValueError("dtype must be uint8, uint16 or float32")
        self.path = Path(path)
        self.width, self.height = int(width), int(height)
        self.times = [float(t) for t in times]
        self.dtype = np.dtype(dtype)
        self.count = 0
        geometry = frame_geometry(spacing_mm, (self.width, self.height))
        header = [
            "NRRD0004",
            "# Complete NRRD file format specification at:",
            "# http://teem.sourceforge.net/nrrd/format.html",
            f"type: {_NRRD_TYPES[dtype]}",
            "dimension: 4",
            "space: left-posterior-superior",
            f"sizes: {self.width} {self.height} 1 {len(self.times)}",
            "space directions: " + " ".join(_nrrd_vector(geometry[:3, i]) for i in range(3))
            + " none",
            "kinds: domain domain domain list",
            'labels: "" "" "" "time"',
            'units: "" "" "" "s"',
            "endian: little",
            "encoding: gzip",
            "space origin: " + _nrrd_vector(geometry[:3, 3]),
            "axis 3 index type:=numeric",
            "axis 3 index values:=" + " ".join(f"{t:.6g}" for t in self.times),
            f"DataNodeClassName:={node_class}",
        ]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".part.seq.nrrd",
                                   dir=self.path.parent)
        self._tmp = Path(tmp)
        self._fh = os.fdopen(fd, "wb")
        self._fh.write(("\n".join(header) + "\n\n").encode("ascii"))
        self._z = zlib.compressobj(compression_level, zlib.DEFLATED, 31)  # gzip container

    def add(self, frame: np.ndarray) -> None:
        """Append the next (H, W) frame."""
        frame = np.asarray(frame)
        if frame.shape != (self.height, self.width):
            raise ValueError(f"frame shape {frame.shape} != {(self.height, self.width)}")
        if self.count >= len(self.times):
            raise ValueError("more frames than announced")
        data = np.ascontiguousarray(frame, dtype=self.dtype.newbyteorder("<"))
        self._fh.write(self._z.compress(data.tobytes()))
        self.count += 1

    def close(self) -> Path:
        """Finish the file and move it into place (all announced frames must be written)."""
        if self.count != len(self.times):
            self.abort()
            raise ValueError(f"{self.count} frames written, {len(self.times)} announced")
        self._fh.write(self._z.flush())
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Drop the partial file (the destination is untouched)."""
        if not self._fh.closed:
            self._fh.close()
        self._tmp.unlink(missing_ok=True)


def color_table_csv(labels: Sequence[tuple[int, str, tuple[float, float, float]]]) -> str:
    """Slicer colour-table CSV text for (label value, name, 0-1 RGB) entries."""
    lines = ["LabelValue,Name,Color_R,Color_G,Color_B,Color_A"]
    for value, name, rgb in labels:
        name = re.sub(r'[\x00-\x1f\x7f,"]', " ", name)  # one CSV cell on one line
        r, g, b = (int(round(255 * min(max(c, 0.0), 1.0))) for c in rgb)
        lines.append(f"{int(value)},{name},{r},{g},{b},255")
    return "\n".join(lines) + "\n"


MARKUPS_SCHEMA = ("https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/"
                  "Markups/Resources/Schema/markups-schema-v1.0.3.json#")


#: Colours of the landmark points: a window's point in :data:`POINT_COLOR`, and in
#: :data:`REVIEW_POINT_COLOR` when the window needs review (such points are written selected,
#: and Slicer draws selected control points in the list's selected colour).
POINT_COLOR = (1.0, 0.5, 0.5)
REVIEW_POINT_COLOR = (1.0, 0.8, 0.0)


def markups_points_json(name: str, points: Sequence[dict],
                        color: tuple[float, float, float] = POINT_COLOR,
                        review_color: tuple[float, float, float] = REVIEW_POINT_COLOR) -> str:
    """A ``.mrk.json`` point list.  Each point: ``position`` (LPS mm), ``label``,
    ``description`` and optionally ``review`` (True: written selected, drawn in
    ``review_color``; the others in ``color``); all are defined, locked points."""
    control_points = []
    for i, p in enumerate(points, start=1):
        control_points.append({
            "id": str(i), "label": str(p["label"]), "description": str(p.get("description", "")),
            "associatedNodeID": "", "position": [float(v) for v in p["position"]],
            "orientation": [-1.0, -0.0, -0.0, -0.0, -1.0, -0.0, 0.0, 0.0, 1.0],
            "selected": bool(p.get("review", False)), "locked": True, "visibility": True,
            "positionStatus": "defined"})
    doc = {"@schema": MARKUPS_SCHEMA, "markups": [{
        "type": "Fiducial", "name": name, "coordinateSystem": "LPS", "coordinateUnits": "mm",
        "locked": True, "fixedNumberOfControlPoints": False, "labelFormat": "%N-%d",
        "lastUsedControlPointNumber": len(control_points), "controlPoints": control_points,
        "measurements": [],
        "display": {"visibility": True, "opacity": 1.0, "color": list(color),
                    "selectedColor": list(review_color), "activeColor": [0.4, 1.0, 0.0],
                    "propertiesLabelVisibility": False, "pointLabelsVisibility": True,
                    "textScale": 3.0, "glyphType": "Sphere3D", "glyphScale": 1.5,
                    "glyphSize": 5.0, "useGlyphScale": True, "sliceProjection": False,
                    "lineThickness": 0.2, "handlesInteractive": False,
                    "snapMode": "toVisibleSurface"}}]}
    return json.dumps(doc, indent=2) + "\n"


def write_point_sequence(path: os.PathLike | str, items: Sequence[tuple[float, Sequence[dict]]],
                         name: str = "EUS landmark points") -> Path:
    """Write a sequence of markups point lists as a ``.seq.mrb`` (atomically).

    ``items`` are (time in s, points) in increasing time; each point as in
    :func:`markups_points_json`.  An item with no point hides the points from its time on.

    The layout is the one ``vtkMRMLSequenceStorageNode`` writes and reads: a zip holding
    ``<name>.seq/<name>.mrml`` (one ``MarkupsFiducial`` node per item with its
    ``MarkupsJsonStorage`` node, and the singleton ``Sequence`` node ``SequenceIndex`` whose
    ``indexValues`` map each item node id to its index value) and the point lists under
    ``<name>.seq/Data/``.
    """
    path = Path(path)
    stem = path.name[:-len(".seq.mrb")] if path.name.endswith(".seq.mrb") else path.stem
    root = ET.Element("MRML", {"version": "Slicer 5.10.0 0"})
    files: dict[str, str] = {}
    index_values = []
    previous = None
    for k, (time_s, points) in enumerate(items):
        if previous is not None and time_s <= previous:
            raise ValueError("point sequence times must increase")
        previous = time_s
        node_id, storage_id = f"vtkMRMLMarkupsFiducialNode{k + 1}", \
            f"vtkMRMLMarkupsJsonStorageNode{k + 1}"
        data_name = f"Data/{stem}_{k}.mrk.json"
        files[f"{stem}.seq/{data_name}"] = markups_points_json(name, points)
        ET.SubElement(root, "MarkupsFiducial", {
            "id": node_id, "name": name, "attributes": f"Sequences.BaseName:{name}",
            "references": f"storage:{storage_id};"})
        ET.SubElement(root, "MarkupsJsonStorage", {
            "id": storage_id, "name": "MarkupsJsonStorage", "fileName": data_name,
            "coordinateSystem": "LPS"})
        index_values.append(f"{node_id}:{float(time_s):.6g}")
    ET.SubElement(root, "Sequence", {
        "id": "vtkMRMLSequenceNodeSequenceIndex", "name": "Sequence",
        "singletonTag": "SequenceIndex", "indexName": "time", "indexUnit": "s",
        "indexType": "numeric", "indexValues": ";".join(index_values)})
    ET.indent(root, space=" ")
    files[f"{stem}.seq/{stem}.mrml"] = ('<?xml version="1.0" encoding="UTF-8"?>\n'
                                        + ET.tostring(root, encoding="unicode") + "\n")
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
            for member, text in files.items():
                zf.writestr(member, text)
    return path


def write_text_sequence(path: os.PathLike | str, items: Iterable[tuple[float, str]],
                        name: str = "EUS frame labels") -> Path:
    """Write a sequence of text nodes as a ``.seq.mrb`` (atomically), streamed item by item.

    ``items`` are (time in s, text) in increasing time.  Same layout as
    :func:`write_point_sequence`; a text node keeps its text in the scene file itself
    (``vtkMRMLTextNode`` writes ``text`` and ``encoding`` attributes and needs no storage node
    for short texts), so the bundle holds one ``.mrml`` file.
    """
    path = Path(path)
    stem = path.name[:-len(".seq.mrb")] if path.name.endswith(".seq.mrb") else path.stem
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
            with zf.open(f"{stem}.seq/{stem}.mrml", "w") as raw:
                out = io.TextIOWrapper(raw, encoding="utf-8", newline="\n")
                out.write('<?xml version="1.0" encoding="UTF-8"?>\n'
                          '<MRML version="Slicer 5.10.0 0">\n')
                index_values = []
                previous = None
                for k, (time_s, text) in enumerate(items):
                    if previous is not None and time_s <= previous:
                        raise ValueError("text sequence times must increase")
                    previous = time_s
                    node_id = f"vtkMRMLTextNode{k + 1}"
                    out.write(f' <Text id="{node_id}" name={quoteattr(name)} '
                              f'attributes={quoteattr("Sequences.BaseName:" + name)} '
                              f'text={quoteattr(text)} encoding="1" />\n')
                    index_values.append(f"{node_id}:{float(time_s):.6g}")
                out.write(' <Sequence id="vtkMRMLSequenceNodeSequenceIndex" name="Sequence" '
                          'singletonTag="SequenceIndex" indexName="time" indexUnit="s" '
                          f'indexType="numeric" indexValues="{";".join(index_values)}" />\n'
                          '</MRML>\n')
                out.flush()
                out.detach()
    return path
