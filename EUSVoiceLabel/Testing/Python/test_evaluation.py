"""LOPO evaluation: metrics against scikit-learn, no patient leakage, outputs, CLI end to end."""

from __future__ import annotations

import csv
import json
import types

import numpy as np
import pytest

from EUSVoiceLabelLib.core.errors import ConfigError
from EUSVoiceLabelLib.data.vocabulary import LabelSet
from EUSVoiceLabelLib.train import evaluation as ev, folds as lopo, metrics as mt
from EUSVoiceLabelLib.train.config import TrainConfig

SIZE = (32, 64)
FRAMES = 5


# One torch thread (fixture in conftest.py): the 2 cores are shared.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def fake_window_set(n_patients: int = 3, per_patient: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    n = n_patients * per_patient
    labels = (np.arange(n) * 2) % 5
    return types.SimpleNamespace(
        images=rng.integers(0, 255, size=(n, FRAMES, *SIZE)).astype(np.uint8),
        voices=rng.standard_normal((n, 1024, 66)).astype(np.float32),
        labels=labels.astype(np.int64),
        patients=[f"patient{i // per_patient + 1:02d}" for i in range(n)],
        times=np.arange(n, dtype=float) * 2.5,
        labelset=LabelSet.default())


def small_cfg(variant: str = "proposed", **kw) -> TrainConfig:
    base = dict(variant=variant, epochs=1, image_size=SIZE, frames=FRAMES, width=0.125)
    base.update(kw)
    return TrainConfig(**base)


# --------------------------------------------------------------------------- metrics
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_equal_scikit_learn(seed):
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, 5, 60)
    y_pred = np.where(rng.random(60) < 0.6, y_true, rng.integers(0, 5, 60))
    if seed == 1:
        y_pred[y_pred == 3] = 4          # a class never predicted (precision 0/0 -> 0)
    if seed == 2:
        y_true[y_true == 0] = 1          # a class absent from the truth
        y_pred[y_pred == 0] = 2          # ... and from the predictions: not averaged
    m = mt.classification_metrics(y_true, y_pred, 5)
    p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, average="macro",
                                                 zero_division=0)
    assert m["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert m["precision"] == pytest.approx(p)
    assert m["recall"] == pytest.approx(r)
    assert m["f1"] == pytest.approx(f)
    cm = confusion_matrix(y_true, y_pred, labels=range(5)).astype(float)
    rows = cm.sum(axis=1, keepdims=True)
    expect = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    assert np.allclose(m["confusion_matrix"], expect)
    assert np.allclose(np.asarray(m["confusion_matrix"]).sum(1)[rows[:, 0] > 0], 1.0)


def test_bootstrap_over_patient_subsets():
    pats = [f"p{i % 12}" for i in range(120)]
    y_true = np.arange(120) % 5
    y_pred = y_true.copy()
    b = mt.bootstrap_accuracy(y_true, y_pred, pats, seed=0)
    assert b == {"mean": 1.0, "std": 0.0, "n_subsets": 100, "subset_size": 10}
    # patient p0 always wrong: subsets without it score higher -> nonzero spread
    wrong = np.array([p == "p0" for p in pats])
    y_pred = np.where(wrong, (y_true + 1) % 5, y_true)
    b = mt.bootstrap_accuracy(y_true, y_pred, pats, seed=0)
    assert 0.89 < b["mean"] < 0.93 and b["std"] > 0
    assert mt.bootstrap_accuracy(y_true, y_pred, pats, seed=0) == b   # seeded
    assert mt.default_subset_size(12) == 10
    assert mt.default_subset_size(30) == 10
    assert mt.default_subset_size(3) == 2 and mt.default_subset_size(1) == 1
    with pytest.raises(ConfigError):
        mt.bootstrap_accuracy(y_true, y_pred, pats, subset_size=13)


def test_compute_metrics_has_exactly_the_spec_keys():
    probs = np.eye(5)[[0, 1, 2, 2]]
    m = mt.compute_metrics([0, 1, 2, 3], probs, ["a", "a", "b", "b"], LabelSet.default().ids,
                           "proposed", {"epochs": 1})
    assert list(m) == ["accuracy", "precision", "recall", "f1", "labels", "confusion_matrix",
                       "n_samples", "n_patients", "bootstrap", "per_patient", "variant",
                       "config"]
    assert set(m["bootstrap"]) == {"mean", "std", "n_subsets", "subset_size"}
    assert m["per_patient"] == {"a": 1.0, "b": 0.5} and m["accuracy"] == 0.75


# --------------------------------------------------------------------------- folds
def test_lopo_never_trains_on_the_held_out_patient():
    pats = ["b", "a", "c", "a", "b", "c", "c"]
    folds = lopo.lopo_folds(pats)
    assert [f.patient for f in folds] == ["a", "b", "c"]
    seen = []
    for f in folds:
        assert f.patient not in {pats[i] for i in f.train_idx}
        assert {pats[i] for i in f.test_idx} == {f.patient}
        assert len(f.train_idx) + len(f.test_idx) == len(pats)
        seen += f.test_idx.tolist()
    assert sorted(seen) == list(range(len(pats)))          # every window held out once
    with pytest.raises(ConfigError, match="at least 2 patients"):
        lopo.lopo_folds(["a", "a"])
    # run_fold refuses a leaky fold
    ws = fake_window_set()
    leaky = lopo.Fold("patient01", np.arange(len(ws.labels)), np.arange(4))
    with pytest.raises(AssertionError, match="leaked"):
        lopo.run_fold(ws, leaky, small_cfg(), device="cpu", progress=False)


def test_run_fold_is_pure_and_repeatable():
    ws = fake_window_set()
    fold = lopo.lopo_folds(ws.patients)[1]
    a = lopo.run_fold(ws, fold, small_cfg(), device="cpu", progress=False)
    b = lopo.run_fold(ws, fold, small_cfg(), device="cpu", progress=False)
    assert a.patient == "patient02" and np.array_equal(a.indices, fold.test_idx)
    assert a.probs.shape == (4, 5) and np.array_equal(a.probs, b.probs)
    assert a.train_info["n_train"] == 8


# --------------------------------------------------------------------------- outputs
def test_evaluate_cohort_writes_the_three_outputs_and_resumes(tmp_path, monkeypatch):
    import matplotlib.image as mpimg

    ws = fake_window_set()
    m = ev.evaluate_cohort(ws, small_cfg(), tmp_path, device="cpu", progress=False)
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert list(on_disk) == list(mt.METRIC_KEYS)
    assert on_disk["n_samples"] == 12 and on_disk["n_patients"] == 3
    assert on_disk["variant"] == "proposed" and on_disk["config"]["epochs"] == 1
    assert on_disk["bootstrap"]["subset_size"] == 2
    with open(tmp_path / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    ids = LabelSet.default().ids
    assert list(rows[0]) == ["patient", "time_s", "true", "predicted"] + [f"p_{i}" for i in ids]
    assert len(rows) == 12 and rows[0]["true"] == "pancreas"
    for r in rows:
        probs = [float(r[f"p_{i}"]) for i in ids]
        assert abs(sum(probs) - 1) < 1e-4 and r["predicted"] == ids[int(np.argmax(probs))]
    acc = np.mean([r["true"] == r["predicted"] for r in rows])
    assert acc == pytest.approx(on_disk["accuracy"])
    img = mpimg.imread(tmp_path / "confusion_matrix.png")
    assert img.shape[0] > 300 and img.shape[1] > 300

    # finished folds are reused: no training happens on a second call
    def boom(*a, **k):
        raise AssertionError("retrained a finished fold")
    monkeypatch.setattr(ev, "run_fold", boom)
    again = ev.evaluate_cohort(ws, small_cfg(), tmp_path, device="cpu", progress=False)
    assert again["accuracy"] == m["accuracy"] and again["per_patient"] == m["per_patient"]
    with pytest.raises(AssertionError, match="retrained"):  # another config is not reused
        ev.evaluate_cohort(ws, small_cfg(lr=0.5), tmp_path, device="cpu", progress=False)


def test_all_variants_table(tmp_path):
    ws = fake_window_set(n_patients=2, per_patient=3)
    ws.settings = None
    res = ev.evaluate_all(ws, {"epochs": 1, "image_size": SIZE, "frames": FRAMES,
                               "width": 0.125}, tmp_path,
                          variants=["proposed", "voice_only", "vgg16_pretrained"],
                          device="cpu", progress=False, pretrain_voice=False)
    table = (tmp_path / "table_iii.md").read_text()
    assert table == res["table"]
    assert "| Proposed, image + voice (no pretrained weights) | `proposed` | 0.76 | 0.74" in table
    assert "`voice_only` | 0.42 | 0.40 | 0.40 | 0.38 |" in table
    assert "not run: no vgg16 weights" in table
    for v in ("proposed", "voice_only"):
        assert (tmp_path / v / "metrics.json").is_file()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["vgg16_pretrained"] is None
    assert summary["proposed"]["accuracy"] == res["results"]["proposed"]["accuracy"]


# --------------------------------------------------------------------------- CLI end to end
@pytest.fixture(scope="module")
def tiny_cohort(tmp_path_factory):
    from EUSVoiceLabelLib.synth import synth_cohort

    out = tmp_path_factory.mktemp("cohort")
    synth_cohort(out, patients=3, seed=2, counts=2, frame_size=(128, 96), progress=False,
                 force=True, workers=1)
    return out


def test_cli_evaluate_and_train_on_a_synthetic_cohort(tiny_cohort, tmp_path, monkeypatch):
    from EUSVoiceLabelLib.cli import main
    from EUSVoiceLabelLib.train.checkpoints import load_checkpoint

    monkeypatch.setenv("EUSVOICELABEL_CACHE", str(tmp_path / "cache"))
    small = ["--image-size", "32x64", "--frames", "5", "--width", "0.125", "--epochs", "1",
             "--quiet", "--device", "cpu"]
    out = tmp_path / "eval"
    assert main(["evaluate", str(tiny_cohort), "--out", str(out), "--variant", "image_only",
                 *small]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["variant"] == "image_only" and m["n_patients"] == 3 and m["n_samples"] == 6
    assert m["config"]["preprocessing"]["image_size"] == [32, 64]
    assert (out / "predictions.csv").is_file() and (out / "confusion_matrix.png").is_file()
    cal = json.loads((out / "calibration.json").read_text())
    assert cal["variant"] == "image_only" and cal["n_samples"] == 6
    assert 0.05 <= cal["temperature"] <= 100 and cal["nll_calibrated"] <= cal["nll_raw"] + 1e-4

    # The held-out temperature goes into the checkpoint of the same variant, and labelling
    # fuses with it; for another variant it is refused before any training.
    calibrated = tmp_path / "calibrated.pt"
    assert main(["train", str(tiny_cohort), "--out", str(calibrated), "--variant",
                 "image_only", "--temperature-from", str(out), "--no-verifier", *small]) == 0
    from EUSVoiceLabelLib.labelling.run import LabelModel
    assert LabelModel.load(calibrated, device="cpu").temperature == \
        pytest.approx(cal["temperature"])
    assert main(["train", str(tiny_cohort), "--out", str(tmp_path / "m3.pt"),
                 "--temperature-from", str(out), *small]) == 2
    assert not (tmp_path / "m3.pt").exists()

    model = tmp_path / "model.pt"
    assert main(["train", str(tiny_cohort), "--out", str(model), *small]) == 0
    loaded = load_checkpoint(model, labelset=LabelSet.default(), variant="proposed")
    assert loaded.preprocessing["frames"] == 5 and loaded.meta["extra"]["n_windows"] == 6
    assert loaded.preprocessing["spectrogram"]["scale"] in ("log", "magnitude")
    assert not (tmp_path / "model.pt.resume.pt").exists()
    assert loaded.meta["calibration"] == {}  # no --temperature-from: temperature 1
    # The mention verifier learnt from the cohort's recordings rides in the checkpoint
    # (not with --no-verifier), and labelling with detected mentions is checked by it.
    assert loaded.verifier_state is not None and load_checkpoint(calibrated).verifier_state is None
    assert LabelModel.load(model, device="cpu").verifier is not None
    patient = sorted(p for p in tiny_cohort.iterdir() if p.is_dir())[0]
    assert main(["label", str(patient), "--model", str(model), "--mentions", "auto", "--out",
                 str(tmp_path / "labels"), "--quiet", "--device", "cpu"]) == 0
    assert (tmp_path / "labels" / "labels.csv").is_file()
    # detect --model writes the verified mentions: a subset of the spotter's candidates at
    # 0.2, each with the combined confidence; a model without a verifier is refused.
    verified = tmp_path / "verified.csv"
    assert main(["detect", str(patient), "--model", str(model), "--out", str(verified),
                 "--quiet"]) == 0
    from EUSVoiceLabelLib.data.mentions import read_mentions_csv
    rows = read_mentions_csv(verified, LabelSet.default())
    assert rows and all(m.source == "auto" and 0.5 <= m.confidence <= 1 for m in rows)
    assert main(["detect", str(patient), "--model", str(calibrated), "--out",
                 str(tmp_path / "v2.csv"), "--quiet"]) == 2
    assert not (tmp_path / "v2.csv").exists()
    # A calibrated vocabulary of the model's labels is used (every threshold 1: nothing is
    # kept); one of other labels is refused.
    strict = LabelSet.default().to_json()
    for lab in strict["labels"]:
        lab["thresholds"] = {ph: 1.0 for ph in [lab["name"], *lab.get("synonyms", [])]}
    (tmp_path / "strict.json").write_text(json.dumps(strict))
    assert main(["detect", str(patient), "--model", str(model), "--vocab",
                 str(tmp_path / "strict.json"), "--out", str(tmp_path / "v3.csv"),
                 "--quiet"]) == 0
    assert (tmp_path / "v3.csv").read_text().strip().splitlines()[1:] == []
    other = {"labels": [{"id": "liver", "name": "liver"}]}
    (tmp_path / "other.json").write_text(json.dumps(other))
    assert main(["detect", str(patient), "--model", str(model), "--vocab",
                 str(tmp_path / "other.json"), "--out", str(tmp_path / "v4.csv"),
                 "--quiet"]) == 2
    assert not (tmp_path / "v4.csv").exists()
    # a pretrained variant without weights is a one-line error, exit code 2
    assert main(["evaluate", str(tiny_cohort), "--out", str(tmp_path / "e2"), "--variant",
                 "vgg16_pretrained", *small]) == 2
    assert main(["train", str(tiny_cohort), "--out", str(tmp_path / "m2.pt"), "--variant",
                 "all", *small]) == 2
