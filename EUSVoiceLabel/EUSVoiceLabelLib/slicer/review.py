"""Review bookkeeping behind the Slicer module's tables (no Slicer imports).

Two editable tables live in the Slicer scene, and both are plain rows of strings there:

- the **mentions table** (``time_s, label, end_s, text, confidence, source``): the spoken
  landmark names the labelling runs on.  :func:`mentions_to_rows` fills it,
  :func:`mentions_from_rows` reads it back after the user edited it, with the same checks as a
  ``mentions.csv`` file and errors that name the row.
- the **results table** (:data:`RESULT_COLUMNS`): one row per labelled window with the spoken
  label, the network's predicted label, the window's label (fused with what was said,
  :mod:`..labelling.fusion`), its review flag and the reviewed label.  :class:`ReviewTable`
  keeps the clinician's decisions (accept / correct), sorts rows for review (flagged windows
  first, then the least confident), and hands the reviewed labels to exports and the reviewed
  mentions to training.

A third table, the **timeline table** of a whole-procedure labelling
(:data:`~..labelling.runs.TIMELINE_COLUMNS`), lists its runs of frames; :class:`RunReview`
keeps the labels a clinician gave runs and what follows from them (the table rows, the label
text the frames show, the reviewed frame labels).

The label that a window carries is decided in one place, :meth:`ReviewRow.final_label` (for
exports) and :meth:`ReviewRow.training_label` (for training), so the GUI, the batch logic and
the exports agree.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field, replace
from typing import Iterable, Optional, Sequence

from ..core.errors import MentionsError
from ..data.mentions import CSV_FIELDS, Mention
from ..data.vocabulary import LabelSet
from ..labelling.runs import NONE, REVIEWED, Run, reviewed_rows, timeline_rows
from .support import master_item_at

#: Columns of the mentions table (the ``mentions.csv`` columns).
MENTION_COLUMNS: tuple[str, ...] = CSV_FIELDS

#: Columns of the results table.  ``window`` is the window's index in the labelling result; it
#: survives sorting, so a selected row always finds its window.  ``predicted_label`` and
#: ``confidence`` are the network's, ``label`` / ``label_confidence`` the window's fused label;
#: tables from before fusion lack the last three columns and read as the network's label.
RESULT_COLUMNS: tuple[str, ...] = ("window", "time_s", "end_s", "spoken_label",
                                   "predicted_label", "confidence", "reviewed_label", "status",
                                   "label", "label_confidence", "needs_review")
#: Columns a results table must have (the others are optional).
REQUIRED_RESULT_COLUMNS: tuple[str, ...] = RESULT_COLUMNS[:7]

PENDING, ACCEPTED, CORRECTED = "pending", "accepted", "corrected"

SORT_KEYS = ("confidence", "time", "window")


def _fmt(value: Optional[float], digits: int = 3) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _number(text: str, what: str, row: int, where: str, required: bool = True
            ) -> Optional[float]:
    text = (text or "").strip()
    if not text:
        if required:
            raise MentionsError(f"row {row}: {what} is empty", where,
                                "write seconds as a decimal number, e.g. 12.34")
        return None
    try:
        value = float(text)
    except ValueError:
        raise MentionsError(f"row {row}: {what} {text!r} is not a number", where,
                            "write seconds as a decimal number, e.g. 12.34") from None
    if not math.isfinite(value):
        raise MentionsError(f"row {row}: {what} is {text!r}", where, "use a finite number")
    return value


# --------------------------------------------------------------------------- mentions table
def mentions_to_rows(mentions: Iterable[Mention]) -> list[list[str]]:
    """Rows of strings in :data:`MENTION_COLUMNS` order, sorted by time."""
    return [[_fmt(m.time_s), m.label, _fmt(m.end_s), m.text, _fmt(m.confidence, 4), m.source]
            for m in sorted(mentions, key=lambda m: m.time_s)]


def mentions_from_rows(columns: Sequence[str], rows: Sequence[Sequence[str]],
                       labelset: Optional[LabelSet] = None, where: str = "mentions table"
                       ) -> list[Mention]:
    """Mentions from an edited table (any column order; blank rows are skipped).

    Labels may be ids, display names or synonyms of ``labelset``.  Row numbers in errors count
    from 1 like the rows the user sees.

    Raises:
        MentionsError: a missing ``time_s``/``label`` column, a bad number, a negative time, an
            end before its onset or an unknown label.
    """
    labelset = labelset or LabelSet.default()
    names = [c.strip().lower() for c in columns]
    if "time" in names and "time_s" not in names:
        names[names.index("time")] = "time_s"
    for needed in ("time_s", "label"):
        if needed not in names:
            raise MentionsError(f"has no {needed!r} column", where,
                                "columns: " + ", ".join(MENTION_COLUMNS))
    out: list[Mention] = []
    for n, row in enumerate(rows, start=1):
        rec = {name: (str(row[i]).strip() if i < len(row) else "") for i, name in enumerate(names)}
        if not any(rec.values()):
            continue
        t = _number(rec.get("time_s", ""), "time_s", n, where)
        assert t is not None
        if t < 0:
            raise MentionsError(f"row {n}: negative time {t}", where,
                                "times are seconds from the start of the video")
        label = labelset.resolve(rec.get("label", ""))
        if label is None:
            raise MentionsError(f"row {n}: unknown label {rec.get('label', '')!r}", where,
                                "known labels: " + ", ".join(labelset.ids))
        end = _number(rec.get("end_s", ""), "end_s", n, where, required=False)
        if end is not None and end <= t:
            raise MentionsError(f"row {n}: end_s {end} is not after time_s {t}", where)
        conf = _number(rec.get("confidence", ""), "confidence", n, where, required=False)
        out.append(Mention(t, label, end, rec.get("text", ""), conf,
                           rec.get("source") or "file"))
    return sorted(out, key=lambda m: m.time_s)


# --------------------------------------------------------------------------- results / review
@dataclass
class ReviewRow:
    """One labelled window and the clinician's decision about it.

    Attributes:
        window: index of the window in the labelling result.
        time_s, end_s: the window on the video clock (s).
        spoken: label id the clinician said (None when unknown).
        predicted: label id the network predicted.
        confidence: the network's probability of ``predicted``.
        reviewed: label id set by review (the window's label when accepted), None while
            pending.
        label: the window's label fused with what was said (None: the network's stands).
        label_confidence: the fused probability of ``label``.
        needs_review: the network disagrees with what was said, or the fused label is
            uncertain (:func:`..labelling.fusion.fuse_window`).
    """

    window: int
    time_s: float
    end_s: float
    spoken: Optional[str]
    predicted: str
    confidence: float
    reviewed: Optional[str] = None
    label: Optional[str] = None
    label_confidence: Optional[float] = None
    needs_review: bool = False

    @property
    def window_label(self) -> str:
        """The label the labelling run gave the window: fused, else the network's."""
        return self.label or self.predicted

    @property
    def window_confidence(self) -> float:
        """The probability of :attr:`window_label`."""
        return self.confidence if self.label_confidence is None else self.label_confidence

    @property
    def status(self) -> str:
        if self.reviewed is None:
            return PENDING
        return ACCEPTED if self.reviewed == self.window_label else CORRECTED

    @property
    def final_label(self) -> str:
        """The label exports use: the reviewed label, else the window's label."""
        return self.reviewed or self.window_label

    @property
    def training_label(self) -> Optional[str]:
        """The label training uses: the reviewed label, else the window's fused label (what
        was said, weighed against the network where the mention was detected), else what was
        said; None when none is known."""
        return self.reviewed or self.label or self.spoken

    def to_strings(self) -> list[str]:
        return [str(self.window), _fmt(self.time_s), _fmt(self.end_s), self.spoken or "",
                self.predicted, _fmt(self.confidence, 4), self.reviewed or "", self.status,
                self.label or "", _fmt(self.label_confidence, 4),
                "1" if self.needs_review else "0"]


@dataclass
class ReviewTable:
    """The results of one labelling run and their review state."""

    rows: list[ReviewRow]
    labelset: LabelSet = field(default_factory=LabelSet.default)

    # ---- construction
    @classmethod
    def from_windows(cls, windows: Iterable, labelset: LabelSet) -> "ReviewTable":
        """From labelling results: objects with ``index, time_s, end_s, spoken_label,
        predicted, confidence`` and optionally the fused ``label, label_confidence,
        needs_review`` (``WindowResult``)."""
        rows = []
        for w in windows:
            fused = getattr(w, "label", None)
            rows.append(ReviewRow(
                int(w.index), float(w.time_s), float(w.end_s),
                getattr(w, "spoken_label", None) or None, str(w.predicted), float(w.confidence),
                label=str(fused) if fused else None,
                label_confidence=float(w.label_confidence) if fused else None,
                needs_review=bool(getattr(w, "needs_review", False))))
        return cls(rows, labelset)

    @classmethod
    def from_rows(cls, columns: Sequence[str], rows: Sequence[Sequence[str]],
                  labelset: Optional[LabelSet] = None, where: str = "results table"
                  ) -> "ReviewTable":
        """Read back a results table (e.g. from a saved scene), keeping its review state.

        Raises:
            MentionsError: a missing column, a bad number or an unknown label.
        """
        labelset = labelset or LabelSet.default()
        names = [c.strip().lower() for c in columns]
        missing = [c for c in REQUIRED_RESULT_COLUMNS if c not in names]
        if missing:
            raise MentionsError("is not an EUSVoiceLabel results table (missing columns: "
                                + ", ".join(missing) + ")", where)
        out = []
        for n, row in enumerate(rows, start=1):
            rec = {name: (str(row[i]).strip() if i < len(row) else "")
                   for i, name in enumerate(names)}
            if not any(rec.values()):
                continue

            def label(key: str, required: bool) -> Optional[str]:
                text = rec.get(key, "")
                if not text:
                    if required:
                        raise MentionsError(f"row {n}: {key} is empty", where)
                    return None
                resolved = labelset.resolve(text)
                if resolved is None:
                    raise MentionsError(f"row {n}: unknown label {text!r} in {key}", where,
                                        "known labels: " + ", ".join(labelset.ids))
                return resolved

            window = _number(rec["window"], "window", n, where)
            out.append(ReviewRow(int(window or 0), _number(rec["time_s"], "time_s", n, where)
                                 or 0.0,
                                 _number(rec["end_s"], "end_s", n, where) or 0.0,
                                 label("spoken_label", False), label("predicted_label", True)
                                 or "", _number(rec["confidence"], "confidence", n, where)
                                 or 0.0, label("reviewed_label", False),
                                 label("label", False),
                                 _number(rec.get("label_confidence", ""), "label_confidence", n,
                                         where, required=False),
                                 rec.get("needs_review", "") in ("1", "true", "True")))
        return cls(out, labelset)

    # ---- access
    def __len__(self) -> int:
        return len(self.rows)

    def row(self, window: int) -> ReviewRow:
        for r in self.rows:
            if r.window == window:
                return r
        raise KeyError(f"no window {window} in the results")

    # ---- review
    def accept(self, window: int) -> ReviewRow:
        """Confirm the window's label (fused with what was said) for ``window``."""
        r = self.row(window)
        r.reviewed = r.window_label
        return r

    def correct(self, window: int, label: str) -> ReviewRow:
        """Set the label of ``window`` (an id, display name or synonym).

        Raises:
            MentionsError: the label is not in the vocabulary.
        """
        resolved = self.labelset.resolve(label)
        if resolved is None:
            raise MentionsError(f"unknown label {label!r}", None,
                                "known labels: " + ", ".join(self.labelset.ids))
        r = self.row(window)
        r.reviewed = resolved
        return r

    def clear(self, window: int) -> ReviewRow:
        """Forget the review of ``window``."""
        r = self.row(window)
        r.reviewed = None
        return r

    # ---- views
    def sorted_rows(self, key: str = "confidence", ascending: bool = True) -> list[ReviewRow]:
        """Rows sorted for review by ``confidence`` (windows flagged for review first, then
        the least confident label, then the least confident network, by default; descending
        reverses only the confidence order, flagged windows stay first), by ``time`` or by
        ``window``; ties keep time order."""
        if key not in SORT_KEYS:
            raise ValueError(f"sort key must be one of {SORT_KEYS}, not {key!r}")
        by_time = sorted(self.rows, key=lambda r: (r.time_s, r.window))
        if key == "time":
            return by_time if ascending else by_time[::-1]
        if key == "window":
            return sorted(by_time, key=lambda r: r.window, reverse=not ascending)
        sign = 1.0 if ascending else -1.0
        return sorted(by_time, key=lambda r: (not r.needs_review, sign * r.window_confidence,
                                              sign * r.confidence))

    def to_rows(self, key: str = "time", ascending: bool = True) -> list[list[str]]:
        """Rows of strings in :data:`RESULT_COLUMNS` order."""
        return [r.to_strings() for r in self.sorted_rows(key, ascending)]

    def counts(self) -> dict[str, int]:
        """How many windows are pending, accepted and corrected."""
        out = {PENDING: 0, ACCEPTED: 0, CORRECTED: 0}
        for r in self.rows:
            out[r.status] += 1
        return out

    def reviewed_labels(self) -> dict[int, str]:
        """``{window: label}`` for every reviewed window (accepted or corrected)."""
        return {r.window: r.reviewed for r in self.rows if r.reviewed is not None}

    def final_labels(self) -> dict[int, str]:
        """``{window: label}`` for every window: reviewed, else the window's label."""
        return {r.window: r.final_label for r in self.rows}

    def window_mentions(self) -> list[Optional[Mention]]:
        """Each window's mention rebuilt from the table alone (a saved scene, whose labelling
        run is gone): at the window's time, labelled with what was said (else predicted);
        ``None`` for window numbers the table lacks."""
        mentions: list[Optional[Mention]] = [None] * (max((r.window for r in self.rows),
                                                          default=-1) + 1)
        for r in self.rows:
            mentions[r.window] = Mention(r.time_s, r.spoken or r.predicted, None, "", None,
                                         "file")
        return mentions

    def training_mentions_of(self, windows: Optional[Sequence] = None) -> list[Mention]:
        """The mentions to train on (:meth:`training_mentions`) from the windows of this
        session's labelling run, or, without them (a saved scene), from the table alone."""
        mentions = [w.mention for w in windows] if windows is not None else \
            self.window_mentions()
        return self.training_mentions(mentions)

    def training_mentions(self, mentions: Sequence[Mention]) -> list[Mention]:
        """The mentions to train on: each window's mention with its training label.

        ``mentions[i]`` must be the mention of window ``i`` (the labelling order).  Corrected
        windows get ``source="review"``; windows without any known label are left out.
        """
        out = []
        for r in self.rows:
            if not 0 <= r.window < len(mentions):
                raise IndexError(f"window {r.window} has no mention ({len(mentions)} given)")
            label = r.training_label
            if label is None:
                continue
            m = mentions[r.window]
            src = "review" if r.status == CORRECTED else m.source
            out.append(replace(m, label=label, source=src))
        return sorted(out, key=lambda m: m.time_s)


@dataclass
class RunReview:
    """The review of a whole-procedure timeline: its runs of labelled frames and the labels a
    clinician gave some of them (``reviewed``: run index -> label; accepting a run gives it
    its own label)."""

    runs: list[Run]
    fps: float
    stride: int
    ids: tuple[str, ...]  # the landmark ids (``none`` is allowed as well)
    reviewed: dict[int, str] = field(default_factory=dict)

    def with_table(self, columns: Sequence[str], rows: Sequence[Sequence[str]]
                   ) -> "RunReview":
        """This review with the reviewed labels of a timeline table's rows (labels typed into
        the table count as reviews)."""
        reviewed: dict[int, str] = {}
        if "reviewed_label" in columns and "run" in columns:
            i, r = list(columns).index("reviewed_label"), list(columns).index("run")
            reviewed = {int(row[r]): row[i] for row in rows if row[i]}
        return replace(self, reviewed=reviewed)

    def review(self, runs: Iterable[int], label: Optional[str] = None) -> None:
        """Accept (``label`` None: each run keeps its label) or correct (to ``label``) runs.

        Raises:
            ValueError: an unknown label or run.
        """
        allowed = [*self.ids, NONE]
        if label is not None and label not in allowed:
            raise ValueError(f"unknown label {label!r} (known: {', '.join(allowed)})")
        for k in runs:
            k = int(k)
            if not 0 <= k < len(self.runs):
                raise ValueError(f"no run {k} (the timeline has {len(self.runs)})")
            self.reviewed[k] = label or self.runs[k].label

    def start_s(self, run: int) -> float:
        """Where run ``run`` starts (s)."""
        return self.runs[int(run)].start_s(self.fps)

    def table_rows(self) -> list[list[str]]:
        """The rows of the timeline table (:data:`~..labelling.runs.TIMELINE_COLUMNS`)."""
        return timeline_rows(self.runs, self.fps, self.stride, self.reviewed)

    def frame_rows(self, rows: Iterable[dict]) -> list[dict]:
        """The labelled frames ``rows`` with each reviewed run's frames relabelled."""
        return reviewed_rows(list(rows), self.runs, self.reviewed)

    def text_items(self, master_times: Sequence[float], labelset: LabelSet
                   ) -> list[tuple[int, str]]:
        """(master item, text) where each run starts on a sequence whose items are at
        ``master_times`` (s): the run's label (reviewed or its own), mean confidence and
        source.  A run too short to own an item of its own is left out."""
        names = {lab.id: lab.name for lab in labelset.labels}
        items: list[tuple[int, str]] = []
        used: set[int] = set()
        for k, run in enumerate(self.runs):
            item = master_item_at(master_times, run.start_s(self.fps))
            if item in used:
                continue
            used.add(item)
            label = self.reviewed.get(k, run.label)
            source = REVIEWED if k in self.reviewed else run.source
            items.append((item, f"{names.get(label, label)} {run.confidence:.2f} ({source})"))
        return items


def labels_csv_with_review(text: str, reviewed: dict[int, str]) -> str:
    """Add (or replace) the ``reviewed_label`` column of a ``labels.csv`` text (the file
    ``eusvoicelabel label`` writes), so ``eusvoicelabel export`` uses the reviewed labels."""
    rows = list(csv.reader(io.StringIO(text)))
    if not rows or "window" not in rows[0]:
        raise MentionsError("not a labels.csv (no 'window' column)")
    header = rows[0]
    col = header.index("window")
    if "reviewed_label" in header:
        rcol = header.index("reviewed_label")
    else:
        header.append("reviewed_label")
        rcol = len(header) - 1
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for row in rows[1:]:
        row = row + [""] * (len(header) - len(row))
        row[rcol] = reviewed.get(int(row[col]), "")
        writer.writerow(row)
    return buf.getvalue()
