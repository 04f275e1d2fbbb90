"""Whole-procedure labelling (``label --whole``, ``train-frames``, ``export --every`` of the
inferred frames, the Slicer files and the module's whole-procedure logic) on tiny real data:
procedures whose scenes outlast their spoken windows, with an unspoken stretch of noise."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from EUSVoiceLabelLib.cli import main as cli
from EUSVoiceLabelLib.core.paper import FPS
from EUSVoiceLabelLib.data.media import write_wav
from EUSVoiceLabelLib.data.procedure import load_procedure
from EUSVoiceLabelLib.labelling.framemodel import load_frame_model
from EUSVoiceLabelLib.labelling.runs import runs_of
from EUSVoiceLabelLib.labelling.whole import (Anchor, WholeSettings, calibrate_rejection,
                                              forward_backward, label_whole, transition_matrix)
from EUSVoiceLabelLib.slicer.files import write_frame_sequence

SIZE = (64, 48)  # (W, H)
#: (start_s, end_s, scene) of every procedure: a disc left (pancreas), right (bile duct), noise.
SCENES = ((0.0, 2.0, "pancreas"), (2.0, 4.0, "bile_duct"), (4.0, 6.0, None),
          (6.0, 8.0, "pancreas"))
MENTIONS = ((0.6, "pancreas"), (2.6, "bile_duct"), (6.6, "pancreas"))


def write_scene_procedure(folder: Path, seed: int) -> Path:
    """8 s at 25 fps: each scene holds its disc for 2 s (moving a little), the mention's window
    covers 1 s of it; 4-6 s is noise no one speaks over."""
    rng = np.random.default_rng(seed)
    w, h = SIZE
    n = int(8 * FPS)
    frames = rng.integers(0, 50, size=(n, h, w), dtype=np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    for i in range(n):
        t = i / FPS
        scene = next(s for a, b, s in SCENES if a <= t < b)
        if scene is None:
            continue
        cx = (0.3 if scene == "pancreas" else 0.7) * w + np.sin(t * 3) * 2
        frames[i][(xx - cx) ** 2 + (yy - h / 2) ** 2 < (h / 4) ** 2] = 210
    folder.mkdir(parents=True, exist_ok=True)
    write_frame_sequence(folder / "frames.seq.nrrd", frames, np.arange(n) / FPS)
    rate = 16000
    audio = (0.003 * rng.standard_normal(8 * rate)).astype(np.float32)
    for t0, label in MENTIONS:
        i = int(t0 * rate)
        audio[i:i + rate // 2] += 0.3 * np.sin(
            2 * np.pi * (300 if label == "pancreas" else 800) * np.arange(rate // 2) / rate)
    write_wav(folder / "audio.wav", audio, rate)
    (folder / "mentions.csv").write_text(
        "time_s,label,end_s\n" + "".join(f"{t},{lab},{t + 0.5}\n" for t, lab in MENTIONS))
    return folder


def scene_at(t: float):
    return next(s for a, b, s in SCENES if a <= t < b)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A cohort of two such procedures, a tiny two-branch model and a frame model from the
    command line (calibration included)."""
    from EUSVoiceLabelLib.data.dataset import build_window_set
    from EUSVoiceLabelLib.train.checkpoints import preprocessing_settings, save_checkpoint
    from EUSVoiceLabelLib.train.config import TrainConfig
    from EUSVoiceLabelLib.train.loop import train_model

    root = tmp_path_factory.mktemp("whole")
    for i in range(2):
        write_scene_procedure(root / "cohort" / f"p{i}", seed=i)
    cache = root / "cache"
    ws = build_window_set(root / "cohort", image_size=(32, 48), frames=25, cache_dir=cache,
                          progress=False)
    cfg = TrainConfig(epochs=1, batch_size=4, image_size=(32, 48), frames=25, width=0.0625,
                      seed=0)
    res = train_model(ws, cfg, len(ws.labelset), device="cpu", progress=False)
    save_checkpoint(root / "model.pt", res, ws.labelset, preprocessing_settings(ws, cfg))
    assert cli(["train-frames", str(root / "cohort"), "--out", str(root / "model.frames.pt"),
                "--epochs", "2", "--cache", str(cache), "--quiet"]) == 0
    write_scene_procedure(root / "new", seed=7)  # an unseen procedure
    return root


@pytest.fixture(scope="module")
def whole_out(models):
    out = models / "out"
    assert cli(["label", str(models / "new"), "--model", str(models / "model.pt"), "--out",
                str(out), "--whole", "--reject-below", "0.9", "--quiet", "--device", "cpu",
                "--preview-s", "0.4"]) == 0
    return out


def read_rows(path: Path) -> list[dict]:
    return list(csv.DictReader(open(path, encoding="utf-8")))


# --------------------------------------------------------------------------- the command
def test_frame_model_file_carries_its_calibration(models):
    fm = load_frame_model(models / "model.frames.pt")
    cal = fm.calibration
    assert cal["held_out"] and cal["n_frames"] > 0 and 0.0 <= fm.reject_below <= 1.0
    assert fm.reject_below == cal["reject_below"]


def test_label_whole_covers_every_frame_with_its_source(models, whole_out):
    rows = read_rows(whole_out / "frame_labels.csv")
    n = load_procedure(models / "new").n_frames
    assert [int(r["frame_index"]) for r in rows] == list(range(n))
    assert list(rows[0])[-1] == "source" and list(rows[0])[:4] == [
        "frame_index", "time_s", "label", "confidence"]
    windows = read_rows(whole_out / "labels.csv")
    spoken = {int(r["frame_index"]) for r in rows if r["source"] == "spoken window"}
    expected = {round(t * FPS) + k for t, _ in MENTIONS for k in range(25)}
    assert spoken == expected
    by_window = {int(w["window"]): w["label"] for w in windows}
    for r in rows:
        if r["source"] == "spoken window":  # the fused label of the mention work
            assert r["label"] == by_window[int(r["window"])]
        else:
            assert r["source"] == "inferred" and r["window"] == ""
    # Frames of a spoken scene outside its window take the scene's label; the unspoken noise
    # is rejected.
    inferred = [r for r in rows if r["source"] == "inferred"]
    scened = [r for r in inferred if scene_at(float(r["time_s"]))]
    right = sum(r["label"] == scene_at(float(r["time_s"])) for r in scened)
    assert right / len(scened) > 0.8
    noise = [r for r in inferred if 4.3 <= float(r["time_s"]) < 5.7]
    assert sum(r["label"] == "none" for r in noise) / len(noise) > 0.8
    info = json.loads((whole_out / "run.json").read_text())
    assert info["whole"]["labelled_frames"] == n and info["whole"]["reject_below"] == 0.9
    assert info["frame_model"].endswith("model.frames.pt")


def test_timeline_is_a_real_picture(whole_out):
    with Image.open(whole_out / "timeline.png") as im:
        assert im.format == "PNG" and im.size[0] >= 800 and im.size[1] >= 300
        pixels = np.asarray(im.convert("RGB")).astype(int)
    colourful = np.abs(pixels[..., 0] - pixels[..., 2]) > 40
    assert colourful.mean() > 0.005  # landmark colours drawn, not a blank canvas


def test_stride_and_rejection(models, tmp_path):
    out = tmp_path / "stride"
    assert cli(["label", str(models / "new"), "--model", str(models / "model.pt"), "--out",
                str(out), "--whole", "--stride", "5", "--reject-below", "1", "--quiet",
                "--device", "cpu", "--preview-s", "0"]) == 0
    rows = read_rows(out / "frame_labels.csv")
    assert [int(r["frame_index"]) for r in rows] == list(range(0, 200, 5))
    assert all(r["label"] == "none" for r in rows if r["source"] == "inferred")
    assert not (out / "whole_frames.seq.nrrd").exists()
    assert cli(["label", str(models / "new"), "--model", str(models / "model.pt"), "--out",
                str(out), "--stride", "5", "--quiet"]) == 2  # --stride needs --whole


def test_calibration_and_forward_backward():
    rng = np.random.default_rng(0)
    conf = rng.uniform(0, 1, 4000)
    right = rng.uniform(0, 1, 4000) < conf  # P(right | c) = c: the threshold is 0.5
    cal = calibrate_rejection(conf, right)
    assert 0.4 < cal["reject_below"] < 0.6 and cal["accuracy_kept"] > cal["accuracy_all"]
    # The scaled forward-backward equals brute-force marginals over every path.
    import itertools

    stay = rng.uniform(0.2, 0.99, 5)  # one per step, as the scene-change evidence gives
    log_e = np.log(rng.uniform(0.05, 1, (5, 3)))
    post = forward_backward(log_e, stay)
    brute = np.zeros((5, 3))
    for path in itertools.product(range(3), repeat=5):
        p = (1 / 3) * np.exp(sum(log_e[t, s] for t, s in enumerate(path)))
        p *= np.prod([transition_matrix(3, stay[t + 1])[a, b]
                      for t, (a, b) in enumerate(zip(path, path[1:]))])
        for t, s in enumerate(path):
            brute[t, s] += p
    np.testing.assert_allclose(post, brute / brute.sum(1, keepdims=True), atol=1e-10)


def test_streaming_decodes_in_chunks_and_each_frame_once(models, monkeypatch):
    proc = load_procedure(models / "new")
    fm = load_frame_model(models / "model.frames.pt")
    requests = []
    real = type(proc).frames_at

    def spy(self, times):
        requests.append(len(times))
        return real(self, times)

    monkeypatch.setattr(type(proc), "frames_at", spy)
    anchors = [Anchor.from_mention(k, t, lab, fm.ids, 25, FPS)
               for k, (t, lab) in enumerate(MENTIONS)]
    res = label_whole(proc, fm, anchors, WholeSettings(chunk_frames=32))
    assert len(res) == proc.n_frames
    assert max(requests) <= 32  # never the whole procedure at once
    assert sum(requests) == proc.n_frames + 25 * len(MENTIONS)  # each frame decoded once
    assert res.posterior.nbytes < 40 * proc.n_frames  # a few numbers a frame, no pixels
    runs = runs_of(res.rows())
    assert sum(r.frames for r in runs) == proc.n_frames


def test_cancel_keeps_the_frames_scored(models):
    from EUSVoiceLabelLib.core.progress import CallbackProgress

    proc = load_procedure(models / "new")
    fm = load_frame_model(models / "model.frames.pt")
    calls = []
    res = label_whole(proc, fm, [], WholeSettings(chunk_frames=50),
                      progress=CallbackProgress(lambda d, t: calls.append(d),
                                                lambda: len(calls) >= 2))
    assert res.cancelled and 0 < len(res) < proc.n_frames


# --------------------------------------------------------------------------- export
def test_export_every_writes_inferred_frames_with_confidence(whole_out, tmp_path):
    out = tmp_path / "dataset"
    assert cli(["export", str(whole_out), "--out", str(out), "--every", "10", "--quiet"]) == 0
    rows = read_rows(out / "labels.csv")
    assert list(rows[0]) == ["path", "label", "patient", "time_s", "frame_index", "k",
                             "window", "source", "confidence"]
    inferred = [r for r in rows if r["source"] == "inferred"]
    frame_rows = [r for r in read_rows(whole_out / "frame_labels.csv")
                  if r["source"] == "inferred"]
    expected = [r for r in frame_rows[::10] if r["label"] != "none"]
    assert [int(r["frame_index"]) for r in inferred] == [int(r["frame_index"])
                                                         for r in expected]
    for r, e in zip(inferred, expected):
        assert r["label"] == e["label"] and float(r["confidence"]) == float(e["confidence"])
        with Image.open(out / r["path"]) as im:
            assert im.size == SIZE
    assert any(r["source"] == "predicted" for r in rows)  # the spoken windows, as before


# --------------------------------------------------------------------------- Slicer
@pytest.fixture(scope="module")
def app():
    """One application-like scene with the module, kept for the whole module (slicer-core
    must not tear a wired scene down mid-run)."""
    ms = pytest.importorskip("mrmlscene")
    if ms.SKIP_REASON is not None:
        pytest.skip(ms.SKIP_REASON)
    scene = ms.AppScene()
    scene.module = ms.load_module(scene)
    yield scene
    scene.clear()


def test_whole_sequence_and_scene_load_in_slicer(app, whole_out):
    import vtk

    app.clear()
    rows = read_rows(whole_out / "frame_labels.csv")
    seq = app.scene.AddNewNodeByClass("vtkMRMLSequenceNode")
    storage = app.scene.AddNewNodeByClass("vtkMRMLSequenceStorageNode")
    storage.SetFileName(str(whole_out / "whole_labels.seq.mrb"))
    assert storage.ReadData(seq) == 1
    assert seq.GetDataNodeClassName() == "vtkMRMLTextNode"
    assert seq.GetNumberOfDataNodes() == len(rows)
    for i in (0, 40, 110, len(rows) - 1):
        assert float(seq.GetNthIndexValue(i)) == pytest.approx(float(rows[i]["time_s"]))
        text = seq.GetNthDataNode(i).GetText()
        assert text.endswith(f"({rows[i]['source']})")
    app.clear()
    app.import_scene(whole_out / "whole.mrml")
    browser = app.scene.GetFirstNodeByClass("vtkMRMLSequenceBrowserNode")
    master = browser.GetMasterSequenceNode()
    assert master.GetDataNodeClassName() == "vtkMRMLTextNode"
    assert browser.GetNumberOfItems() == len(rows)  # every labelled frame is an item
    collection = vtk.vtkCollection()
    browser.GetSynchronizedSequenceNodes(collection, True)
    names = {collection.GetItemAsObject(i).GetName() for i in range(collection.GetNumberOfItems())}
    assert any(n.endswith("frames") for n in names)
    text = browser.GetProxyNode(master)
    for item in (73, len(rows) - 1, 0):  # each item shows its own frame's label
        browser.SetSelectedItemNumber(item)
        assert text.GetText().endswith(f"({rows[item]['source']})")
        frames = next(browser.GetProxyNode(collection.GetItemAsObject(i))
                      for i in range(collection.GetNumberOfItems())
                      if collection.GetItemAsObject(i) is not master)
        assert frames.GetImageData() is not None


def test_module_labels_the_whole_procedure_and_reviews_runs(app, models):
    app.clear()
    module = app.module
    logic = module.EUSVoiceLabelLogic()
    frames = logic.loadProcedure(models / "new")
    proc = logic.procedureForSequence(frames)
    mentions = logic.mentionsToTable(proc.mentions, frames)
    results = logic.label(frames, mentions, models / "model.pt", device="cpu",
                          withHeatMaps=False)
    progress = []
    timeline = logic.labelWhole(results, rejectBelow=0.9,
                                progressCallback=lambda d, t: progress.append((d, t)))
    assert progress and progress[-1][0] == progress[-1][1] == proc.n_frames
    columns, rows = logic.readTable(timeline)
    assert columns[:4] == ["run", "start_s", "end_s", "label"]
    assert sum(int(r[columns.index("frames")]) for r in rows) == proc.n_frames
    # Jump to a run; every item of the browser shows a whole-procedure label.
    item = logic.jumpToRun(timeline, len(rows) - 1)
    assert item == frames.GetNumberOfDataNodes() - 1 or item >= 0
    seq = timeline.GetNodeReference(module.REF_WHOLE_TEXT)
    browser = logic.browserForSequence(frames, show=False)
    text = browser.GetProxyNode(seq)
    for i in range(0, frames.GetNumberOfDataNodes(), 17):
        browser.SetSelectedItemNumber(i)
        assert text.GetText()
    # Correct two runs at once: every frame of them takes the label.
    logic.reviewRuns(timeline, [0, 1], "bile_duct")
    labelled = logic.wholeFrameLabels(timeline)
    columns, rows = logic.readTable(timeline)
    end = float(rows[1][columns.index("end_s")])
    first = [r for r in labelled if r["time_s"] < end - 1e-6]
    assert first and all(r["label"] == "bile_duct" and r["source"] == "reviewed"
                         for r in first)
    assert rows[0][columns.index("status")] in ("corrected", "accepted")
    text = browser.GetProxyNode(timeline.GetNodeReference(module.REF_WHOLE_TEXT))
    browser.SetSelectedItemNumber(1)
    browser.SetSelectedItemNumber(0)
    assert text.GetText().startswith("Bile duct") and "(reviewed)" in text.GetText()
    path = logic.exportWhole(timeline, models / "reviewed_frame_labels.csv")
    exported = read_rows(path)
    assert len(exported) == proc.n_frames and exported[0]["source"] == "reviewed"


def test_match_curve_is_fitted_per_procedure_with_the_cohorts_as_fallback(models):
    from EUSVoiceLabelLib.labelling.whole import descriptors, fit_match

    proc = load_procedure(models / "new")
    wins = [descriptors(proc.frames_at((round(t * FPS) + np.arange(25)) / FPS))
            for t, _ in MENTIONS]
    fitted = fit_match(wins, [0, 4, 0])
    assert fitted is not None and fitted.a > 0  # more similar: more likely the same scene
    own = fitted.same_scene(np.sum(wins[1] * fitted.centroids[1], axis=1))
    other = fitted.same_scene(np.sum(wins[1] * fitted.centroids[0], axis=1))
    assert own.min() > 0.5 > other.max()
    assert fit_match(wins[:1], [0]) is None  # one landmark spoken: nothing to fit
    fallback = fit_match(wins[:1], [0], fallback=(fitted.a, fitted.c))
    assert (fallback.a, fallback.c) == (fitted.a, fitted.c)
    assert load_frame_model(models / "model.frames.pt").match_curve is not None
