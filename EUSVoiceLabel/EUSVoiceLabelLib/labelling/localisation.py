"""Does the evidence fall on the landmark that was named?  Measured on cohorts that know where
their landmarks are (``truth.json`` of ``eusvoicelabel synth``: per mention the named
landmark's box ``window.named_bbox`` = [x, y, w, h] in cropped-frame pixels, at the window's
middle frame).

For every labelled window whose named landmark is visible:

- **pointing game** (Zhang et al. 2016): the heat-map peak (the point shown in Slicer) lies
  inside the named landmark's box;
- **region precision**: the fraction of the evidence region's pixels inside that box;
- **region size**: the region's share of the frame;
- **chance**: the box's share of the frame (a point dropped uniformly at random hits the box
  this often; a region spread evenly has this precision);
- **transparent share**: the heat map's share below the display threshold (not drawn).

Run ``python3 -m EUSVoiceLabelLib.labelling.localisation COHORT --model MODEL.pt`` (writes a
JSON report with ``--out``); docs/evidence.md has the figures measured so far.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..core.errors import EUSVoiceLabelError, ProcedureError
from ..core.fileio import atomic_write_text
from ..core.progress import ProgressLike, as_progress
from ..data.procedure import find_patients, load_procedure
from ..nn.evidence import DISPLAY_THRESHOLD, REGION_THRESHOLD
from .run import LabelModel, WindowResult, label_procedure


def box_mask(shape: tuple[int, int], box: Sequence[float]) -> np.ndarray:
    """Pixels of an [x, y, w, h] box (clipped to the frame) as a bool (H, W) mask."""
    x, y, w, h = (int(round(v)) for v in box)
    mask = np.zeros(shape, bool)
    mask[max(0, y):max(0, y + h), max(0, x):max(0, x + w)] = True
    return mask


def window_scores(win: WindowResult, box: Sequence[float]) -> dict:
    """Pointing hit, region precision and size, and chance of one window against the named
    landmark's box."""
    shape = win.cam.shape
    inside = box_mask(shape, box)
    col, row = win.peak
    region = win.region if win.region is not None else np.zeros(shape, bool)
    n = int(region.sum())
    return {"hit": bool(inside[row, col]),
            "region_precision": float((region & inside).sum() / n) if n else 0.0,
            "region_size": n / region.size, "chance": float(inside.mean()),
            "transparent": float((win.cam < DISPLAY_THRESHOLD).mean())}


def _truth_for(window: WindowResult, truth: list[dict]) -> Optional[dict]:
    """The truth.json mention of a window (same label, nearest time)."""
    same = [m for m in truth if m.get("label") == window.mention.label]
    if not same:
        return None
    best = min(same, key=lambda m: abs(float(m["time_s"]) - window.time_s))
    return best if abs(float(best["time_s"]) - window.time_s) < 0.05 else None


def summarise(rows: list[dict]) -> dict:
    """The report's figures over window rows (see :func:`window_scores`)."""
    if not rows:
        return {"windows": 0}

    def col(key):
        return np.array([r[key] for r in rows], dtype=np.float64)

    correct = [r for r in rows if r["correct"]]
    return {"windows": len(rows), "accuracy": float(col("correct").mean()),
            "pointing_game": float(col("hit").mean()),
            "pointing_game_correct": float(np.mean([r["hit"] for r in correct]))
            if correct else None,
            "region_precision_mean": float(col("region_precision").mean()),
            "region_precision_median": float(np.median(col("region_precision"))),
            "region_size_median": float(np.median(col("region_size"))),
            "region_size_p90": float(np.percentile(col("region_size"), 90)),
            "chance_mean": float(col("chance").mean()),
            "transparent_share_median": float(np.median(col("transparent")))}


def localisation_report(cohort: Path, model: LabelModel, progress: ProgressLike = True,
                        cam_threshold: float = REGION_THRESHOLD) -> dict:
    """Label every patient of a synthetic cohort with ``model`` and score each window's point
    and evidence region against its named landmark's box (see the module docstring).

    Raises:
        ProcedureError: a patient has no truth.json (not a synthetic cohort).
    """
    rows: list[dict] = []
    patients = find_patients(cohort)
    with as_progress(progress).task("localisation", total=len(patients), unit="patient") as task:
        for folder in patients:
            truth_path = folder / "truth.json"
            if not truth_path.is_file():
                raise ProcedureError("no truth.json: landmark boxes are known only for cohorts "
                                     "made by 'eusvoicelabel synth'", folder)
            truth = json.loads(truth_path.read_text(encoding="utf-8"))["mentions"]
            proc = load_procedure(folder)
            result = label_procedure(proc, model, with_cam=True, cam_threshold=cam_threshold)
            for win in result.windows:
                t = _truth_for(win, truth)
                if t is None or win.cam is None or not t["window"].get("named_visible"):
                    continue
                rows.append({"patient": folder.name, "window": win.index,
                             "label": win.mention.label, "predicted": win.predicted,
                             "correct": win.predicted == win.mention.label,
                             **window_scores(win, t["window"]["named_bbox"])})
            task.advance()
    return {"cohort": str(cohort), "cam_threshold": cam_threshold, **summarise(rows),
            "rows": rows}


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(
        prog="python3 -m EUSVoiceLabelLib.labelling.localisation",
        description="Pointing game and region precision of the heat maps on a synthetic "
                    "cohort's landmark boxes (truth.json).")
    p.add_argument("cohort", type=Path)
    p.add_argument("--model", type=Path, required=True, help="checkpoint from 'train'")
    p.add_argument("--device", default="auto")
    p.add_argument("--cam-threshold", type=float, default=REGION_THRESHOLD)
    p.add_argument("--out", type=Path, help="write the report (with every window) as JSON")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    try:
        report = localisation_report(args.cohort, LabelModel.load(args.model, args.device),
                                     progress=not args.quiet, cam_threshold=args.cam_threshold)
    except EUSVoiceLabelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    summary = {k: v for k, v in report.items() if k != "rows"}
    print(json.dumps(summary, indent=2))
    if args.out:
        atomic_write_text(args.out, json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
