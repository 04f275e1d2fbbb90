"""``eusvoicelabel demo``: the whole pipeline on a small synthetic cohort, on a CPU.

1. ``synth``: a small cohort (training patients) and one extra, held-out procedure;
2. ``evaluate``: leave-one-patient-out cross-validation of the proposed network at a reduced
   image size and width;
3. ``train``: one model on every training patient, calibrated by the temperature fitted on
   the held-out folds of step 2;
4. ``label``: the held-out procedure, with mentions found automatically in its audio
   (``--mentions auto``), then ``detect --evaluate``-style agreement with its true mentions;
5. ``export``: the labelled frames as an image dataset;
6. ``report.md``: the metrics table, the confusion matrix and a strip of labelled frames with
   their heat maps.

The reduced settings (frame size, image size, width, epochs) are chosen so the whole demo runs
in about 5 minutes on 2 CPU cores (well inside 10); they are written into the report.  The numbers it reports
are those of a tiny cohort trained briefly: the demo shows the pipeline working end to end, the
benchmarks and ``evaluate`` on a paper-scale cohort measure accuracy.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Optional

import matplotlib
import matplotlib.pyplot as plt
import numpy as np

from .core.fileio import atomic_path, atomic_write_text
from .core.paper import WINDOW_FRAMES
from .core.progress import ProgressLike, as_progress
from .data.dataset import build_window_set
from .data.export import export_dataset
from .data.mentions import read_mentions_csv
from .data.outputs import OutputKind, claim_output, json_with_keys
from .data.vocabulary import LabelSet
from .labelling.endtoend import score_result, summarise
from .labelling.folder import label_to_folder
from .speech.verify import train_verifier
from .synth import synth_cohort
from .train.checkpoints import preprocessing_settings, save_checkpoint
from .core.presets import preset_settings
from .train.config import TrainConfig
from .train.evaluation import evaluate_cohort, read_calibration
from .train.loop import train_model

log = logging.getLogger(__name__)


@dataclass
class DemoSettings:
    """Sizes of the demo run (small enough for a laptop CPU)."""

    patients: int = 6
    mentions_per_patient: int = 8
    frame_size: tuple[int, int] = (360, 240)  # (W, H) of the synthetic video
    image_size: tuple[int, int] = (64, 128)  # (H, W) network input
    frames: int = WINDOW_FRAMES
    width: float = 0.25  # fraction of the paper's channel counts
    epochs: Optional[int] = None  # None: 15 (its labels lean on fusion), or the preset's
    lr: float = 1e-3
    seed: int = 0
    preset: Optional[str] = None  # a named configuration (core.presets) over these sizes


def _step(name: str, t0: float) -> None:
    log.info("demo: %s done (%.0f s so far)", name, time.perf_counter() - t0)


#: ``demo --out``: what :func:`run_demo` writes; an earlier demo folder is recognised by its
#: marker or its demo.json.
DEMO_OUTPUT = OutputKind("demo", "an 'eusvoicelabel demo' folder", folder=True,
                         signature=json_with_keys("settings", "timings_s", "metrics",
                                                  name="demo.json"))
DEMO_FOLDERS = ("cohort", "heldout", "evaluate", "labels", "export", "cache")


def run_demo(out: Path, settings: Optional[DemoSettings] = None, device: str = "cpu",
             progress: ProgressLike = True, force: bool = False) -> Path:
    """Run the demo into ``out`` and return the path of ``report.md`` (``progress``: see
    :mod:`.core.progress`)."""
    s = settings or DemoSettings()
    progress = as_progress(progress)
    out = Path(out)
    # A new or empty folder, or (--force) an earlier demo: a folder holding anything else is
    # never written into, so --force never deletes what the demo did not write.
    claim_output(out, DEMO_OUTPUT, replace=force)
    for name in DEMO_FOLDERS:
        shutil.rmtree(out / name, ignore_errors=True)
    t0 = time.perf_counter()
    timings: dict[str, float] = {}

    def mark(name: str, since: float) -> float:
        now = time.perf_counter()
        timings[name] = round(now - since, 1)
        _step(name, t0)
        return now

    t = time.perf_counter()
    cohort = synth_cohort(out / "cohort", patients=s.patients, seed=s.seed,
                          counts=s.mentions_per_patient, progress=progress,
                          frame_size=s.frame_size)
    # The held-out procedure: another patient from another seed, never seen in training.
    heldout_root = synth_cohort(out / "heldout", patients=1, seed=s.seed + 1000,
                                counts=s.mentions_per_patient, progress=progress,
                                frame_size=s.frame_size, embedded_audio=False)
    heldout = sorted(p for p in heldout_root.iterdir() if p.is_dir())[0]
    t = mark("synth", t)

    labelset = LabelSet.default()
    sizes = {"epochs": 15, "lr": s.lr, "image_size": s.image_size, "width": s.width}
    cfg = TrainConfig.from_settings(sizes, preset_settings(s.preset), variant="proposed",
                                    epochs=s.epochs, frames=s.frames, seed=s.seed)
    # The report states what was trained.
    s = replace(s, epochs=cfg.epochs, lr=cfg.lr, image_size=cfg.image_size,
                            width=cfg.width)
    ws = build_window_set(cohort, labelset, settings=cfg.window_settings(),
                          cache_dir=out / "cache", progress=progress)
    metrics = evaluate_cohort(ws, cfg, out / "evaluate", device=device, progress=progress,
                              resume=False)
    t = mark("evaluate", t)

    result = train_model(ws, cfg, len(labelset), device=device, progress=progress)
    model_path = out / "model.pt"
    # The held-out folds' temperature calibrates the network for label fusion (docs/fusion.md).
    calibration = read_calibration(out / "evaluate", cfg.variant)
    # One member, fewer epochs: the demo's cohort is tiny and its budget minutes.
    verifier = train_verifier(cohort, labelset, progress=progress, seed=s.seed, members=1,
                              epochs=20)
    save_checkpoint(model_path, result, labelset, preprocessing_settings(ws, cfg),
                    {"cohort": str(cohort), "demo": asdict(s)}, calibration=calibration,
                    verifier=None if verifier is None else verifier.to_state())
    t = mark("train", t)

    label_result, files = label_to_folder(heldout, model_path, out / "labels", mentions="auto",
                                          device=device, progress=progress)
    t = mark("label", t)
    truth = read_mentions_csv(heldout / "mentions.csv", labelset)
    detection = _detection_agreement(truth, [w.mention for w in label_result.windows])
    endtoend = summarise([score_result(label_result, truth)])

    export_dataset(out / "labels", out / "export")
    mark("export", t)

    strip = out / "labelled_frames.png"
    _plot_strip(strip, label_result)
    timings["total"] = round(time.perf_counter() - t0, 1)
    report = out / "report.md"
    _write_report(report, s, metrics, label_result, detection, timings, heldout, files,
                  endtoend, calibration)
    atomic_write_text(out / "demo.json", json.dumps({
        "settings": asdict(s), "timings_s": timings,
        "metrics": {k: metrics[k] for k in ("accuracy", "precision", "recall", "f1")},
        "detection": detection, "calibration": calibration,
        "end_to_end": {k: v for k, v in endtoend.items() if k != "rows"}}, indent=2) + "\n")
    return report


def _detection_agreement(truth, found, tolerance_s: float = 0.5) -> dict:
    """Matched mentions (same label, onset within tolerance) between truth and detections."""
    used: set[int] = set()
    hits = 0
    for m in found:
        for i, t in enumerate(truth):
            if i not in used and t.label == m.label and abs(t.time_s - m.time_s) <= tolerance_s:
                used.add(i)
                hits += 1
                break
    return {"true_mentions": len(truth), "detected": len(found), "matched": hits,
            "recall": hits / len(truth) if truth else 0.0,
            "precision": hits / len(found) if found else 0.0}


def _endtoend_line(e: dict) -> str:
    """The end-to-end figure of the held-out procedure in words (labelling.endtoend)."""
    right = e["true_mentions_right"]
    return (f"End to end: of the {e['true_mentions']} true mentions, "
            f"{e['right_fused']} got a window with the right label "
            f"(fraction {right['fused']:.2f}; the network's own label: {e['right_network']}, "
            f"{right['network']:.2f}; the label heard: {e['right_spoken']}, "
            f"{right['spoken']:.2f}); {e['windows'] - e['paired']} of the {e['windows']} "
            f"written windows are not a true mention; {e['flagged']} windows flagged for "
            "review (the network disagrees with what was heard, the label is uncertain, or it "
            "was heard with low confidence). "
            "The label every output writes is the fused one (docs/fusion.md).")


def _plot_strip(path: Path, result, max_windows: int = 6) -> None:
    """One column per labelled window: its middle frame with the heat map over it."""
    matplotlib.use("Agg")

    windows = result.windows[:max_windows]
    if not windows:
        return
    fig, axes = plt.subplots(1, len(windows), figsize=(max(3.2 * len(windows), 6.4), 2.8),
                             squeeze=False)
    for ax, w in zip(axes[0], windows):
        mid = w.time_s + len(w.frame_indices) / (2 * result.procedure.fps)
        frame = result.procedure.frames_at([mid])[0]
        ax.imshow(frame, cmap="gray", vmin=0, vmax=255)
        if w.cam is not None:
            ax.imshow(np.ma.masked_less(w.cam, 0.2), cmap="inferno", alpha=0.5, vmin=0, vmax=1)
        if w.peak is not None:
            ax.plot(*w.peak, "c+", markersize=12, mew=2)
        name = result.labelset.get(w.label).name
        said = result.labelset.get(w.spoken_label).name if w.spoken_label in result.labelset \
            else "?"
        ax.set_title(f"t={w.time_s:.1f}s  {name} ({w.label_confidence:.2f})\nsaid: {said}, "
                     f"network: {result.labelset.get(w.predicted).name}", fontsize=8)
        ax.axis("off")
    fig.suptitle("Held-out procedure: labelled windows, frame + Grad-CAM heat map",
                 fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def _calibration_line(c: dict) -> str:
    """The network's calibration on the held-out folds in words (train.metrics.fit_temperature)."""
    return (f"Calibration on the held-out folds: temperature {c['temperature']:.2f} "
            f"(negative log-likelihood {c['nll_raw']:.2f} -> {c['nll_calibrated']:.2f}, "
            f"expected calibration error {c['ece_raw']:.2f} -> {c['ece_calibrated']:.2f}); the "
            "model labels with it, so label fusion weighs the network as often right as it was "
            "on unseen patients.")


def _write_report(path: Path, s: DemoSettings, metrics: dict, result, detection: dict,
                  timings: dict, heldout: Path, files: dict, endtoend: dict,
                  calibration: dict) -> None:
    b = metrics["bootstrap"]
    lines = [
        "# EUSVoiceLabel demo report", "",
        f"Synthetic cohort: {s.patients} patients x {s.mentions_per_patient} mentions "
        f"({metrics['n_samples']} windows), video {s.frame_size[0]}x{s.frame_size[1]}; "
        f"network input {s.frames} x {s.image_size[0]} x {s.image_size[1]}, width "
        f"{s.width} of the paper's channels, {s.epochs} epochs, lr {s.lr}"
        f"{', preset ' + s.preset if s.preset else ''}.", "",
        "These are the numbers of a tiny cohort trained briefly on a CPU: the demo shows the "
        "pipeline end to end; accuracy is measured with `eusvoicelabel evaluate` on a "
        "paper-scale cohort.", "",
        "## Leave-one-patient-out evaluation (proposed network)", "",
        "| accuracy | precision | recall | F1 | bootstrap accuracy |",
        "|---|---|---|---|---|",
        f"| {metrics['accuracy']:.2f} | {metrics['precision']:.2f} | {metrics['recall']:.2f} | "
        f"{metrics['f1']:.2f} | {b['mean']:.2f} +- {b['std']:.2f} ({b['n_subsets']} x "
        f"{b['subset_size']} patients) |", "",
        "Per held-out patient: " + ", ".join(f"{k} {v:.2f}"
                                             for k, v in metrics["per_patient"].items()), "",
        "![confusion matrix](evaluate/confusion_matrix.png)", "",
        _calibration_line(calibration), "",
        "## Labelling a held-out procedure with automatic mention detection", "",
        f"Procedure `{heldout.name}` (never seen in training). Mentions detected in its audio: "
        f"{detection['detected']} (true: {detection['true_mentions']}, matched within 0.5 s "
        f"with the right label: {detection['matched']}).", "",
        _endtoend_line(endtoend), "",
        "| time (s) | said (detected, confidence) | network (confidence) | label (fused) | "
        "review |", "|---|---|---|---|---|",
    ]
    for w in result.windows:
        heard = "" if w.mention.confidence is None else f" ({w.mention.confidence:.2f})"
        lines.append(f"| {w.time_s:.2f} | {w.spoken_label or ''}{heard} | {w.predicted} "
                     f"({w.confidence:.2f}) | {w.label} ({w.label_confidence:.2f}) | "
                     f"{w.review_reason} |")
    lines += ["", "![labelled frames](labelled_frames.png)", "",
              "Files for 3D Slicer in `labels/`: " + ", ".join(
                  f"`{n}`" for n in sorted(files)) + " (drag `scene.mrml` into Slicer).",
              "Image dataset: `export/images/<label>/*.png` + `export/labels.csv`.", "",
              "## Time (s)", "",
              "| " + " | ".join(timings) + " |", "|" + "---|" * len(timings),
              "| " + " | ".join(str(v) for v in timings.values()) + " |", ""]
    atomic_write_text(path, "\n".join(lines))
