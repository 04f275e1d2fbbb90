"""Measure whole-procedure labelling on synthetic cohorts (a benchmark, not a test): the
figures of docs/results.md, "Whole-procedure labelling (issue 17)".

    python3 -m EUSVoiceLabelLib.synth.wholerun --test COHORT --model MODEL \\
        [--frame-model FILE] --out DIR [--stride N] [--long-minutes 20]

Every procedure of ``--test`` (patients the models never saw) is labelled with ``label
--whole`` (its ``mentions.csv`` as the spoken windows) into ``DIR/<patient>/`` and its
``frame_labels.csv`` is compared with the scenes of its ``truth.json`` (which landmark was
named for each view, which landmarks were in view at each time):

- ``accuracy_main``: the label is the scene's main (named) landmark (frames whose scene names
  one; ``none`` counts as wrong);
- ``accuracy_visible``: the label is one of the landmarks in view (frames with one in view);
- ``coverage``: frames labelled with a landmark (not ``none``);
- ``precision_main`` / ``precision_visible``: the same as the accuracies over covered frames;
- ``none_right``: of the frames labelled ``none``, those with no landmark in view, and
  ``none_avoided_error``: those whose most probable landmark would have been wrong (not in
  view);

each for all frames and for the inferred frames only (outside the spoken windows).  With
``--long-minutes`` a long procedure (``synth/longvideo.py``) is labelled by a child process and
its wall time and peak resident memory are reported.  Writes ``DIR/whole_metrics.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np


def truth_segments(truth: dict) -> list[tuple[float, float, Optional[str], list[str]]]:
    """(start_s, end_s, named, landmarks in view) of every view of a ``truth.json``."""
    return [(float(v["start_s"]), float(v["end_s"]), v.get("named"), list(v.get("landmarks")
                                                                           or []))
            for v in truth["views"]]


def score_rows(rows: list[dict], truth: dict) -> dict:
    """Counts of :func:`summarise` for one procedure's ``frame_labels.csv`` rows."""
    segs = truth_segments(truth)
    starts = np.array([s[0] for s in segs])
    c = {key: 0 for key in ("frames", "main_n", "main_ok", "vis_n", "vis_ok", "covered",
                            "cov_main_n", "cov_main_ok", "cov_vis_n", "cov_vis_ok", "none",
                            "none_empty", "none_avoided")}
    out = {"all": dict(c), "inferred": dict(c)}
    for r in rows:
        j = max(0, int(np.searchsorted(starts, r["time_s"], side="right")) - 1)
        _, _, named, visible = segs[j]
        label = r["label"]
        for part in ("all", "inferred") if r["source"] == "inferred" else ("all",):
            d = out[part]
            d["frames"] += 1
            if named:
                d["main_n"] += 1
                d["main_ok"] += label == named
            if visible:
                d["vis_n"] += 1
                d["vis_ok"] += label in visible
            if label != "none":
                d["covered"] += 1
                if named:
                    d["cov_main_n"] += 1
                    d["cov_main_ok"] += label == named
                if visible:
                    d["cov_vis_n"] += 1
                    d["cov_vis_ok"] += label in visible
            else:
                d["none"] += 1
                d["none_empty"] += not visible
                d["none_avoided"] += r.get("best_landmark") not in visible
    return out


def summarise(counts: dict) -> dict:
    def ratio(a: str, b: str) -> Optional[float]:
        return round(counts[a] / counts[b], 4) if counts[b] else None

    return {"frames": counts["frames"], "accuracy_main": ratio("main_ok", "main_n"),
            "accuracy_visible": ratio("vis_ok", "vis_n"),
            "coverage": ratio("covered", "frames"),
            "precision_main": ratio("cov_main_ok", "cov_main_n"),
            "precision_visible": ratio("cov_vis_ok", "cov_vis_n"),
            "none_frames": counts["none"], "none_right": ratio("none_empty", "none"),
            "none_avoided_error": ratio("none_avoided", "none")}


def add_counts(total: dict, part: dict) -> None:
    for k, v in part.items():
        total[k] = total.get(k, 0) + v


def label_and_score(procedure: Path, model: Path, frame_model: Path, out: Path, settings
                    ) -> tuple[dict, dict]:
    from ..labelling.folder import label_to_folder

    t0 = time.perf_counter()
    result, _ = label_to_folder(procedure, model, out, device="cpu", with_cam=False,
                                progress=False, whole=settings, frame_model=frame_model)
    seconds = time.perf_counter() - t0
    whole = result.whole
    rows = []
    k = len(whole.ids)
    for i, r in enumerate(whole.rows()):
        r["best_landmark"] = whole.ids[int(np.argmax(whole.posterior[i, :k]))]
        rows.append(r)
    truth = json.loads((procedure / "truth.json").read_text())
    return score_rows(rows, truth), {"seconds": round(seconds, 1), "frames": len(rows),
                                     "mentions": len(result.windows)}


def long_procedure_run(folder: Path, minutes: float, model: Path, frame_model: Path,
                       out: Path, stride: int) -> dict:
    """Label a ``minutes``-long procedure in a child process; its wall time and peak RSS."""
    from .longvideo import make_procedure

    if not (folder / "video.mp4").exists():
        make_procedure(folder, minutes * 60.0, n_mentions=max(2, int(minutes * 1.5)))
    cmd = [sys.executable, "-m", "EUSVoiceLabelLib", "label", str(folder), "--model",
           str(model), "--frame-model", str(frame_model), "--out", str(out), "--whole",
           "--stride", str(stride), "--device", "cpu", "--quiet"]
    t0 = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    subprocess.run(cmd, check=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")])})
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"minutes": minutes, "stride": stride, "wall_s": round(wall, 1),
            "peak_rss_mb": round(max(peak, before) / 1024, 1), "command": " ".join(cmd[1:]),
            "cores": os.cpu_count()}


def reference_timeline(procedure: Path, label_dir: Path, out_png: Path) -> Path:
    """The timeline of one labelled procedure with the truth's main landmark as a reference
    row (for docs/results.md)."""
    from ..data.vocabulary import LabelSet
    from ..labelling.timeline import write_timeline_png
    from ..labelling.runs import runs_of
    from ..labelling.whole import read_frame_labels

    rows = read_frame_labels(label_dir / "frame_labels.csv")
    truth = json.loads((procedure / "truth.json").read_text())
    info = json.loads((label_dir / "run.json").read_text())
    stride = int(info["whole"]["settings"]["stride"])
    mentions = [(float(m["time_s"]), m["label"]) for m in truth["mentions"]]
    ref = [(s, e, named or "none") for s, e, named, _ in truth_segments(truth)]
    every = max(1, len(rows) // 4000)
    conf = (np.array([r["time_s"] for r in rows[::every]]),
            np.array([r["confidence"] for r in rows[::every]]))
    return write_timeline_png(out_png, runs_of(rows), LabelSet.default(), 25.0, stride,
                              mentions, conf, title=f"{procedure.name} (unseen patient): label "
                              "per frame; bottom row: the scene's named landmark (truth.json)",
                              reference=ref)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--test", type=Path, required=True, help="cohort of unseen patients")
    p.add_argument("--model", type=Path, required=True, help="checkpoint from 'train'")
    p.add_argument("--frame-model", type=Path, required=True, help="from 'train-frames'")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--stride", type=int, default=1)
    p.add_argument("--patients", default=None, help="comma-separated subset")
    p.add_argument("--long-minutes", type=float, default=0.0)
    p.add_argument("--long-stride", type=int, default=1)
    p.add_argument("--timeline", type=Path, default=None,
                   help="PNG of the first patient's timeline with the truth row")
    args = p.parse_args(argv)
    from ..data.procedure import find_patients
    from ..labelling.whole import WholeSettings

    settings = WholeSettings(stride=args.stride)
    args.out.mkdir(parents=True, exist_ok=True)
    patients = find_patients(args.test)
    if args.patients:
        wanted = set(args.patients.split(","))
        patients = [f for f in patients if f.name in wanted]
    totals = {"all": {}, "inferred": {}}
    per_patient = {}
    for folder in patients:
        counts, info = label_and_score(folder, args.model, args.frame_model,
                                       args.out / folder.name, settings)
        for part in totals:
            add_counts(totals[part], counts[part])
        per_patient[folder.name] = {**info, **{part: summarise(counts[part])
                                               for part in counts}}
        s = per_patient[folder.name]
        print(f"{folder.name}: main {s['all']['accuracy_main']} visible "
              f"{s['all']['accuracy_visible']} coverage {s['all']['coverage']} | inferred main "
              f"{s['inferred']['accuracy_main']} ({info['seconds']} s)", flush=True)
    report = {"test": str(args.test), "model": str(args.model),
              "frame_model": str(args.frame_model), "settings": settings.to_json(),
              "pooled": {part: summarise(totals[part]) for part in totals},
              "per_patient": per_patient}
    if args.timeline is not None and patients:
        reference_timeline(patients[0], args.out / patients[0].name, args.timeline)
    if args.long_minutes > 0:
        report["long"] = long_procedure_run(args.out / "long_procedure", args.long_minutes,
                                            args.model, args.frame_model,
                                            args.out / "long_labels", args.long_stride)
    (args.out / "whole_metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["pooled"], indent=2))
    if "long" in report:
        print(json.dumps(report["long"], indent=2))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
