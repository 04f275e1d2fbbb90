"""The README's main command, at the smallest size: every stage runs and the report links
real outputs."""

import csv
import json

from EUSVoiceLabelLib.demo import DemoSettings, run_demo


def test_demo_end_to_end_at_tiny_size(tmp_path):
    out = tmp_path / "demo"
    settings = DemoSettings(patients=3, mentions_per_patient=3, frame_size=(240, 160),
                            image_size=(32, 64), width=0.125, epochs=1)
    report = run_demo(out, settings, device="cpu", progress=False)
    text = report.read_text()
    for section in ("## Leave-one-patient-out evaluation", "## Labelling a held-out procedure",
                    "## Time (s)"):
        assert section in text
    metrics = json.loads((out / "evaluate" / "metrics.json").read_text())
    assert metrics["n_patients"] == 3 and metrics["n_samples"] == 9
    for name in ("confusion_matrix.png", "predictions.csv"):
        assert (out / "evaluate" / name).is_file()
    labels = list(csv.DictReader(open(out / "labels" / "labels.csv")))
    assert labels and all(r["source"] == "auto" for r in labels)  # --mentions auto
    # the detector's phrase and confidence are kept for review beside the prediction
    assert all(r["text"] and 0.0 < float(r["mention_confidence"]) <= 1.0 for r in labels)
    assert (out / "labels" / "scene.mrml").is_file()
    assert (out / "labelled_frames.png").stat().st_size > 1000
    exported = list(csv.DictReader(open(out / "export" / "labels.csv")))
    # 25 frames per window, fewer where a later window takes over overlapping frames.
    assert 0 < len(exported) <= 25 * len(labels)
    assert all((out / "export" / r["path"]).is_file() for r in exported)
    summary = json.loads((out / "demo.json").read_text())
    assert summary["timings_s"]["total"] > 0
    # the report gives the end-to-end figure, the network's own label beside the fused one,
    # and the export carries the fused label
    e2e = summary["end_to_end"]
    assert e2e["windows"] == len(labels) and e2e["true_mentions"] == 3
    assert e2e["right_fused"] <= e2e["paired"] <= 3
    assert "End to end: of the 3 true mentions" in text and "label (fused)" in text
    fused = {int(r["window"]): r["label"] for r in labels}
    assert all(r["label"] == fused[int(r["window"])] for r in exported)
