"""The extension in Slicer's own MRML (slicer-core from PyPI, no Qt; see mrmlscene.py):

- every file ``eusvoicelabel label`` writes is read by Slicer's storage nodes (volume
  sequences, markups, colour table, point-list sequence) with the right items, index values,
  node classes and geometry;
- ``scene.mrml`` imports into a scene wired like the application's: one browser, every
  sequence synchronised, proxies filled, slice layers and heat-map display as intended, and
  offscreen renders of the slice view show the overlay inside the frame and each window's point
  only during its window;
- the module ``EUSVoiceLabel.py`` runs against it: the README's batch script, review, export
  and add-to-cohort on procedures cropped off-centre (every overlay on its frame, every point
  on its window's heat-map peak), and the module's own ``EUSVoiceLabelTest`` cases that need no
  GUI.

Skipped, with the reason, when slicer-core is not installed (``bash scripts/install.sh --test``
installs it).
"""

from __future__ import annotations

import csv
import re
import sys
import unittest
from pathlib import Path

import numpy as np
import pytest

import mrmlscene as ms

pytestmark = pytest.mark.skipif(ms.SKIP_REASON is not None, reason=str(ms.SKIP_REASON))

if ms.SKIP_REASON is None:
    import slicer
    import vtk

from EUSVoiceLabelLib.data.mentions import Mention
from EUSVoiceLabelLib.data.procedure import load_procedure, window_frame_indices
from EUSVoiceLabelLib.data.vocabulary import LabelSet
from EUSVoiceLabelLib.nn.evidence import DISPLAY_THRESHOLD, evidence_region, peak_of
from EUSVoiceLabelLib.slicer.files import POINT_COLOR, REVIEW_POINT_COLOR, frame_geometry
from EUSVoiceLabelLib.slicer.support import write_tiny_procedure

REPO = Path(__file__).resolve().parents[3]
CROP = (12, 20, 96, 64)  # off-centre crop of the 120 x 90 tiny recordings
SIZE = (120, 90)
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def app():
    """One application-like scene for the module (cleared before each test that uses it)."""
    scene = ms.AppScene()
    module = ms.load_module(scene)
    scene.module = module
    return scene


@pytest.fixture
def clean(app):
    app.clear()
    return app


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Two tiny procedures cropped off-centre and a model trained on them for a few epochs."""
    from EUSVoiceLabelLib.data.dataset import build_window_set
    from EUSVoiceLabelLib.train.checkpoints import preprocessing_settings, save_checkpoint
    from EUSVoiceLabelLib.train.config import TrainConfig
    from EUSVoiceLabelLib.train.loop import train_model

    root = tmp_path_factory.mktemp("mrml")
    write_tiny_procedure(root / "cohort" / "p1", seed=1, size=SIZE, crop=CROP)
    write_tiny_procedure(root / "cohort" / "p2", seed=2, size=SIZE, crop=CROP,
                         labels=("bile_duct", "pancreas"))
    ws = build_window_set(root / "cohort", image_size=(32, 48), frames=5, progress=False,
                          cache_dir=root / "cache")
    cfg = TrainConfig(epochs=3, batch_size=4, image_size=(32, 48), frames=5, width=0.0625,
                      lr=1e-3, seed=0)
    res = train_model(ws, cfg, len(ws.labelset), device="cpu", progress=False)
    save_checkpoint(root / "model.pt", res, ws.labelset, preprocessing_settings(ws, cfg))
    return root


@pytest.fixture(scope="module")
def cli_out(cohort):
    """``eusvoicelabel label`` of the cropped procedure p1."""
    from EUSVoiceLabelLib.cli import main as cli

    out = cohort / "label_p1"
    assert cli(["label", str(cohort / "cohort" / "p1"), "--model", str(cohort / "model.pt"),
                "--out", str(out), "--quiet", "--device", "cpu"]) == 0
    return out


# --------------------------------------------------------------------------- helpers
def read(app, storage_class: str, node_class: str, path: Path):
    """Read a file the way Slicer does: a node of ``node_class`` filled by a storage node."""
    node = app.scene.AddNewNodeByClass(node_class)
    storage = app.scene.AddNewNodeByClass(storage_class)
    storage.SetFileName(str(path))
    assert storage.ReadData(node) == 1, f"{storage_class} could not read {path.name}"
    node.SetAndObserveStorageNodeID(storage.GetID())
    return node


def matrix(volume) -> np.ndarray:
    m = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(m)
    return slicer.util.arrayFromVTKMatrix(m)


def bounds(node) -> list[float]:
    b = [0.0] * 6
    node.GetRASBounds(b)
    return [round(v, 4) for v in b]


def ras_to_ijk(volume, ras) -> tuple[int, int]:
    ijk = np.linalg.inv(matrix(volume)) @ np.array([*ras, 1.0])
    return int(round(ijk[0])), int(round(ijk[1]))


def points_of(markups) -> list[tuple[str, list[float]]]:
    return [(markups.GetNthControlPointLabel(i), list(markups.GetNthControlPointPositionVector(i)))
            for i in range(markups.GetNumberOfControlPoints())]


def windows_csv(out: Path) -> list[dict]:
    return list(csv.DictReader(open(out / "labels.csv", encoding="utf-8")))


# --------------------------------------------------------------------------- files
def test_every_output_file_is_read_by_slicers_storage_nodes(clean, cli_out):
    app = clean
    proc = load_procedure(cli_out.parent / "cohort" / "p1")
    assert tuple(proc.crop) == CROP
    frame_rows = list(csv.DictReader(open(cli_out / "frame_labels.csv", encoding="utf-8")))
    times = [float(r["time_s"]) for r in frame_rows]
    windows = windows_csv(cli_out)
    # the geometry every item shares: the cropped frame, centred, DICOM-cine orientation
    expected = LPS_TO_RAS @ frame_geometry(None, proc.frame_size)
    classes = {"frames.seq.nrrd": "vtkMRMLScalarVolumeNode",
               "cam.seq.nrrd": "vtkMRMLScalarVolumeNode",
               "landmarks.seq.nrrd": "vtkMRMLLabelMapVolumeNode"}
    sequences = {}
    for name, node_class in classes.items():
        seq = read(app, "vtkMRMLVolumeSequenceStorageNode", "vtkMRMLSequenceNode", cli_out / name)
        sequences[name] = seq
        assert seq.GetNumberOfDataNodes() == len(frame_rows), name
        assert seq.GetDataNodeClassName() == node_class, name
        assert (seq.GetIndexName(), seq.GetIndexUnit()) == ("time", "s")
        np.testing.assert_allclose([float(seq.GetNthIndexValue(i)) for i in
                                    range(seq.GetNumberOfDataNodes())], times, atol=1e-6)
        for i in (0, seq.GetNumberOfDataNodes() - 1):
            item = seq.GetNthDataNode(i)
            assert item.GetImageData().GetDimensions() == (*proc.frame_size, 1), name
            np.testing.assert_allclose(matrix(item), expected, atol=1e-6)
    cam_seq, land_seq = sequences["cam.seq.nrrd"], sequences["landmarks.seq.nrrd"]
    # Each labelled frame's region: one blob around its window's peak, of its (fused) label.
    labels = {int(lab["LabelValue"]) for lab in csv.DictReader(open(cli_out / "landmarks.csv"))}
    by_window = {int(r["window"]): i for i, r in reversed(list(enumerate(frame_rows)))}
    for w in windows:
        i = by_window.get(int(w["window"]))
        if i is None:
            continue
        cam = slicer.util.arrayFromVolume(cam_seq.GetNthDataNode(i))[0]
        land = slicer.util.arrayFromVolume(land_seq.GetNthDataNode(i))[0]
        assert peak_of(cam) == (int(w["peak_col"]), int(w["peak_row"]))
        np.testing.assert_array_equal(land > 0, evidence_region(cam))
        values = set(np.unique(land)) - {0}
        assert values == {LabelSet.default().index(w["label"]) + 1} and values <= labels

    # The colour table names every landmark.
    table = read(app, "vtkMRMLColorTableStorageNode", "vtkMRMLColorTableNode",
                 cli_out / "landmarks.csv")
    assert [table.GetColorName(i) for i in range(1, 6)] == [
        "Pancreas", "Portal vein", "Pancreatic duct", "Portal venous confluence", "Bile duct"]

    # All points in one list (landmarks.mrk.json) and, per window, in the point sequence.
    markups = read(app, "vtkMRMLMarkupsJsonStorageNode", "vtkMRMLMarkupsFiducialNode",
                   cli_out / "landmarks.mrk.json")
    frame = sequences["frames.seq.nrrd"].GetNthDataNode(0)
    listed = points_of(markups)
    assert len(listed) == len(windows)
    for i, ((label, ras), w) in enumerate(zip(listed, windows)):
        assert ras_to_ijk(frame, ras) == (int(w["peak_col"]), int(w["peak_row"]))
        name = LabelSet.default().get(w["label"]).name
        assert label == f"{name} {float(w['label_confidence']):.2f}"
        # a window that needs review has its point selected: drawn in the review colour
        assert markups.GetNthControlPointSelected(i) == (w["needs_review"] == "1")
    # Loaded as "Add data" does (the Markups logic), the file's colours are the display's.
    loaded = app.logics["Markups"].LoadMarkups(str(cli_out / "landmarks.mrk.json"))
    display = app.scene.GetNodeByID(loaded).GetDisplayNode()
    assert display.GetSelectedColor() == pytest.approx(REVIEW_POINT_COLOR)
    assert display.GetColor() == pytest.approx(POINT_COLOR)
    point_seq = read(app, "vtkMRMLSequenceStorageNode", "vtkMRMLSequenceNode",
                     cli_out / "landmark_points.seq.mrb")
    assert point_seq.GetDataNodeClassName() == "vtkMRMLMarkupsFiducialNode"
    owned = [w for w in windows if int(w["window"]) in by_window]
    assert point_seq.GetNumberOfDataNodes() == len(owned)
    for k, w in enumerate(owned):
        first = frame_rows[by_window[int(w["window"])]]
        assert float(point_seq.GetNthIndexValue(k)) == pytest.approx(float(first["time_s"]))
        (item,) = points_of(point_seq.GetNthDataNode(k))
        assert item[0] == listed[int(w["window"])][0]
        np.testing.assert_allclose(item[1], listed[int(w["window"])][1], atol=1e-4)


# --------------------------------------------------------------------------- scene.mrml
def grey(image: np.ndarray) -> np.ndarray:
    """Pixels of a render with no colour (the grey frames and the black background)."""
    rgb = image.astype(int)
    return (np.abs(rgb[..., 0] - rgb[..., 1]) < 8) & (np.abs(rgb[..., 1] - rgb[..., 2]) < 8)


def frame_rect(view, frame) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) pixels of a frame in a rendered slice view."""
    b = bounds(frame)
    xs, ys = zip(*(view.xy_of_ras((x, y, 0.0)) for x in b[:2] for y in b[2:4]))
    return min(xs), min(ys), max(xs), max(ys)


def inside(mask: np.ndarray, rect, margin: float = 1.5) -> bool:
    rows, cols = np.nonzero(mask)
    left, top, right, bottom = rect
    return bool(cols.min() >= left - margin and cols.max() <= right + margin
                and rows.min() >= top - margin and rows.max() <= bottom + margin)


def test_scene_mrml_opens_as_one_synchronised_procedure(clean, cli_out):
    app = clean
    app.import_scene(cli_out / "scene.mrml")
    scene = app.scene
    assert scene.GetNumberOfNodesByClass("vtkMRMLSequenceBrowserNode") == 1
    browser = scene.GetFirstNodeByClass("vtkMRMLSequenceBrowserNode")
    collection = vtk.vtkCollection()
    browser.GetSynchronizedSequenceNodes(collection, True)
    seqs = {collection.GetItemAsObject(i).GetName(): collection.GetItemAsObject(i)
            for i in range(collection.GetNumberOfItems())}
    name = "p1"
    assert set(seqs) == {f"{name} frames", f"{name} heat map", f"{name} landmarks",
                         f"{name} landmark points"}
    master = browser.GetMasterSequenceNode()
    assert master is seqs[f"{name} frames"]
    assert browser.GetNumberOfItems() == master.GetNumberOfDataNodes() > 0
    frames, heat, land, points = (browser.GetProxyNode(seqs[f"{name} {k}"]) for k in
                                  ("frames", "heat map", "landmarks", "landmark points"))
    assert frames.IsA("vtkMRMLScalarVolumeNode") and heat.IsA("vtkMRMLScalarVolumeNode")
    assert land.IsA("vtkMRMLLabelMapVolumeNode") and points.IsA("vtkMRMLMarkupsFiducialNode")
    assert frames.GetImageData() is not None and heat.GetImageData() is not None  # filled
    # Slice layers: frames behind, heat map in front (Inferno, 0-1, low values transparent),
    # landmarks as labels (named by landmarks.csv).
    for view in ms.SLICE_VIEWS:
        composite = app.slice_composite(view)
        assert composite.GetBackgroundVolumeID() == frames.GetID()
        assert composite.GetForegroundVolumeID() == heat.GetID()
        assert composite.GetLabelVolumeID() == land.GetID()
        assert 0 < composite.GetForegroundOpacity() < 1
    display = heat.GetDisplayNode()
    assert display.GetColorNodeID() == "vtkMRMLColorTableNodeFileInferno.txt"
    assert display.GetColorNode() is not None
    assert (display.GetWindow(), display.GetLevel()) == (1.0, 0.5)
    assert display.GetApplyThreshold() and display.GetLowerThreshold() == DISPLAY_THRESHOLD
    assert land.GetDisplayNode().GetColorNode().GetColorName(1) == "Pancreas"

    # Browse: each window's point (and label) only during its window, overlays on the frame.
    windows = windows_csv(cli_out)
    frame_rows = list(csv.DictReader(open(cli_out / "frame_labels.csv", encoding="utf-8")))
    view = ms.SliceView(app, "Red", (480, 320))
    try:
        # The scene gives the points the review colours (selected: needs review) ...
        assert points.GetDisplayNode().GetColor() == pytest.approx(POINT_COLOR)
        assert points.GetDisplayNode().GetSelectedColor() == pytest.approx(REVIEW_POINT_COLOR)
        # ... here both green, to find the point in the render
        points.GetDisplayNode().SetSelectedColor(0.0, 1.0, 0.0)
        points.GetDisplayNode().SetColor(0.0, 1.0, 0.0)
        seen = set()
        for item, row in enumerate(frame_rows):
            browser.SetSelectedItemNumber(item)
            w = windows[int(row["window"])]
            (label, ras), = points_of(points)  # exactly one point: its window's
            assert label.split()[0] == LabelSet.default().get(w["label"]).name.split()[0]
            assert ras_to_ijk(frames, ras) == (int(w["peak_col"]), int(w["peak_row"]))
            assert bounds(heat) == bounds(land) == bounds(frames)
            if row["window"] in seen:
                continue
            seen.add(row["window"])
            view.fit()
            image = view.render()
            rect = frame_rect(view, frames)
            green = (image[..., 1] > 200) & (image[..., 0] < 90) & (image[..., 2] < 90)
            assert green.sum() > 10  # the point and its label are drawn
            col, row_px = view.xy_of_ras(ras)
            near = green[max(0, int(row_px) - 4):int(row_px) + 5,
                         max(0, int(col) - 4):int(col) + 5]
            assert near.any(), "the point is drawn where it is"
            points.GetDisplayNode().SetVisibility(False)
            image = view.render()
            points.GetDisplayNode().SetVisibility(True)
            colour = ~grey(image)
            assert colour.sum() > 50  # the heat map (and evidence) over the frame
            assert inside(colour, rect), "overlays lie inside the frame"
        assert len(seen) > 1
    finally:
        view.close()


# --------------------------------------------------------------------------- the module
def assert_overlays_on_frames(logic, results) -> int:
    """Every overlay of every item lies on its frame, every point on its window's heat-map
    peak and inside its evidence region; returns the number of windows seen."""
    nodes = logic.outputNodes(results)
    browser, frames = nodes["browser"], nodes["frames"]
    heat_seq, seg_seq, point_seq = nodes["heatMap"], nodes["segmentation"], nodes["points"]
    frame_bounds = bounds(frames.GetNthDataNode(0))
    shown = set()
    for i in range(heat_seq.GetNumberOfDataNodes()):
        value = heat_seq.GetNthIndexValue(i)
        heat = heat_seq.GetNthDataNode(i)
        assert bounds(heat) == frame_bounds, f"heat map at {value} s is off the frame"
        seg = seg_seq.GetDataNodeAtValue(value)
        seg_bounds = [0.0] * 6
        seg.GetRASBounds(seg_bounds)
        points = points_of(point_seq.GetDataNodeAtValue(value))
        cam = slicer.util.arrayFromVolume(heat)[0]
        if not cam.any():  # a blank item: no window here
            assert points == []
            continue
        (_, ras), = points
        assert ras_to_ijk(heat, ras) == peak_of(cam), f"point at {value} s is off the peak"
        assert frame_bounds[0] <= ras[0] <= frame_bounds[1]
        assert frame_bounds[2] <= ras[1] <= frame_bounds[3]
        region = np.zeros(cam.shape, bool)
        segmentation = seg.GetSegmentation()
        for k in range(segmentation.GetNumberOfSegments()):
            segment_id = segmentation.GetNthSegmentID(k)
            region |= slicer.util.arrayFromSegmentBinaryLabelmap(seg, segment_id, heat)[0] > 0
        np.testing.assert_array_equal(region, evidence_region(cam))
        assert region[peak_of(cam)[::-1]]
        shown.add(value)
    browser.SetSelectedItemNumber(0)
    return len(shown)


def blob(shape, col, row, sigma=6.0) -> np.ndarray:
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    return np.exp(-((xx - col) ** 2 + (yy - row) ** 2) / (2 * sigma ** 2)).astype(np.float32)


def test_module_overlays_follow_a_cropped_procedure(clean, cohort):
    """Known heat maps through the module's resultsToNodes on a procedure cropped off-centre:
    each lies on its frame and its point on its peak (the crop was applied twice before)."""
    from EUSVoiceLabelLib.labelling.fusion import FusedLabel
    from EUSVoiceLabelLib.labelling.run import LabelResult, WindowResult

    logic = clean.module.EUSVoiceLabelLogic()
    frames = logic.loadProcedure(cohort / "cohort" / "p1")
    proc = logic.procedureForSequence(frames)
    assert tuple(proc.crop) == CROP
    w, h = proc.frame_size
    assert frames.GetNthDataNode(0).GetImageData().GetDimensions()[:2] == (w, h)
    labels = LabelSet.default()
    result = LabelResult(proc, labels)
    peaks = [(10, 8), (80, 50), (50, 30)]
    # Window 2's spoken label outweighed the network's: flagged for review, shown with the
    # fused label.
    fused = FusedLabel(labels.ids[3], 0.97, np.full(len(labels), 0.2), True, "network disagrees")
    for k, ((col, row), m) in enumerate(zip(peaks, proc.mentions)):
        cam = blob((h, w), col, row)
        result.windows.append(WindowResult(
            index=k, mention=m, predicted=labels.ids[k], confidence=0.9,
            probabilities=np.full(len(labels), 0.2, np.float32),
            frame_indices=window_frame_indices(m.time_s, 25, proc.fps), cam=cam, peak=peak_of(cam),
            region=evidence_region(cam), fused=fused if k == 2 else None))
    results = logic.resultsToNodes(result, frames)
    assert assert_overlays_on_frames(logic, results) == len(peaks)
    # Only the flagged window's point is selected, so Slicer draws it in the review colour.
    point_seq = logic.outputNodes(results)["points"]
    selected = [node.GetNthControlPointSelected(0) for node in
                (point_seq.GetNthDataNode(i) for i in range(point_seq.GetNumberOfDataNodes()))
                if node.GetNumberOfControlPoints()]
    assert selected == [False, False, True]
    display = logic.outputNodes(results)["browser"].GetProxyNode(point_seq).GetDisplayNode()
    assert display.GetSelectedColor() == pytest.approx(REVIEW_POINT_COLOR)
    assert display.GetColor() == pytest.approx(POINT_COLOR)
    # The review table starts with the flagged window, its fused label beside the network's.
    columns = [results.GetColumnName(c) for c in range(results.GetNumberOfColumns())]
    first = {c: results.GetCellText(0, i) for i, c in enumerate(columns)}
    assert (first["window"], first["label"], first["predicted_label"], first["needs_review"]) \
        == ("2", labels.ids[3], labels.ids[2], "1")
    assert logic.reviewTable(results).final_labels()[2] == labels.ids[3]
    # The module shows what it computed: heat map in front, frames behind.
    nodes = logic.outputNodes(results)
    composite = clean.slice_composite("Red")
    browser = nodes["browser"]
    assert composite.GetForegroundVolumeID() == browser.GetProxyNode(nodes["heatMap"]).GetID()
    assert composite.GetBackgroundVolumeID() == browser.GetProxyNode(frames).GetID()
    display = browser.GetProxyNode(nodes["heatMap"]).GetDisplayNode()
    assert display.GetApplyThreshold() and display.GetLowerThreshold() == DISPLAY_THRESHOLD
    # Offscreen render of window 1: the heat map's colour lies inside the frame, around the
    # peak (the blob's visible part: display map >= the threshold).
    item = logic.jumpToWindow(results, 1)
    points = browser.GetProxyNode(nodes["points"])
    points.GetDisplayNode().SetVisibility(False)
    view = ms.SliceView(clean, "Red", (480, 320))
    try:
        view.fit()
        image = view.render()
        colour = ~grey(image)
        frame = browser.GetProxyNode(frames)
        assert colour.sum() > 100 and inside(colour, frame_rect(view, frame))
        rows, cols = np.nonzero(colour)
        peak_ras = (matrix(frame) @ np.array([*peaks[1], 0.0, 1.0]))[:3]
        col, row = view.xy_of_ras(peak_ras)
        assert abs(cols.mean() - col) < 6 and abs(rows.mean() - row) < 6
    finally:
        view.close()
    assert item >= 0


def readme_batch_script() -> str:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("**Batch from Slicer's Python console.**"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_batch_script_review_export_and_add_to_cohort(clean, cohort, capsys):
    """The README's console script as written (paths replaced), then review, export and
    add-to-cohort of the last procedure it labelled."""
    out = cohort / "batch"
    script = readme_batch_script()
    for name, value in (("cohort", cohort / "cohort"), ("model", cohort / "model.pt"),
                        ("out", out)):
        script, n = re.subn(rf"^{name} = Path\(.*?\)", f"{name} = Path({str(value)!r})",
                            script, flags=re.M)
        assert n == 1, name
    exec(compile(script, "README batch script", "exec"), {"__name__": "__console__"})
    printed = capsys.readouterr().out
    for p in ("p1", "p2"):
        assert f"{p}: " in printed and "skipped" not in printed, printed
        assert (out / p / "scene.mrml").is_file() and (out / p / "labels.csv").is_file()
        assert any((out / "dataset" / p / "images").iterdir())
        assert (out / p / f"{p}.mrb").stat().st_size > 0  # the scene bundle to reopen
    # The last procedure (p2) is still in the scene: its overlays are on its frames.
    logic = slicer.util.getModuleLogic("EUSVoiceLabel")
    results = clean.scene.GetFirstNodeByName("p2 labels")
    assert results is not None
    # The script's logic is gone with the script; a new one finds the nodes but not the
    # in-memory result, which only review and add-to-cohort (not export) can do without.
    assert assert_overlays_on_frames(logic, results) >= 1
    rows = int(results.GetNumberOfRows())
    logic.correctWindow(results, 0, "portal_vein")
    logic.acceptWindow(results, rows - 1)
    assert logic.reviewTable(results).counts()["corrected"] == 1
    dest = logic.addToCohort(results, cohort / "reviewed")
    reviewed = load_procedure(dest)
    assert reviewed.mentions[0].label == "portal_vein"
    assert tuple(reviewed.crop) == CROP  # the recording is copied with its crop
    with pytest.raises(RuntimeError, match="earlier session"):
        logic.exportResults(results, cohort / "again")


def test_module_review_export_in_one_session(clean, cohort):
    """Label with the real model, review, export the label files and the dataset: the export
    reads back and carries the review."""
    logic = clean.module.EUSVoiceLabelLogic()
    frames = logic.loadProcedure(cohort / "cohort" / "p2")
    mentions = logic.mentionsFromFile(frames, cohort / "cohort" / "p2" / "mentions.csv")
    results = logic.label(frames, mentions, cohort / "model.pt", device="cpu")
    assert assert_overlays_on_frames(logic, results) == 2
    logic.correctWindow(results, 1, "bile_duct")
    files = logic.exportResults(results, cohort / "export_p2", cohort / "dataset_p2")
    rows = windows_csv(cohort / "export_p2")
    assert [r["reviewed_label"] for r in rows][1] == "bile_duct"
    assert (cohort / "dataset_p2" / "images" / "bile_duct").is_dir()
    point_seq = read(clean, "vtkMRMLSequenceStorageNode", "vtkMRMLSequenceNode",
                     Path(files["landmark_points.seq.mrb"]))
    assert sum(point_seq.GetNthDataNode(i).GetNumberOfControlPoints()
               for i in range(point_seq.GetNumberOfDataNodes())) == 2


@pytest.mark.parametrize("case", ["test_ReviewAndTables", "test_LabelLoadedProcedure",
                                  "test_LabelSceneSequence"])
def test_module_self_test(app, case):
    """The module's own EUSVoiceLabelTest cases that need no GUI (test_BackgroundTraining
    needs the application's PythonSlicer and QProcess)."""
    result = unittest.TextTestRunner(verbosity=0).run(app.module.EUSVoiceLabelTest(case))
    assert result.wasSuccessful(), [str(e[1]) for e in result.errors + result.failures]


def test_dependencies_are_installed_only_with_consent(app, monkeypatch):
    """Torch comes from the PyTorch extension (the shim says it is installed); a package of
    requirements.txt that is missing is installed only when the user agrees, and a refusal
    is told in one message and leaves labelling unavailable."""
    module = app.module
    import slicer

    find_spec = module.importlib_util.find_spec  # Slicer 5.10: no slicer.packaging
    monkeypatch.setattr(module.importlib_util, "find_spec",
                        lambda name, *a: None if name == "slicer.packaging" else
                        find_spec(name, *a))
    missing = ["webrtc-noise-gain"]
    checks, installs, shown, answers = [], [], [], []
    monkeypatch.setattr(module, "missing_requirements",
                        lambda reqs: checks.append(list(reqs)) or list(missing))
    monkeypatch.setattr(slicer.util, "pip_install", lambda pkgs: installs.append(pkgs))
    monkeypatch.setattr(slicer.util, "errorDisplay", lambda text, *a, **k: shown.append(text))
    monkeypatch.setattr(slicer.util, "confirmOkCancelDisplay",
                        lambda text, *a, **k: answers.pop(0))

    logic = module.EUSVoiceLabelLogic()
    answers.append(False)  # the user declines
    assert logic.setupPythonRequirements(needTorch=True) is False
    assert installs == [] and len(shown) == 1 and "webrtc-noise-gain" in shown[0]
    assert checks and any("torch" in r or "pocketsphinx" in r for r in checks[0])
    answers.append(True)   # asked again next time, and agreed
    assert logic.setupPythonRequirements(needTorch=False) is True
    assert installs == [missing]
    # Checked once per session: nothing is asked again.
    missing.clear()
    n = len(checks)
    assert logic.setupPythonRequirements() is True and len(checks) == n and not answers


def test_dependencies_go_through_slicer_packaging_where_it_exists(app, monkeypatch):
    """Slicer 5.12+: requirements.txt goes to slicer.packaging.pip_ensure (which asks the
    user itself), torch and its companions skipped; a refusal there is one message."""
    import importlib.machinery
    import types

    import slicer

    module = app.module
    calls, shown = [], []
    fake = types.ModuleType("slicer.packaging")
    fake.__spec__ = importlib.machinery.ModuleSpec("slicer.packaging", None)
    fake.load_requirements = lambda path: calls.append(("load", Path(path).name)) or ["req"]

    def pip_ensure(reqs, requester, skip_packages):
        calls.append(("ensure", reqs, requester, tuple(skip_packages)))
        if len(calls) > 2:
            raise RuntimeError("declined by the user")

    fake.pip_ensure = pip_ensure
    monkeypatch.setitem(sys.modules, "slicer.packaging", fake)
    monkeypatch.setattr(slicer, "packaging", fake, raising=False)
    monkeypatch.setattr(slicer.util, "errorDisplay", lambda text, *a, **k: shown.append(text))
    assert module.EUSVoiceLabelLogic().setupPythonRequirements(needTorch=False) is True
    assert calls == [("load", "requirements.txt"),
                     ("ensure", ["req"], "EUSVoiceLabel", ("torch", "torchvision", "torchaudio"))]
    assert module.EUSVoiceLabelLogic().setupPythonRequirements(needTorch=False) is False
    assert len(shown) == 1 and "declined by the user" in shown[0]
