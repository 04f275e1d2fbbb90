"""End to end: how many of the landmarks a clinician named come out of ``label --mentions auto``
with the right label, and how many written windows are not a named landmark.

For every procedure of a cohort (its ``mentions.csv`` is the truth, never shown to the run),
mentions are detected in the audio, every detected window is labelled by the model, and the
windows are matched one to one with the true mentions: a window and a true mention can pair
when the window (its onset and ``frames`` frames on) overlaps the spoken name
(``time_s``..``end_s``; the onset alone where ``end_s`` is unknown); pairs are taken closest
onsets first.  Reported, for the network's own label, for the label the detector heard, and
for the label fused from both (:mod:`.fusion`, what the outputs write):

- ``true_mentions_right``: the fraction of true mentions paired with a window that carries the
  true label;
- ``false_windows``: the fraction of written windows paired with no true mention (detections
  where nothing was named, or a second window on one name); the same for both labels;
- ``wrong_windows``: the fraction of written windows not paired with a true mention of their
  label;
- ``flagged_fraction``: the fraction of windows flagged for review, and
  ``wrong_flagged_fraction`` the fraction of the fused label's wrong windows among them.

Run ``python3 -m EUSVoiceLabelLib.labelling.endtoend COHORT --model MODEL.pt`` on patients the
model was not trained on (``--out report.json`` keeps every window); docs/results.md has the
figures measured so far.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from ..core.errors import EUSVoiceLabelError, MentionsError
from ..core.fileio import atomic_write_text
from ..core.outputlock import output_session
from ..core.progress import ProgressLike, as_progress
from ..data.mentions import Mention
from ..data.outputs import OutputKind, claim_output, input_paths, json_with_keys
from ..data.procedure import find_patients, load_procedure
from .folder import resolve_mentions
from .run import LabelModel, LabelResult, label_procedure


#: ``--out``: replaces an existing file only when it is such a report.
END_TO_END_REPORT = OutputKind("end-to-end-report", "an end-to-end report of "
                               "'python3 -m EUSVoiceLabelLib.labelling.endtoend'", folder=False,
                               signature=json_with_keys("cohort", "true_mentions_right",
                                                        "per_patient"))


@dataclass(frozen=True)
class Pairing:
    """Windows (by position) paired with true mentions (by position)."""

    pairs: dict[int, int]  # window -> true mention
    n_windows: int
    n_true: int


def pair_windows(windows: Sequence[tuple[float, float]], truth: Sequence[Mention]) -> Pairing:
    """Pair windows ``(start_s, end_s)`` with true mentions one to one (see the module doc)."""
    candidates = []
    for i, (w0, w1) in enumerate(windows):
        for j, t in enumerate(truth):
            t1 = t.time_s if t.end_s is None else t.end_s
            if w0 <= t1 and t.time_s < w1:
                candidates.append((abs(w0 - t.time_s), i, j))
    pairs: dict[int, int] = {}
    used: set[int] = set()
    for _, i, j in sorted(candidates):
        if i not in pairs and j not in used:
            pairs[i] = j
            used.add(j)
    return Pairing(pairs, len(windows), len(truth))


def score_result(result: LabelResult, truth: Sequence[Mention]) -> dict:
    """Counts of one labelled procedure against its true mentions: ``true_mentions``,
    ``windows``, ``paired``, ``right_network``, ``right_spoken``, ``right_fused``,
    ``wrong_network``,
    ``wrong_fused``, ``flagged``, ``wrong_fused_flagged``, and ``rows`` (one per window)."""
    fps = result.procedure.fps
    spans = [(w.time_s, w.time_s + len(w.frame_indices) / fps) for w in result.windows]
    pairing = pair_windows(spans, truth)
    counts = {"true_mentions": len(truth), "windows": len(result.windows),
              "paired": len(pairing.pairs), "right_network": 0, "right_spoken": 0,
              "right_fused": 0,
              "wrong_network": 0, "wrong_fused": 0, "flagged": 0, "wrong_fused_flagged": 0}
    rows = []
    for i, w in enumerate(result.windows):
        j = pairing.pairs.get(i)
        true_label = truth[j].label if j is not None else None
        net_ok, fused_ok = w.predicted == true_label, w.label == true_label
        counts["right_network"] += net_ok
        counts["right_spoken"] += w.spoken_label == true_label
        counts["right_fused"] += fused_ok
        counts["wrong_network"] += not net_ok
        counts["wrong_fused"] += not fused_ok
        counts["flagged"] += w.needs_review
        counts["wrong_fused_flagged"] += (not fused_ok) and w.needs_review
        rows.append({"time_s": round(w.time_s, 3), "true_label": true_label,
                     "spoken_label": w.spoken_label, "mention_confidence": w.mention.confidence,
                     "network_label": w.predicted, "network_confidence": round(w.confidence, 4),
                     "network_probabilities": {k: round(float(v), 4) for k, v in
                                               zip(result.labelset.ids, w.probabilities)},
                     "label": w.label, "label_confidence": round(w.label_confidence, 4),
                     "needs_review": w.needs_review})
    counts["rows"] = rows
    return counts


def summarise(counts: Sequence[dict]) -> dict:
    """The report's fractions over procedures' counts (see :func:`score_result`)."""
    total = {k: sum(c[k] for c in counts) for k in counts[0] if k != "rows"} if counts else {}
    n_true, n_win = total.get("true_mentions", 0), total.get("windows", 0)

    def frac(num: int, den: int) -> Optional[float]:
        return round(num / den, 4) if den else None

    return {**total,
            "true_mentions_detected": frac(total.get("paired", 0), n_true),
            "true_mentions_right": {"network": frac(total.get("right_network", 0), n_true),
                                    "spoken": frac(total.get("right_spoken", 0), n_true),
                                    "fused": frac(total.get("right_fused", 0), n_true)},
            "false_windows": frac(n_win - total.get("paired", 0), n_win),
            "wrong_windows": {"network": frac(total.get("wrong_network", 0), n_win),
                              "fused": frac(total.get("wrong_fused", 0), n_win)},
            "flagged_fraction": frac(total.get("flagged", 0), n_win),
            "wrong_flagged_fraction": frac(total.get("wrong_fused_flagged", 0),
                                           total.get("wrong_fused", 0))}


def end_to_end(cohort: Path, model: LabelModel, patients: Optional[Sequence[str]] = None,
               progress: ProgressLike = True) -> dict:
    """Detect, label and score every procedure of ``cohort`` (or the ``patients`` named);
    returns :func:`summarise`'s figures with ``per_patient`` counts and every window."""
    folders = find_patients(cohort)
    if patients:
        folders = [f for f in folders if f.name in set(patients)]
    reporter = as_progress(progress)
    per_patient: dict[str, dict] = {}
    with reporter.task("end to end", total=len(folders), unit="procedure") as task:
        for folder in folders:
            proc = load_procedure(folder, labelset=model.labelset)
            truth = list(proc.mentions)
            try:
                found = resolve_mentions(proc, "auto", model.labelset, verifier=model.verifier)
            except MentionsError:
                found = []  # nothing heard: every true mention of it is missed
            result = label_procedure(proc, model, found, with_cam=False) if found \
                else LabelResult(proc, model.labelset)
            per_patient[folder.name] = score_result(result, truth)
            task.advance(patient=folder.name)
    summary = summarise(list(per_patient.values()))
    return {"cohort": str(cohort), **summary, "per_patient": per_patient}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command line (see the module doc)."""
    p = argparse.ArgumentParser(
        prog="python3 -m EUSVoiceLabelLib.labelling.endtoend",
        description="Detect mentions, label and score every procedure of a cohort against its "
                    "mentions.csv: true mentions with the right label and written windows that "
                    "are not true mentions, for the network's label and the fused label.")
    p.add_argument("cohort", type=Path)
    p.add_argument("--model", type=Path, required=True,
                   help="checkpoint from 'train', trained on other patients")
    p.add_argument("--patients", help="comma-separated procedure folder names (default: all)")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", type=Path, help="write the report (with every window) as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    try:
        # The output is claimed (and locked until the end) before the long work.
        with output_session("python3 -m EUSVoiceLabelLib.labelling.endtoend"):
            if args.out is not None:
                claim_output(args.out, END_TO_END_REPORT, input_paths(args.cohort, args.model))
            model = LabelModel.load(args.model, args.device)
            report = end_to_end(args.cohort, model,
                                args.patients.split(",") if args.patients else None,
                                progress=not args.quiet)
            if args.out:
                atomic_write_text(args.out, json.dumps(report, indent=2) + "\n")
    except EUSVoiceLabelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    print(json.dumps({k: v for k, v in report.items() if k != "per_patient"}, indent=2))
    return 0

if __name__ == "__main__":
    sys.exit(main())
