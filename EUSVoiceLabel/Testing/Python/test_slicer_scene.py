"""scene.mrml: well-formed MRML whose references, files and browser wiring are consistent.

Slicer cannot run here, so the tests check the scene against the rules read from Slicer's
source (see the docstring of ``EUSVoiceLabelLib.slicer.scene``): every referenced node exists,
every file is relative and present, the browser synchronises the four sequences (frames as
master, heat maps, landmarks, landmark points), the proxies' classes match the items the
``.seq.nrrd`` files declare, the master sequence is read last, and omitted files leave no nodes
behind.  ``test_slicer_mrml.py`` imports the scenes into Slicer's own MRML.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import nrrd
import numpy as np
import pytest

from EUSVoiceLabelLib.core.errors import ConfigError
from EUSVoiceLabelLib.slicer.files import (LABELMAP_NODE, SCALAR_NODE, color_table_csv,
                                           write_frame_sequence, write_point_sequence)
from EUSVoiceLabelLib.slicer.scene import BUILTIN_COLOR_IDS, INFERNO_COLOR_ID, write_scene_mrml

# Element name -> MRML class, as the classes' GetNodeTagName() say in Slicer's source.
TAG_CLASS = {
    "Volume": SCALAR_NODE, "LabelMapVolume": LABELMAP_NODE,
    "VolumeDisplay": "vtkMRMLScalarVolumeDisplayNode",
    "LabelMapVolumeDisplay": "vtkMRMLLabelMapVolumeDisplayNode",
    "Sequence": "vtkMRMLSequenceNode", "VolumeSequenceStorage": "vtkMRMLVolumeSequenceStorageNode",
    "SequenceBrowser": "vtkMRMLSequenceBrowserNode", "ColorTable": "vtkMRMLColorTableNode",
    "ColorTableStorage": "vtkMRMLColorTableStorageNode",
    "SliceComposite": "vtkMRMLSliceCompositeNode",
    "MarkupsFiducial": "vtkMRMLMarkupsFiducialNode",
    "MarkupsFiducialDisplay": "vtkMRMLMarkupsFiducialDisplayNode",
    "SequenceStorage": "vtkMRMLSequenceStorageNode",
}
STORAGE_TAGS = {"VolumeSequenceStorage", "ColorTableStorage", "SequenceStorage"}


def url_decode(name: str) -> str:
    """vtkMRMLNode::URLDecodeString."""
    for code, char in (("%22", '"'), ("%3C", "<"), ("%3E", ">"), ("%27", "'"), ("%20", " "),
                       ("%25", "%")):
        name = name.replace(code, char)
    return name


def parse_references(text: str) -> dict[str, list[str]]:
    """references="role1:id1 id2;role2:id3;" as vtkMRMLNode::ParseReferencesAttribute reads it."""
    out: dict[str, list[str]] = {}
    for part in filter(None, text.split(";")):
        role, ids = part.split(":", 1)
        out[role] = ids.split()
    return out


class Scene:
    """Parsed scene.mrml with lookups by id."""

    def __init__(self, path: Path):
        self.path = path
        self.root = ET.parse(path).getroot()
        self.elements = list(self.root)
        self.by_id = {e.get("id"): e for e in self.elements}

    def refs(self, element) -> dict[str, list[str]]:
        return parse_references(element.get("references", ""))

    def ref(self, element, role: str):
        ids = self.refs(element).get(role, [])
        assert len(ids) == 1, (element.get("id"), role, ids)
        return self.by_id[ids[0]]

    def of_tag(self, tag: str) -> list:
        return [e for e in self.elements if e.tag == tag]

    def file_of(self, node) -> str:
        return url_decode(self.ref(node, "storage").get("fileName"))

    def position(self, element) -> int:
        return self.elements.index(element)


def make_outputs(folder: Path, n: int = 4, names: dict[str, str] | None = None) -> dict[str, str]:
    """Tiny real output files (3 volume sequences, colour table, point sequence) in
    ``folder``."""
    names = {"frames": "frames.seq.nrrd", "cam": "cam.seq.nrrd",
             "landmarks": "landmarks.seq.nrrd", "colors": "landmarks.csv",
             "points": "landmark_points.seq.mrb", **(names or {})}
    rng = np.random.default_rng(0)
    times = [i / 25.0 for i in range(n)]
    frames = rng.integers(0, 256, (n, 6, 8), dtype=np.uint8)
    cam = rng.random((n, 6, 8)).astype(np.float32)
    write_frame_sequence(folder / names["frames"], frames, times)
    write_frame_sequence(folder / names["cam"], cam, times)
    write_frame_sequence(folder / names["landmarks"], (cam > 0.5).astype(np.uint8) * 2, times,
                         node_class=LABELMAP_NODE)
    (folder / names["colors"]).write_text(
        color_table_csv([(1, "oesophagus", (1, 0, 0)), (2, "pancreas", (0, 1, 0))]))
    write_point_sequence(folder / names["points"], [
        (0.0, [{"label": "pancreas", "position": [1, 2, 0]}]), (2 / 25.0, [])])
    return names


def check_consistent(scene: Scene) -> None:
    """Invariants every written scene must satisfy."""
    assert scene.root.tag == "MRML"
    ids = [e.get("id") for e in scene.elements]
    assert all(ids) and len(ids) == len(set(ids)), "every node needs a unique id"
    for e in scene.elements:
        assert e.tag in TAG_CLASS, f"unknown MRML element {e.tag}"
        for role, targets in scene.refs(e).items():
            for target in targets:
                assert target in scene.by_id, f"{e.get('id')} {role} -> missing {target}"
        color = e.get("colorNodeID")
        if color is not None:
            assert color in scene.by_id or color in BUILTIN_COLOR_IDS, color
        if e.tag in STORAGE_TAGS:
            name = url_decode(e.get("fileName"))
            assert not Path(name).is_absolute() and "\\" not in name, name
            assert (scene.path.parent / name).is_file(), f"{name} is not next to the scene"
    # Every storage node is used by exactly one node, every display node by one displayable.
    used = [t for e in scene.elements for role, ts in scene.refs(e).items()
            if role in ("storage", "display") for t in ts]
    for e in scene.elements:
        if e.tag in STORAGE_TAGS or e.tag.endswith("Display"):
            assert used.count(e.get("id")) == 1, e.get("id")


def browser_sequences(scene: Scene):
    """(postfix, sequence element, proxy element) in the browser's order (master first)."""
    (browser,) = scene.of_tag("SequenceBrowser")
    postfixes = browser.get("virtualNodePostfixes").split()
    out = []
    for p in postfixes:
        out.append((p, scene.ref(browser, f"sequenceNodeRef{p}"),
                    scene.ref(browser, f"dataNodeRef{p}")))
        props = browser.get(f"SynchronizationPropertiesMap{p}").split()
        assert dict(zip(props[::2], props[1::2]))["playback"] == "true"
    return browser, out


def test_full_scene_wires_four_synchronised_sequences(tmp_path):
    names = make_outputs(tmp_path)
    path = write_scene_mrml(tmp_path / "scene.mrml", fps=29.97, name="Patient 7",
                            cam_threshold=0.3)
    assert path == tmp_path / "scene.mrml"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left
    text = path.read_text()
    assert text.startswith('<?xml version="1.0" encoding="UTF-8"?>')
    assert str(tmp_path) not in text  # relative paths only
    scene = Scene(path)
    check_consistent(scene)

    browser, seqs = browser_sequences(scene)
    assert float(browser.get("playbackRateFps")) == pytest.approx(29.97)
    assert browser.get("name") == "Patient 7"
    # selection -1 and master read last: the proxies fill when the frames arrive.
    assert browser.get("selectedItemNumber") == "-1"
    files = [scene.file_of(seq) for _, seq, _ in seqs]
    # master first
    assert files == [names["frames"], names["cam"], names["landmarks"], names["points"]]
    master = seqs[0][1]
    assert all(scene.position(master) > scene.position(seq) for _, seq, _ in seqs[1:])
    assert all(scene.position(browser) < scene.position(seq) for _, seq, _ in seqs)
    for _, seq, proxy in seqs:
        assert proxy.get("name") == seq.get("name")
        assert "storage" not in scene.refs(proxy)  # proxies hold no data of their own
        assert seq.get("indexValues") is None  # the storage node supplies the items
        if scene.file_of(seq).endswith(".seq.mrb"):  # the point lists
            assert scene.ref(seq, "storage").tag == "SequenceStorage"
            assert proxy.tag == "MarkupsFiducial"
            continue
        # The browser reuses a proxy only if its class is the items' class.
        header = nrrd.read_header(str(tmp_path / scene.file_of(seq)))
        assert TAG_CLASS[proxy.tag] == header["DataNodeClassName"]
        assert scene.ref(seq, "storage").tag == "VolumeSequenceStorage"

    frames_proxy, cam_proxy, label_proxy, points_proxy = (proxy for _, _, proxy in seqs)
    cam_display = scene.ref(cam_proxy, "display")
    assert cam_display.tag == "VolumeDisplay"
    assert cam_display.get("colorNodeID") == INFERNO_COLOR_ID
    assert cam_display.get("autoWindowLevel") == "0"
    assert float(cam_display.get("window")) == 1 and float(cam_display.get("level")) == 0.5
    assert cam_display.get("applyThreshold") == "1"
    assert float(cam_display.get("lowerThreshold")) == pytest.approx(0.3)
    assert float(cam_display.get("upperThreshold")) >= 1
    frames_display = scene.ref(frames_proxy, "display")
    assert frames_display.get("autoWindowLevel") == "0"
    label_display = scene.ref(label_proxy, "display")
    assert label_display.tag == "LabelMapVolumeDisplay"
    table = scene.by_id[label_display.get("colorNodeID")]
    assert table.tag == "ColorTable" and scene.file_of(table) == names["colors"]
    assert scene.ref(table, "storage").tag == "ColorTableStorage"

    composites = scene.of_tag("SliceComposite")
    assert {c.get("layoutName") for c in composites} == {"Red", "Yellow", "Green"}
    for c in composites:
        assert c.get("singletonTag") == c.get("layoutName")  # updates the existing view
        assert scene.ref(c, "backgroundVolume") is frames_proxy
        assert scene.ref(c, "foregroundVolume") is cam_proxy
        assert scene.ref(c, "labelVolume") is label_proxy
        assert 0 < float(c.get("foregroundOpacity")) < 1

    # No standalone point list (it would show every window's point at every time).
    assert scene.of_tag("MarkupsFiducial") == [points_proxy]
    assert scene.ref(points_proxy, "display").tag == "MarkupsFiducialDisplay"


def test_omitted_files_omit_their_nodes(tmp_path):
    make_outputs(tmp_path)
    scene = Scene(write_scene_mrml(tmp_path / "scene.mrml", cam_seq=None, color_table=None,
                                   points_seq=None))
    check_consistent(scene)
    _, seqs = browser_sequences(scene)
    assert [scene.file_of(s) for _, s, _ in seqs] == ["frames.seq.nrrd", "landmarks.seq.nrrd"]
    assert not scene.of_tag("ColorTable") and not scene.of_tag("MarkupsFiducial")
    assert not scene.of_tag("SequenceStorage") and not scene.of_tag("ColorTableStorage")
    assert len(scene.of_tag("Volume")) == 1 and len(scene.of_tag("VolumeDisplay")) == 1
    label_display = scene.ref(seqs[1][2], "display")
    assert label_display.get("colorNodeID") in BUILTIN_COLOR_IDS
    for c in scene.of_tag("SliceComposite"):
        assert "foregroundVolume" not in scene.refs(c)
        assert scene.ref(c, "labelVolume") is seqs[1][2]

    only = Scene(write_scene_mrml(tmp_path / "frames_only.mrml", cam_seq=None,
                                  landmarks_seq=None, color_table=None, points_seq=None))
    check_consistent(only)
    browser, seqs = browser_sequences(only)
    assert browser.get("virtualNodePostfixes").split() == ["0"]
    assert [only.file_of(s) for _, s, _ in seqs] == ["frames.seq.nrrd"]
    assert sorted(e.tag for e in only.elements) == sorted(
        ["VolumeDisplay", "Volume", "SequenceBrowser", "VolumeSequenceStorage", "Sequence"]
        + ["SliceComposite"] * 3)


def test_file_names_are_relative_and_url_encoded(tmp_path):
    names = make_outputs(tmp_path, names={"frames": "my frames 100%.seq.nrrd",
                                          "points": "points 'a'.seq.mrb"})
    path = write_scene_mrml(tmp_path / "scene.mrml", frames_seq=tmp_path / names["frames"],
                            points_seq=str(tmp_path / names["points"]))  # absolute -> relative
    text = path.read_text()
    assert 'fileName="my%20frames%20100%25.seq.nrrd"' in text
    assert "points%20%27a%27.seq.mrb" in text
    scene = Scene(path)
    check_consistent(scene)  # decoded names exist next to the scene
    _, seqs = browser_sequences(scene)
    assert scene.file_of(seqs[0][1]) == names["frames"]


def test_names_are_xml_escaped_and_rewrite_is_atomic(tmp_path):
    make_outputs(tmp_path)
    path = write_scene_mrml(tmp_path / "scene.mrml", name='A & B <"x">')
    assert Scene(path).of_tag("SequenceBrowser")[0].get("name") == 'A & B <"x">'
    write_scene_mrml(path, name="second")  # replaces the previous scene
    assert Scene(path).of_tag("SequenceBrowser")[0].get("name") == "second"
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".mrml") == ["scene.mrml"]


@pytest.mark.parametrize("kwargs", [{"frames_seq": None}, {"fps": 0.0}, {"fps": float("nan")},
                                    {"cam_threshold": 1.5}])
def test_bad_settings_raise_config_error_and_write_nothing(tmp_path, kwargs):
    with pytest.raises(ConfigError):
        write_scene_mrml(tmp_path / "scene.mrml", **kwargs)
    assert not (tmp_path / "scene.mrml").exists()
