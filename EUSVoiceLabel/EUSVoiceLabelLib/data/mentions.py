"""Spoken landmark mentions: reading and writing mention files and timestamped transcripts.

A mention is the moment a landmark name starts being spoken, on the *video* clock.  Sources:

- ``mentions.csv``: ``time_s,label[,end_s][,text][,confidence][,source]`` with a header row (a
  file without header is read positionally in that order).  ``label`` is a label id; a display
  name or synonym of the vocabulary is accepted and resolved to its id.
- SRT / WebVTT transcripts from any speech recogniser: every synonym of the vocabulary found in
  a cue becomes a mention.  Word times come from WebVTT inline timestamps (``<00:01.250>``) when
  the recogniser wrote them, otherwise they are interpolated across the cue by character offset.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional, Sequence

from ..core.csvtext import csv_text, unescape_cell
from ..core.errors import MentionsError
from ..core.fileio import atomic_write_text
from .vocabulary import LabelSet, normalize_words

CSV_FIELDS = ("time_s", "label", "end_s", "text", "confidence", "source")


@dataclass(frozen=True)
class Mention:
    """A spoken landmark name.

    Attributes:
        time_s: onset of the landmark name on the video clock (s).
        label: label id.
        end_s: end of the spoken name (s), when known.
        text: the words heard or written.
        confidence: detector confidence in 0-1 (None for hand-made mentions).
        source: "file", "transcript", "auto" or "review".
    """

    time_s: float
    label: str
    end_s: Optional[float] = None
    text: str = ""
    confidence: Optional[float] = None
    source: str = "file"

    def shifted(self, seconds: float) -> "Mention":
        """The same mention moved by ``seconds`` (e.g. between audio and video clocks)."""
        end = None if self.end_s is None else self.end_s + seconds
        return replace(self, time_s=self.time_s + seconds, end_s=end)


def _parse_float(value: str, what: str, path: Path, row: int) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise MentionsError(f"row {row}: {what} {value!r} is not a number", path,
                            "write seconds as a decimal number, e.g. 12.34") from None
    if not math.isfinite(out):
        raise MentionsError(f"row {row}: {what} is {value!r}", path, "use a finite number")
    return out


def read_mentions_csv(path: os.PathLike | str, labelset: Optional[LabelSet] = None
                      ) -> list[Mention]:
    """Read a mentions CSV (see the module doc), sorted by time.

    Raises:
        MentionsError: unreadable or empty file, bad numbers, negative times, an end before its
            onset, or a label the vocabulary does not know.
    """
    path = Path(path)
    labelset = labelset or LabelSet.default()
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise MentionsError("file not found", path) from None
    except OSError as exc:
        raise MentionsError(f"cannot read ({exc.strerror})", path) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise MentionsError("not UTF-8 text", path, "save the mentions as a UTF-8 CSV") from None
    if "\x00" in text:
        raise MentionsError("not a text CSV file (contains NUL bytes)", path)
    try:
        # newline=None: universal newlines, so a lone "\r" (old Mac line ends, mixed files)
        # ends a row instead of making csv fail (found by fuzzing, test_fuzz.py).
        rows = [[unescape_cell(c) for c in r]
                for r in csv.reader(io.StringIO(text, newline=None)) if any(c.strip() for c in r)]
    except csv.Error as exc:  # e.g. a field over csv's size limit
        raise MentionsError(f"not a readable CSV file ({exc})", path,
                            "expected columns time_s,label[,end_s][,text]") from None
    has_header = False
    if rows and rows[0] and rows[0][0].strip().lower().lstrip("#") in ("time_s", "time"):
        header = [h.strip().lower().lstrip("#") for h in rows[0]]
        header = ["time_s" if h == "time" else h for h in header]
        rows = rows[1:]
        has_header = True
        if "label" not in header:
            raise MentionsError("the header has no 'label' column", path,
                                "expected columns time_s,label[,end_s][,text]")
    else:
        header = list(CSV_FIELDS)
    if not rows:
        raise MentionsError("no mentions in the file", path,
                            "add rows 'time_s,label' or remove the file to detect mentions "
                            "automatically")
    mentions = []
    for n, row in enumerate(rows, start=2 if has_header else 1):
        rec = {h: (row[i].strip() if i < len(row) else "") for i, h in enumerate(header)}
        if not rec.get("time_s") or not rec.get("label"):
            raise MentionsError(f"row {n}: needs a time and a label", path)
        t = _parse_float(rec["time_s"], "time_s", path, n)
        if t < 0:
            raise MentionsError(f"row {n}: negative time {t}", path,
                                "times are seconds from the start of the video")
        label = labelset.resolve(rec["label"])
        if label is None:
            raise MentionsError(f"row {n}: unknown label {rec['label']!r}", path,
                                "known labels: " + ", ".join(labelset.ids))
        end = None
        if rec.get("end_s"):
            end = _parse_float(rec["end_s"], "end_s", path, n)
            if end <= t:
                raise MentionsError(f"row {n}: end_s {end} is not after time_s {t}", path)
        conf = None
        if rec.get("confidence"):
            conf = _parse_float(rec["confidence"], "confidence", path, n)
        mentions.append(Mention(t, label, end, rec.get("text", ""), conf,
                                rec.get("source") or "file"))
    return sorted(mentions, key=lambda m: m.time_s)


def _fmt(value: Optional[float], digits: int = 3) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def mentions_to_csv(mentions: Sequence[Mention]) -> str:
    """CSV text with the columns ``time_s,label,end_s,text,confidence,source`` (text that a
    spreadsheet would run as a formula is escaped: :mod:`..core.csvtext`)."""
    return csv_text(CSV_FIELDS, [[_fmt(m.time_s), m.label, _fmt(m.end_s), m.text,
                                  _fmt(m.confidence, 4), m.source]
                                 for m in sorted(mentions, key=lambda m: m.time_s)])


def write_mentions_csv(path: os.PathLike | str, mentions: Sequence[Mention]) -> None:
    """Write mentions atomically (see :func:`mentions_to_csv`)."""
    atomic_write_text(path, mentions_to_csv(mentions))


# --------------------------------------------------------------------------- transcripts
_TIME_RE = re.compile(r"(?:(\d+):)?(\d{1,2}):(\d{1,2})[.,](\d{1,3})")
_CUE_RE = re.compile(r"^\s*(\S+)\s*-->\s*(\S+)")
_INLINE_TS_RE = re.compile(r"<((?:\d+:)?\d{1,2}:\d{1,2}[.,]\d{1,3})>")
_TAG_RE = re.compile(r"<[^>]*>")


def _parse_ts(text: str) -> Optional[float]:
    m = _TIME_RE.fullmatch(text.strip())
    if not m:
        return None
    h, mnt, s, frac = m.groups()
    return int(h or 0) * 3600 + int(mnt) * 60 + int(s) + int(frac.ljust(3, "0")) / 1000.0


@dataclass(frozen=True)
class Cue:
    start: float
    end: float
    text: str  # may carry WebVTT inline timestamps


def parse_transcript(path: os.PathLike | str) -> list[Cue]:
    """Cues of an SRT or WebVTT file."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise MentionsError("file not found", path) from None
    except UnicodeDecodeError:
        raise MentionsError("not UTF-8 text", path, "save the transcript as UTF-8") from None
    except OSError as exc:
        raise MentionsError(f"cannot read ({exc.strerror})", path) from None
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    cues: list[Cue] = []
    for block in re.split(r"\n\s*\n", text):
        lines = [ln for ln in block.split("\n") if ln.strip()]
        for i, line in enumerate(lines):
            m = _CUE_RE.match(line)
            if not m:
                continue
            start, end = _parse_ts(m.group(1)), _parse_ts(m.group(2))
            if start is None or end is None:
                raise MentionsError(f"bad cue timing {line.strip()!r}", path,
                                    "expected HH:MM:SS,mmm --> HH:MM:SS,mmm")
            if end < start:
                raise MentionsError(f"cue ends before it starts: {line.strip()!r}", path)
            cues.append(Cue(start, end, " ".join(lines[i + 1:])))
            break
    if not cues:
        raise MentionsError("no timed cues found", path,
                            "expected an SRT or WebVTT transcript with '-->' timings")
    return cues


def _timed_words(cue: Cue) -> list[tuple[str, float]]:
    """Normalised words of a cue with their start times."""
    pieces: list[tuple[str, Optional[float]]] = []
    pos = 0
    current: Optional[float] = None
    for m in _INLINE_TS_RE.finditer(cue.text):
        pieces.append((cue.text[pos:m.start()], current))
        current = _parse_ts(m.group(1))
        pos = m.end()
    pieces.append((cue.text[pos:], current))
    has_inline = any(t is not None for _, t in pieces)
    if has_inline:
        out = []
        for chunk, t in pieces:
            words = normalize_words(_TAG_RE.sub(" ", chunk))
            for w in words:
                out.append((w, cue.start if t is None else t))
        return out
    plain = _TAG_RE.sub(" ", cue.text)
    total = max(len(plain), 1)
    out = []
    # Interpolate each word's onset by its character position within the cue.
    for m in re.finditer(r"\S+", plain):
        for w in normalize_words(m.group(0)):
            out.append((w, cue.start + (cue.end - cue.start) * m.start() / total))
    return out


def mentions_from_transcript(path: os.PathLike | str, labelset: Optional[LabelSet] = None,
                             offset_s: float = 0.0) -> list[Mention]:
    """Mentions found in an SRT / WebVTT transcript.

    Args:
        path: the transcript.
        labelset: the vocabulary whose synonyms are searched.
        offset_s: subtract from transcript times to reach the video clock (the transcript of a
            separate audio file is on the audio clock: pass the procedure's audio offset).
    """
    labelset = labelset or LabelSet.default()
    out: list[Mention] = []
    for cue in parse_transcript(path):
        timed = _timed_words(cue)
        words = [w for w, _ in timed]
        for match in labelset.find(words):
            start = timed[match.first_word][1]
            nxt = match.last_word + 1
            end = timed[nxt][1] if nxt < len(timed) else cue.end
            if end <= start:
                end = None
            text = " ".join(words[match.first_word:match.last_word + 1])
            m = Mention(start, match.label, end, text, None, "transcript")
            out.append(m.shifted(-offset_s))
    return sorted(out, key=lambda m: m.time_s)


TRANSCRIPT_SUFFIXES = (".srt", ".vtt")


def read_mentions(path: os.PathLike | str, labelset: Optional[LabelSet] = None,
                  offset_s: float = 0.0) -> list[Mention]:
    """Mentions from a CSV file or an SRT/WebVTT transcript, chosen by extension."""
    path = Path(path)
    if path.suffix.lower() in TRANSCRIPT_SUFFIXES:
        return mentions_from_transcript(path, labelset, offset_s)
    return read_mentions_csv(path, labelset)
