"""Labelling a procedure: Grad-CAM, the output files read back with independent readers
(pynrrd, slicerio, json; Slicer's own storage nodes read them in test_slicer_mrml.py), atomic
outputs, export."""

import csv
import json
import re
from types import SimpleNamespace

import mediafactory as mf
import nrrd
import numpy as np
import pytest
import slicerio
import torch
from test_procedure import tree_hash
from torch import nn

from EUSVoiceLabelLib.cli import main as cli
from EUSVoiceLabelLib.core.progress import CallbackProgress
from EUSVoiceLabelLib.core.outputlock import MARKER
from EUSVoiceLabelLib.data.procedure import load_procedure
from EUSVoiceLabelLib.labelling.folder import label_to_folder
from EUSVoiceLabelLib.labelling.output import LabelOutputWriter, write_label_outputs
from EUSVoiceLabelLib.labelling.run import LabelModel, label_procedure
from EUSVoiceLabelLib.nn.evidence import peak_of
from EUSVoiceLabelLib.nn.explain import grad_cam, upsample_map

# Slicer accepts a markups file only if its @schema matches this (vtkMRMLMarkupsJsonStorageNode).
SCHEMA_RE = re.compile(r"^https://raw\.githubusercontent\.com/slicer/slicer/master/Modules/"
                       r"Loadable/Markups/Resources/Schema/markups-schema-v[0-9]+\.[0-9]+\.[0-9]+"
                       r"\.json#$")


class TinyCamNet(nn.Module):
    """Features = the input frames themselves; logits = linear map of their spatial mean."""

    def __init__(self, weights: torch.Tensor):
        super().__init__()
        self.feat = nn.Identity()
        self.w = nn.Parameter(weights)

    def cam_layer(self):
        return self.feat

    def forward(self, image, voice):
        a = self.feat(image * 1.0)
        return a.mean(dim=(2, 3)) @ self.w.T


def test_grad_cam_equals_the_hand_computed_map():
    torch.manual_seed(0)
    w = torch.tensor([[1.0, -2.0, 0.5], [0.2, 0.3, -1.0]])
    image = torch.rand(1, 3, 5, 7)
    model = TinyCamNet(w).eval()
    for target in (0, 1):
        exp = grad_cam(model, image, torch.zeros(1, 1024, 66), target=target)
        # d y_c / d A_r[i,j] = w[c, r] / (h w): alpha_r = w[c, r] / 35, CAM = ReLU(sum alpha A).
        expected = torch.relu((w[target][:, None, None] * image[0]).sum(0) / 35.0)
        expected = (expected / expected.max()).numpy()
        np.testing.assert_allclose(exp.cam, expected, atol=1e-6)
        assert exp.target == target
    logits = model(image, None)[0]
    assert exp.probabilities.argmax() == int(logits.argmax())


def test_upsample_and_peak():
    m = np.zeros((4, 6), np.float32)
    m[1, 4] = 1.0
    up = upsample_map(m, (40, 60))
    assert up.shape == (40, 60) and 0 <= up.min() and up.max() <= 1
    col, row = peak_of(up)
    assert 35 <= col <= 50 and 8 <= row <= 20


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A tiny proposed model trained for one epoch on a generated cohort, as a checkpoint."""
    from EUSVoiceLabelLib.data.dataset import build_window_set
    from EUSVoiceLabelLib.train.config import TrainConfig
    from EUSVoiceLabelLib.train.checkpoints import preprocessing_settings, save_checkpoint
    from EUSVoiceLabelLib.train.loop import train_model

    root = tmp_path_factory.mktemp("cohort")
    for i, ms in enumerate(["0.5,pancreas\n2.0,bile_duct\n", "1.0,portal_vein\n2.5,PD\n"]):
        mf.make_procedure(root / f"p{i}", seconds=4.0, size=(96, 64),
                          mentions="time_s,label\n" + ms)
    ws = build_window_set(root, image_size=(40, 48), frames=25,
                          cache_dir=tmp_path_factory.mktemp("cache"), progress=False)
    cfg = TrainConfig(variant="proposed", epochs=1, image_size=(40, 48), frames=25,
                      width=0.125, seed=0)
    result = train_model(ws, cfg, 5, device="cpu", progress=False)
    path = root / "model.pt"
    save_checkpoint(path, result, ws.labelset, preprocessing_settings(ws, cfg))
    return path


@pytest.fixture
def procedure(tmp_path):
    return mf.make_procedure(tmp_path / "proc", seconds=4.0, size=(96, 64),
                             mentions="time_s,label,end_s\n0.4,pancreas,0.9\n1.0,bile_duct,\n"
                                      "3.5,portal_vein,\n",
                             settings={"pixel_spacing_mm": [0.2, 0.25]})


def test_label_outputs_read_back(tiny_model, procedure, tmp_path):
    before = tree_hash(procedure)
    out = tmp_path / "out"
    assert cli(["label", str(procedure), "--model", str(tiny_model), "--out", str(out),
                "--quiet", "--device", "cpu"]) == 0
    assert tree_hash(procedure) == before  # the input folder is never written to
    names = {p.name for p in out.iterdir()}
    assert names == {"labels.csv", "frame_labels.csv", "frames.seq.nrrd", "cam.seq.nrrd",
                     "landmarks.seq.nrrd", "landmarks.csv", "landmarks.mrk.json",
                     "landmark_points.seq.mrb", "scene.mrml", "run.json", MARKER}

    windows = list(csv.DictReader(open(out / "labels.csv")))
    assert [w["spoken_label"] for w in windows] == ["pancreas", "bile_duct", "portal_vein"]
    assert all(w["mention_confidence"] == "" for w in windows)  # hand-made mentions
    for w in windows:
        probs = [float(w[f"p_{k}"]) for k in ("pancreas", "portal_vein", "pancreatic_duct",
                                              "portal_venous_confluence", "bile_duct")]
        assert sum(probs) == pytest.approx(1.0, abs=2e-3)
        assert float(w["confidence"]) == pytest.approx(max(probs), abs=1e-4)

    # Frames: window 0 covers frames 10..34 but window 1 takes over at frame 25; window 2
    # (3.5 s * 25 = 87.5 -> 88..112) is cut at the last frame (99).
    frames = list(csv.DictReader(open(out / "frame_labels.csv")))
    idx = [int(r["frame_index"]) for r in frames]
    assert idx == list(range(10, 50)) + list(range(88, 100))
    assert {int(r["window"]) for r in frames if int(r["frame_index"]) < 25} == {0}
    assert {int(r["window"]) for r in frames if 25 <= int(r["frame_index"]) < 50} == {1}

    # Volume sequences, read with pynrrd and slicerio.
    times = np.array(idx) / 25.0
    for name, dtype, node in (("frames.seq.nrrd", np.uint8, "vtkMRMLScalarVolumeNode"),
                              ("cam.seq.nrrd", np.float32, "vtkMRMLScalarVolumeNode"),
                              ("landmarks.seq.nrrd", np.uint8, "vtkMRMLLabelMapVolumeNode")):
        data, header = nrrd.read(str(out / name))
        assert data.shape == (96, 64, 1, len(idx)) and data.dtype == dtype
        assert list(header["kinds"]) == ["domain", "domain", "domain", "list"]
        assert header["DataNodeClassName"] == node
        assert header["axis 3 index type"] == "numeric"
        np.testing.assert_allclose([float(v) for v in header["axis 3 index values"].split()],
                                   times, atol=1e-6)
        np.testing.assert_allclose(header["space directions"][:3],
                                   np.diag([0.2, 0.25, 1.0]))
        assert np.linalg.norm(header["space directions"][2]) > 0
        vol = slicerio.read_volume(str(out / name))
        assert vol["sequence"]["indexName"] == "time" and vol["sequence"]["indexUnit"] == "s"
        assert len(vol["sequence"]["indexValues"]) == len(idx)
    frames_data, _ = nrrd.read(str(out / "frames.seq.nrrd"))
    # The stored frame k is the video frame idx[k] (flat grey levels identify it).
    assert [mf.frame_index_of(frames_data[..., 0, k].mean()) for k in (0, 15, 40)] == \
        [i % 56 for i in (idx[0], idx[15], idx[40])]
    cam, _ = nrrd.read(str(out / "cam.seq.nrrd"))
    assert cam.min() >= 0 and cam.max() <= 1
    land, _ = nrrd.read(str(out / "landmarks.seq.nrrd"))
    assert set(np.unique(land)) <= set(range(6))

    # Colour table names every label.
    table = list(csv.DictReader(open(out / "landmarks.csv")))
    assert [r["Name"] for r in table] == ["Pancreas", "Portal vein", "Pancreatic duct",
                                          "Portal venous confluence", "Bile duct"]
    assert [int(r["LabelValue"]) for r in table] == [1, 2, 3, 4, 5]

    # Markups: the schema id Slicer's reader accepts, one point per window, inside the frame.
    doc = json.loads((out / "landmarks.mrk.json").read_text())
    assert SCHEMA_RE.match(doc["@schema"])
    points = doc["markups"][0]["controlPoints"]
    assert doc["markups"][0]["type"] == "Fiducial" and len(points) == 3
    origin = np.array([-(96 - 1) / 2 * 0.2, -(64 - 1) / 2 * 0.25])
    for p, w in zip(points, windows):
        assert p["positionStatus"] == "defined" and len(p["position"]) == 3
        col, row = (np.array(p["position"][:2]) - origin) / [0.2, 0.25]
        assert 0 <= col <= 95 and 0 <= row <= 63
        assert (round(col), round(row)) == (int(w["peak_col"]), int(w["peak_row"]))
        assert f"t={float(w['time_s']):.2f} s" in p["description"]


def test_labelling_api_progress_and_cancel(tiny_model, procedure):
    model = LabelModel.load(tiny_model, device="cpu")
    proc = load_procedure(procedure)
    seen = []
    result = label_procedure(proc, model, progress=lambda d, t: seen.append((d, t)))
    assert seen == [(1, 3), (2, 3), (3, 3)]
    assert all(w.cam is not None and w.cam.shape == (64, 96) for w in result.windows)
    calls = iter([False, True])
    stopped = label_procedure(proc, model,
                              progress=CallbackProgress(should_stop=lambda: next(calls)))
    assert stopped.cancelled and len(stopped.windows) == 1
    plain = label_procedure(proc, model, with_cam=False)
    np.testing.assert_allclose(plain.windows[0].probabilities, result.windows[0].probabilities,
                               atol=1e-5)
    assert plain.windows[0].cam is None


def test_interrupted_run_leaves_no_partial_files(tiny_model, procedure, tmp_path):
    model = LabelModel.load(tiny_model, device="cpu")
    proc = load_procedure(procedure)
    out = tmp_path / "out"
    writer = LabelOutputWriter(out, proc, model.labelset, proc.mentions, 25)

    def crash(window, frames):
        writer.add(window, frames)
        if window.index == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        try:
            label_procedure(proc, model, on_window=crash)
        except BaseException:
            writer.abort()
            raise
    assert list(out.iterdir()) == [out / MARKER]  # the claimed folder, no partial output


def test_refuses_to_write_into_the_input(tiny_model, procedure, capsys):
    rc = cli(["label", str(procedure), "--model", str(tiny_model), "--out",
              str(procedure / "labels"), "--quiet", "--device", "cpu"])
    assert rc == 2 and "lies inside the input" in capsys.readouterr().err
    assert not (procedure / "labels").exists()


def test_export_from_label_dir_and_cohort(tiny_model, procedure, tmp_path):
    from EUSVoiceLabelLib.data.export import export_dataset

    model = LabelModel.load(tiny_model, device="cpu")
    result = label_procedure(load_procedure(procedure), model)
    label_dir = tmp_path / "labelled"
    files = write_label_outputs(result, label_dir)
    assert "frames.seq.nrrd" in files
    # A reviewer corrected window 0.
    rows = list(csv.DictReader(open(label_dir / "labels.csv")))
    rows[0]["reviewed_label"] = "portal_venous_confluence"
    with open(label_dir / "labels.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0].keys()))
        w.writeheader()
        w.writerows(rows)
    out = tmp_path / "export"
    assert cli(["export", str(label_dir), "--out", str(out), "--quiet"]) == 0
    exported = list(csv.DictReader(open(out / "labels.csv")))
    assert len(exported) == 52
    assert {r["label"] for r in exported if r["window"] == "0"} == {"portal_venous_confluence"}
    assert {r["source"] for r in exported if r["window"] == "0"} == {"reviewed"}
    for r in exported[:3] + exported[-3:]:
        from PIL import Image

        img = Image.open(out / r["path"])
        assert img.size == (96, 64)
        assert r["path"].startswith(f"images/{r['label']}/")
    # ImageFolder-compatible.
    import torchvision

    folder = torchvision.datasets.ImageFolder(str(out / "images"))
    assert len(folder) == 52

    cohort = tmp_path / "cohort"
    mf.make_procedure(cohort / "a")
    out2 = tmp_path / "export2"
    export_dataset(cohort, out2, every=5)
    rows = list(csv.DictReader(open(out2 / "labels.csv")))
    assert len(rows) == 2 * 5 and {r["source"] for r in rows} == {"spoken"}
    assert {r["label"] for r in rows} == {"pancreas", "bile_duct"}


def test_heat_map_peaks_on_the_evidence_after_training():
    """A controlled synthetic case: the class is told by a bright square (filled vs hollow) at a
    random place in noise, the voice is the same for every sample (no information), so the
    trained proposed network must look at the square.  Measured: 12 of 24 peaks inside the
    square (50 %) against 6.5 % by chance (the square's share of the image)."""
    from EUSVoiceLabelLib.train.config import TrainConfig
    from EUSVoiceLabelLib.train.loop import predict_proba, train_model

    rng = np.random.default_rng(0)
    n, frames, h, w, side = 24, 3, 96, 144, 30
    images = (rng.random((n, frames, h, w)) * 60).astype(np.uint8)
    labels = np.arange(n) % 2
    boxes = []
    for i in range(n):
        r, c = rng.integers(2, h - side - 2), rng.integers(2, w - side - 2)
        images[i, :, r:r + side, c:c + side] = 230
        if labels[i]:
            images[i, :, r + side // 4:r + 3 * side // 4, c + side // 4:c + 3 * side // 4] = 20
        boxes.append((r, c))
    voices = np.repeat(rng.standard_normal((1, 1024, 66)).astype(np.float32), n, axis=0)
    data = SimpleNamespace(images=images, voices=voices, labels=labels)
    cfg = TrainConfig(variant="proposed", epochs=8, lr=1e-3, batch_size=8, image_size=(h, w),
                      frames=frames, width=0.125, seed=0)
    model = train_model(data, cfg, 2, device="cpu", progress=False).model.eval()
    # Trained to convergence, in eval mode (BatchNorm statistics recalibrated after training).
    assert (predict_proba(model, data, device="cpu").argmax(1) == labels).mean() == 1.0
    hits = 0
    for i in range(n):
        exp = grad_cam(model, torch.from_numpy(images[i:i + 1] / np.float32(255)),
                       torch.from_numpy(voices[i:i + 1]))
        col, row = peak_of(upsample_map(exp.cam, (h, w)))
        r, c = boxes[i]
        hits += (r <= row < r + side) and (c <= col < c + side)
    chance = side * side / (h * w)
    assert hits / n >= 5 * chance, (hits, n)


def test_outputs_carry_the_fused_label_beside_the_networks(tiny_model, procedure, tmp_path):
    """Every output writes the window's fused label; the network's label and confidence keep
    their columns; a window where the network disagrees with what was said is flagged."""
    from EUSVoiceLabelLib.data.mentions import Mention

    model = LabelModel.load(tiny_model, device="cpu")
    proc = load_procedure(procedure)
    plain = label_procedure(proc, model, with_cam=False)
    ids = model.labelset.ids
    # Name, in each window, a landmark the network did not choose (certain: from a file),
    # and in the last one detect it at confidence 0.2 (the network's label then stands).
    said = [ids[(ids.index(w.predicted) + 1) % len(ids)] for w in plain.windows]
    mentions = [Mention(w.time_s, lab, source="file") for w, lab in zip(plain.windows, said)]
    mentions[-1] = Mention(mentions[-1].time_s, said[-1], confidence=0.2, source="auto")
    result = label_procedure(proc, model, mentions)
    out = tmp_path / "out"
    write_label_outputs(result, out)

    windows = list(csv.DictReader(open(out / "labels.csv")))
    expected = said[:-1] + [plain.windows[-1].predicted]
    assert [w["label"] for w in windows] == expected
    assert [w["predicted_label"] for w in windows] == [w.predicted for w in plain.windows]
    assert all(w["needs_review"] == "1" and w["agrees"] == "0" for w in windows)
    assert [float(w["label_confidence"]) for w in windows[:-1]] == [1.0, 1.0]
    frames = list(csv.DictReader(open(out / "frame_labels.csv")))
    by_window = {int(w["window"]): w for w in windows}
    for r in frames:
        w = by_window[int(r["window"])]
        assert (r["label"], r["predicted_label"], r["needs_review"]) == \
            (w["label"], w["predicted_label"], "1")
        assert float(r["predicted_confidence"]) == pytest.approx(float(w["confidence"]))
    land, _ = nrrd.read(str(out / "landmarks.seq.nrrd"))
    for k, r in enumerate(frames):
        values = set(np.unique(land[..., 0, k])) - {0}
        assert values <= {ids.index(r["label"]) + 1}
    names = [lab.name for lab in model.labelset.labels]
    points = json.loads((out / "landmarks.mrk.json").read_text())["markups"][0]["controlPoints"]
    assert [p["label"].rsplit(" ", 1)[0] for p in points] == \
        [names[ids.index(lab)] for lab in expected]
    assert all("network: " in p["description"] for p in points[:-1])
    assert all(p["selected"] for p in points)  # every window is flagged: review colour


def test_end_to_end_counts_a_procedure_where_nothing_was_heard_as_misses(tiny_model):
    """A procedure whose audio holds no spoken landmark (here a tone) is a row of missed
    mentions in the end-to-end report, not the end of the run."""
    from EUSVoiceLabelLib.labelling.endtoend import end_to_end

    report = end_to_end(tiny_model.parent, LabelModel.load(tiny_model, device="cpu"),
                        progress=False)
    assert sorted(report["per_patient"]) == ["p0", "p1"]
    assert report["true_mentions"] == 4 and report["windows"] == 0
    assert report["true_mentions_detected"] == 0.0
    assert report["true_mentions_right"]["fused"] == 0.0
    assert report["false_windows"] is None
