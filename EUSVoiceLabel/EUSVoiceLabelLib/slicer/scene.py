"""A small hand-written MRML scene (``scene.mrml``) that opens a labelled procedure in 3D Slicer.

Dropping ``scene.mrml`` on Slicer (5.10+) loads, in one step: the frames volume sequence, the
Grad-CAM heat-map sequence and the landmark labelmap sequence, all three played by ONE sequence
browser (frames = master, playback rate = the video frame rate); the heat map shown over the
frames as the foreground layer of the slice views (Inferno colours, fixed 0-1 window, values
below a threshold transparent); the landmark labelmap as the label layer, coloured and named by
``landmarks.csv``; and the landmark point list ``landmarks.mrk.json``.  The scene only points at
those files by paths relative to itself (they lie next to it), so the output folder can be moved
or zipped.  Every file also loads on its own; the scene is a convenience.

Nothing here runs Slicer.  The XML was written from Slicer's source (github.com/Slicer/Slicer,
main of Aug 2026), file by file:

Element names and common attributes
    Each element is a node's ``GetNodeTagName()``; ``vtkMRMLParser::StartElement``
    (``Libs/MRML/Core/vtkMRMLParser.cxx``) turns it back into a class through the scene's
    registered tags (``vtkMRMLScene.cxx`` registers all classes used here except
    ``vtkMRMLSequenceBrowserNode``, registered by ``vtkSlicerSequencesLogic::RegisterNodes``, and
    ``vtkMRMLMarkupsJsonStorageNode``, registered by ``vtkSlicerMarkupsLogic``).  Tags used:
    ``Sequence``/``VolumeSequenceStorage`` (``vtkMRMLSequenceNode.h``,
    ``vtkMRMLVolumeSequenceStorageNode.h``), ``SequenceBrowser``
    (``Modules/Loadable/Sequences/MRML/vtkMRMLSequenceBrowserNode.h``), ``Volume``/``VolumeDisplay``
    (``vtkMRMLScalarVolumeNode.h``, ``vtkMRMLScalarVolumeDisplayNode.h``), ``LabelMapVolume``/
    ``LabelMapVolumeDisplay``, ``ColorTable``/``ColorTableStorage``, ``SliceComposite``,
    ``MarkupsFiducial``/``MarkupsFiducialDisplay`` (``Libs/MRML/Core``) and
    ``MarkupsJsonStorage`` (``Modules/Loadable/Markups/MRML/vtkMRMLMarkupsJsonStorageNode.h``).
    ``vtkMRMLNode::ReadXMLAttributes`` (``vtkMRMLNode.cxx``) reads ``id``, ``name`` and node
    references as ``references="role1:id1 id2;role2:id3;"`` (the form ``WriteXML`` writes).  Roles:
    ``display`` and ``storage`` (``vtkMRMLDisplayableNode.cxx``, ``vtkMRMLStorableNode.cxx``),
    ``backgroundVolume``/``foregroundVolume``/``labelVolume`` (``vtkMRMLSliceCompositeNode.cxx``).
    A display node's colour table is the plain attribute ``colorNodeID``
    (``vtkMRMLDisplayNode.cxx``).

File names
    ``vtkMRMLStorageNode::ReadXMLAttributes`` URL-decodes ``fileName`` (``%``, space, quotes,
    ``<``, ``>``; ``vtkMRMLNode::URLDecodeString``) and resolves a relative name against the
    scene's root directory, the folder of the ``.mrml`` file (``vtkMRMLScene::LoadIntoScene``).

Sequences
    A ``Sequence`` with a ``VolumeSequenceStorage`` storage node is filled by
    ``vtkMRMLVolumeSequenceStorageNode::ReadDataInternal`` from the ``.seq.nrrd`` (index values,
    index name/unit and item class ``DataNodeClassName``), so no ``indexValues`` attribute is
    written (``vtkMRMLSequenceNode::ReadXMLAttributes`` would otherwise expect data node ids).

The browser
    ``vtkMRMLSequenceBrowserNode::ReadXMLAttributes`` reads ``virtualNodePostfixes`` (the
    synchronisation postfixes; the FIRST one is the master), one reference role
    ``sequenceNodeRef<postfix>`` per sequence, one ``dataNodeRef<postfix>`` per proxy node, and
    ``SynchronizationPropertiesMap<postfix>="playback true recording false overwriteProxyName
    false saveChanges false missingItemMode createFromPrevious"``, plus ``playbackRateFps``,
    ``playbackLooped``, ``selectedItemNumber`` ... .  Postfixes are written as Slicer generates
    them (``"0"``, ``"1"``, ...; ``GenerateSynchronizationPostfix``).

Why the proxy nodes are in the scene
    ``vtkSlicerSequencesLogic::UpdateProxyNodesFromSequences``
    (``Modules/Loadable/Sequences/Logic/vtkSlicerSequencesLogic.cxx``) reuses the proxy a browser
    references when its class matches the sequence item class, and only otherwise creates a new
    one with default display nodes (grey, auto window/level) under a generated id.  Writing the
    proxies (without storage nodes: they have no data of their own) is therefore the only way
    to give them our display nodes (Inferno heat map, landmark colours) and to name them in the
    slice composite nodes as foreground and label layers.  The proxy classes must match the
    sequences' ``DataNodeClassName`` (``vtkMRMLScalarVolumeNode`` = ``Volume`` for frames and
    heat maps, ``vtkMRMLLabelMapVolumeNode`` = ``LabelMapVolume`` for landmarks).

Why the browser says ``selectedItemNumber="-1"`` and the frames sequence comes last
    ``vtkMRMLScene::Import`` adds every node, then calls ``UpdateScene`` on each in file order,
    which is when sequences read their files.  The logic ignores ``SequenceNodeModifiedEvent``
    while the scene is importing (``vtkSlicerSequencesLogic::ProcessMRMLNodesEvents``), but not
    the browser's own ``ModifiedEvent``; and ``vtkMRMLSequenceBrowserNode::ProcessMRMLEvents``
    selects item 0 (modifying the browser) when the master sequence gains its first item while
    the selection is -1.  So with -1 and the master read after the other two sequences, the
    proxies are filled with the first frame, heat map and labelmap as soon as the frames
    arrive; with a stored selection of 0 nothing would update them until the user moved the
    slider.

Slice views
    ``vtkMRMLSliceCompositeNode::SetLayoutName`` is ``SetSingletonTag``
    (``vtkMRMLSliceCompositeNode.h``), so a ``SliceComposite`` with ``layoutName="Red"`` is a
    singleton: on import
    ``vtkMRMLScene::AddNodeNoNotify`` copies it (attributes and references) into the existing Red
    composite node instead of adding a second one.  The frames become the background, the heat
    map the foreground (``foregroundOpacity``) and the landmarks the label layer of the Red,
    Yellow and Green views, as Slicer itself does when it shows a volume.  Slice nodes (view
    position, field of view) are left alone: a partial ``Slice`` element would reset every
    other view setting (``vtkMRMLSliceNode::CopyContent``).  If the frames are off-centre, the
    slice view's "fit to window" button frames them.

Display settings
    ``vtkMRMLScalarVolumeDisplayNode::ReadXMLAttributes``: ``window``, ``level``,
    ``autoWindowLevel``, ``applyThreshold``, ``lowerThreshold``, ``upperThreshold``.  Voxels
    outside the threshold range are transparent in the slice views.  Frames use a fixed
    0-255 window (uint8 frames) so the brightness does not jump from frame to frame.  Colour
    ids of Slicer's built-in tables follow ``vtkMRMLColorLogic`` (``vtkMRMLColorTableNodeGrey``,
    ``vtkMRMLColorTableNodeFileInferno.txt`` from ``Base/Logic/Resources/ColorFiles/Inferno.txt``,
    ``vtkMRMLProceduralColorNodeRandomIntegers`` = ``GetDefaultLabelMapColorNodeID``).
    ``vtkMRMLColorTableStorageNode`` reads the ``.csv`` colour table (``ReadCsvFile``) and sets
    the table's type to "File" because none is given.  The markups storage node does not apply
    the file's display settings when read from a scene (only
    ``vtkMRMLMarkupsJsonStorageNode::AddNewMarkupsNodeFromFile`` does), so the point list gets
    an explicit display node (with the colours of the point lists, see
    :data:`.files.REVIEW_POINT_COLOR`).

Importing into a scene that already has nodes with the same ids is safe: ``vtkMRMLScene::Import``
gives clashing nodes new ids and updates references and ``colorNodeID`` to match.
"""

from __future__ import annotations

import math
import os
import xml.etree.ElementTree as ET
from pathlib import Path, PurePosixPath
from typing import Optional, Sequence

from ..core.errors import ConfigError
from ..core.fileio import atomic_write_text
from ..core.paper import FPS
from ..nn.evidence import DISPLAY_THRESHOLD
from .files import POINT_COLOR, REVIEW_POINT_COLOR

#: Written as the scene's version (``vtkMRMLScene::ParseVersion`` "new style"); Slicer warns
#: when it loads a scene made for a newer version than itself.
SCENE_VERSION = "Slicer 5.10.0 0"

#: Built-in Slicer colour nodes (ids as ``vtkMRMLColorLogic`` builds them).
GREY_COLOR_ID = "vtkMRMLColorTableNodeGrey"
INFERNO_COLOR_ID = "vtkMRMLColorTableNodeFileInferno.txt"
DEFAULT_LABELMAP_COLOR_ID = "vtkMRMLProceduralColorNodeRandomIntegers"
BUILTIN_COLOR_IDS = frozenset({GREY_COLOR_ID, INFERNO_COLOR_ID, DEFAULT_LABELMAP_COLOR_ID})

#: Slice views that get the layers (the default layouts' view names).
SLICE_VIEWS = ("Red", "Yellow", "Green")
#: Heat map and labelmap drawn half-transparent so the anatomy stays visible underneath.
FOREGROUND_OPACITY = 0.5
LABEL_OPACITY = 0.5

# Every synchronised sequence plays back; proxies keep their names, nothing is recorded, and a
# sequence with no item at the master's time shows its previous item.
_SYNC_PROPERTIES = ("playback true recording false overwriteProxyName false saveChanges false "
                    "missingItemMode createFromPrevious")


def _url_encode(name: str) -> str:
    """Encode a file name the way ``vtkMRMLNode::URLEncodeString`` does (``%`` first)."""
    for char, code in (("%", "%25"), (" ", "%20"), ("'", "%27"), (">", "%3E"), ("<", "%3C"),
                       ('"', "%22")):
        name = name.replace(char, code)
    return name


def _browser_attributes(fps: float, postfixes: Sequence[str]) -> dict[str, str]:
    """The sequence browser's attributes: paused, looping at the procedure's rate, showing
    the first item, one proxy postfix per synchronised sequence."""
    return {"playbackActive": "false", "playbackRateFps": _format_number(fps),
            "playbackItemSkippingEnabled": "true", "playbackLooped": "true",
            "selectedItemNumber": "-1", "recordingActive": "false",
            "recordOnMasterModifiedOnly": "false", "indexDisplayFormat": "%.2f",
            "virtualNodePostfixes": " ".join(postfixes)}


def _relative_name(file: os.PathLike | str, scene_dir: Path) -> str:
    """The path of ``file`` relative to the scene folder, with forward slashes."""
    p = Path(file)
    if p.is_absolute():
        p = Path(os.path.relpath(p, scene_dir))
    text = PurePosixPath(*p.parts).as_posix()
    if not text or text == ".":
        raise ConfigError(f"empty file name for the scene ({file!r})", scene_dir)
    return text


def _format_number(value: float) -> str:
    """Shortest round-trip text of a number (``25.0`` -> ``25``)."""
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


def _references(roles: dict[str, list[str]]) -> str:
    """``references`` attribute value in ``vtkMRMLNode::WriteXML`` form: ``role:id1 id2;``."""
    return "".join(f"{role}:{' '.join(ids)};" for role, ids in roles.items() if ids)


class _Scene:
    """Collects MRML elements and hands out Slicer-style ids (class name + counter)."""

    def __init__(self) -> None:
        self.root = ET.Element("MRML", {"version": SCENE_VERSION})
        self._counters: dict[str, int] = {}

    def new_id(self, class_name: str) -> str:
        self._counters[class_name] = self._counters.get(class_name, 0) + 1
        return f"{class_name}{self._counters[class_name]}"

    def add(self, tag: str, node_id: str, name: Optional[str], attrs: dict[str, str],
            references: Optional[dict[str, list[str]]] = None) -> str:
        element = ET.SubElement(self.root, tag, {"id": node_id})
        if name is not None:
            element.set("name", name)
        for key, value in attrs.items():
            element.set(key, value)
        refs = _references(references or {})
        if refs:
            element.set("references", refs)
        return node_id

    def text(self) -> str:
        ET.indent(self.root, space="  ")
        return ('<?xml version="1.0" encoding="UTF-8"?>\n'
                + ET.tostring(self.root, encoding="unicode") + "\n")


def build_scene_mrml(scene_dir: os.PathLike | str, *, frames_seq: os.PathLike | str,
                     cam_seq: Optional[os.PathLike | str] = None,
                     landmarks_seq: Optional[os.PathLike | str] = None,
                     color_table: Optional[os.PathLike | str] = None,
                     points_seq: Optional[os.PathLike | str] = None, fps: float = FPS,
                     name: str = "EUS procedure",
                     cam_threshold: float = DISPLAY_THRESHOLD) -> str:
    """The text of ``scene.mrml`` for files in ``scene_dir`` (see :func:`write_scene_mrml`)."""
    scene_dir = Path(scene_dir)
    if frames_seq is None:
        raise ConfigError("the scene needs the frames sequence (it drives the browser)",
                          scene_dir)
    if not (math.isfinite(fps) and fps > 0):
        raise ConfigError(f"playback rate must be a positive number of frames per second, "
                          f"not {fps}", scene_dir)
    if not (math.isfinite(cam_threshold) and 0.0 <= cam_threshold < 1.0):
        raise ConfigError(f"heat-map display threshold must lie in [0, 1), not {cam_threshold}",
                          scene_dir)
    scene = _Scene()

    # Colour table for the landmark labels (read from the CSV; its type becomes "File").
    label_color_id = DEFAULT_LABELMAP_COLOR_ID
    if color_table is not None:
        storage_id = scene.add("ColorTableStorage", scene.new_id("vtkMRMLColorTableStorageNode"),
                               None, {"fileName": _url_encode(_relative_name(color_table,
                                                                             scene_dir))})
        label_color_id = scene.add("ColorTable", scene.new_id("vtkMRMLColorTableNode"),
                                   f"{name} landmark colours", {}, {"storage": [storage_id]})

    # Proxy nodes with their display nodes; the browser copies each item into them.
    frames_name = f"{name} frames"
    display_id = scene.add("VolumeDisplay", scene.new_id("vtkMRMLScalarVolumeDisplayNode"), None,
                           {"colorNodeID": GREY_COLOR_ID, "autoWindowLevel": "0",
                            "window": "255", "level": "127.5", "applyThreshold": "0",
                            "autoThreshold": "0"})
    frames_proxy = scene.add("Volume", scene.new_id("vtkMRMLScalarVolumeNode"), frames_name, {},
                             {"display": [display_id]})
    sequences: list[tuple[str, str, str]] = []  # (name, file, proxy id); master first
    sequences.append((frames_name, _relative_name(frames_seq, scene_dir), frames_proxy))

    cam_proxy = None
    if cam_seq is not None:
        cam_name = f"{name} heat map"
        display_id = scene.add("VolumeDisplay", scene.new_id("vtkMRMLScalarVolumeDisplayNode"),
                               None, {"colorNodeID": INFERNO_COLOR_ID, "autoWindowLevel": "0",
                                      "window": "1", "level": "0.5", "applyThreshold": "1",
                                      "autoThreshold": "0",
                                      "lowerThreshold": _format_number(cam_threshold),
                                      "upperThreshold": "1"})
        cam_proxy = scene.add("Volume", scene.new_id("vtkMRMLScalarVolumeNode"), cam_name, {},
                              {"display": [display_id]})
        sequences.append((cam_name, _relative_name(cam_seq, scene_dir), cam_proxy))

    label_proxy = None
    if landmarks_seq is not None:
        label_name = f"{name} landmarks"
        display_id = scene.add("LabelMapVolumeDisplay",
                               scene.new_id("vtkMRMLLabelMapVolumeDisplayNode"), None,
                               {"colorNodeID": label_color_id})
        label_proxy = scene.add("LabelMapVolume", scene.new_id("vtkMRMLLabelMapVolumeNode"),
                                label_name, {}, {"display": [display_id]})
        sequences.append((label_name, _relative_name(landmarks_seq, scene_dir), label_proxy))

    if points_seq is not None:
        # The current window's peak point (and its label) only: a point-list sequence.
        points_name = f"{name} landmark points"
        # vtkMRMLDisplayNode::ReadXMLAttributes: "color" / "selectedColor" as "r g b"; the
        # points of windows that need review are selected (review colour).
        display_id = scene.add("MarkupsFiducialDisplay",
                               scene.new_id("vtkMRMLMarkupsFiducialDisplayNode"), None,
                               {"color": " ".join(map(str, POINT_COLOR)),
                                "selectedColor": " ".join(map(str, REVIEW_POINT_COLOR))})
        points_proxy = scene.add("MarkupsFiducial", scene.new_id("vtkMRMLMarkupsFiducialNode"),
                                 points_name, {"locked": "true"}, {"display": [display_id]})
        sequences.append((points_name, _relative_name(points_seq, scene_dir), points_proxy))

    # Sequence ids are fixed before the browser is written; the sequence elements come after
    # it, master LAST (see the module docstring: the proxies fill when the master loads).
    sequence_ids = [scene.new_id("vtkMRMLSequenceNode") for _ in sequences]
    postfixes = [str(i) for i in range(len(sequences))]
    references: dict[str, list[str]] = {}
    attrs = _browser_attributes(fps, postfixes)
    for postfix, seq_id, (_, _, proxy_id) in zip(postfixes, sequence_ids, sequences):
        references[f"sequenceNodeRef{postfix}"] = [seq_id]
        references[f"dataNodeRef{postfix}"] = [proxy_id]
        attrs[f"SynchronizationPropertiesMap{postfix}"] = _SYNC_PROPERTIES
    scene.add("SequenceBrowser", scene.new_id("vtkMRMLSequenceBrowserNode"), name, attrs,
              references)

    order = list(range(1, len(sequences))) + [0]
    # .seq.nrrd: volume sequence storage; .seq.mrb (the point lists): generic sequence storage.
    storage_tags = {i: ("SequenceStorage", "vtkMRMLSequenceStorageNode")
                    if sequences[i][1].endswith(".seq.mrb")
                    else ("VolumeSequenceStorage", "vtkMRMLVolumeSequenceStorageNode")
                    for i in order}
    storage_ids = {i: scene.new_id(storage_tags[i][1]) for i in order}
    for i in order:
        seq_name, file_name, _ = sequences[i]
        scene.add(storage_tags[i][0], storage_ids[i], None,
                  {"fileName": _url_encode(file_name)})
        scene.add("Sequence", sequence_ids[i], seq_name,
                  {"indexName": "time", "indexUnit": "s", "indexType": "numeric"},
                  {"storage": [storage_ids[i]]})

    # Layers of the slice views (singleton composite nodes, updated in place on import).
    for view in SLICE_VIEWS:
        layer_refs = {"backgroundVolume": [frames_proxy]}
        if cam_proxy is not None:
            layer_refs["foregroundVolume"] = [cam_proxy]
        if label_proxy is not None:
            layer_refs["labelVolume"] = [label_proxy]
        scene.add("SliceComposite", f"vtkMRMLSliceCompositeNode{view}", None,
                  {"singletonTag": view, "layoutName": view,
                   "foregroundOpacity": _format_number(FOREGROUND_OPACITY),
                   "labelOpacity": _format_number(LABEL_OPACITY)}, layer_refs)

    return scene.text()


def write_scene_mrml(path: os.PathLike | str, *, frames_seq: os.PathLike | str = "frames.seq.nrrd",
                     cam_seq: Optional[os.PathLike | str] = "cam.seq.nrrd",
                     landmarks_seq: Optional[os.PathLike | str] = "landmarks.seq.nrrd",
                     color_table: Optional[os.PathLike | str] = "landmarks.csv",
                     points_seq: Optional[os.PathLike | str] = "landmark_points.seq.mrb",
                     fps: float = FPS, name: str = "EUS procedure",
                     cam_threshold: float = DISPLAY_THRESHOLD) -> Path:
    """Write ``scene.mrml`` (atomically) referencing the output files next to it.

    Args:
        path: the scene file to write; the other files are looked up relative to its folder.
        frames_seq: the frames volume sequence (required: it is the browser's master).
        cam_seq: Grad-CAM heat-map volume sequence (values 0-1), shown as the foreground layer.
        landmarks_seq: landmark labelmap sequence, shown as the label layer.
        color_table: Slicer colour-table CSV naming the landmark label values.
        points_seq: ``.seq.mrb`` sequence of point lists (each window's heat-map peak,
            shown only while its window plays).
        fps: playback rate of the sequence browser (frames per second).
        name: base name of the browser and of the nodes in Slicer.
        cam_threshold: heat-map values below this are transparent in the slice views.

    Any of ``cam_seq``, ``landmarks_seq``, ``color_table`` and ``points_seq`` may be None: its
    nodes are then left out.  File names may be relative (to the scene's folder) or absolute;
    the scene always stores them relative.  The files need not exist yet.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    text = build_scene_mrml(path.parent, frames_seq=frames_seq, cam_seq=cam_seq,
                            landmarks_seq=landmarks_seq, color_table=color_table,
                            points_seq=points_seq, fps=fps, name=name,
                            cam_threshold=cam_threshold)
    atomic_write_text(path, text)
    return path


def write_whole_scene_mrml(path: os.PathLike | str, *,
                           text_seq: os.PathLike | str = "whole_labels.seq.mrb",
                           frames_seq: Optional[os.PathLike | str] = None, fps: float = FPS,
                           name: str = "EUS procedure") -> Path:
    """Write ``whole.mrml`` (atomically): the whole-procedure label text sequence as the master
    of one sequence browser (so every item of the browser has its label), with a text proxy
    node, and optionally a frames sequence played along (an item per frame or fewer: a
    synchronised sequence shows its previous item, ``missingItemMode createFromPrevious``).
    Same element rules as :func:`build_scene_mrml`."""
    path = Path(path)
    scene_dir = path.parent
    if not (math.isfinite(fps) and fps > 0):
        raise ConfigError(f"playback rate must be a positive number, not {fps}", scene_dir)
    scene = _Scene()
    text_name = f"{name} frame labels"
    text_proxy = scene.add("Text", scene.new_id("vtkMRMLTextNode"), text_name,
                           {"text": "", "encoding": "1"})
    sequences = [(text_name, _relative_name(text_seq, scene_dir), text_proxy,
                  ("SequenceStorage", "vtkMRMLSequenceStorageNode"))]
    frames_proxy = None
    if frames_seq is not None:
        frames_name = f"{name} frames"
        display_id = scene.add("VolumeDisplay", scene.new_id("vtkMRMLScalarVolumeDisplayNode"),
                               None, {"colorNodeID": GREY_COLOR_ID, "autoWindowLevel": "0",
                                      "window": "255", "level": "127.5",
                                      "applyThreshold": "0", "autoThreshold": "0"})
        frames_proxy = scene.add("Volume", scene.new_id("vtkMRMLScalarVolumeNode"),
                                 frames_name, {}, {"display": [display_id]})
        sequences.append((frames_name, _relative_name(frames_seq, scene_dir), frames_proxy,
                          ("VolumeSequenceStorage", "vtkMRMLVolumeSequenceStorageNode")))
    sequence_ids = [scene.new_id("vtkMRMLSequenceNode") for _ in sequences]
    postfixes = [str(i) for i in range(len(sequences))]
    references: dict[str, list[str]] = {}
    attrs = _browser_attributes(fps, postfixes)
    for postfix, seq_id, (_, _, proxy_id, _) in zip(postfixes, sequence_ids, sequences):
        references[f"sequenceNodeRef{postfix}"] = [seq_id]
        references[f"dataNodeRef{postfix}"] = [proxy_id]
        attrs[f"SynchronizationPropertiesMap{postfix}"] = _SYNC_PROPERTIES
    scene.add("SequenceBrowser", scene.new_id("vtkMRMLSequenceBrowserNode"), f"{name} whole",
              attrs, references)
    for i in list(range(1, len(sequences))) + [0]:   # master last (see the module doc)
        seq_name, file_name, _, (tag, cls) = sequences[i]
        storage_id = scene.add(tag, scene.new_id(cls), None,
                               {"fileName": _url_encode(file_name)})
        scene.add("Sequence", sequence_ids[i], seq_name,
                  {"indexName": "time", "indexUnit": "s", "indexType": "numeric"},
                  {"storage": [storage_id]})
    if frames_proxy is not None:
        for view in SLICE_VIEWS:
            scene.add("SliceComposite", f"vtkMRMLSliceCompositeNode{view}", None,
                      {"singletonTag": view, "layoutName": view},
                      {"backgroundVolume": [frames_proxy]})
    atomic_write_text(path, scene.text())
    return path
