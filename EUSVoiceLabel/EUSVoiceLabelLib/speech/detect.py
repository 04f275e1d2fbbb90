"""Automatic detection of spoken landmark mentions (the paper's future work).

An offline recogniser that ships its own model, pocketsphinx 5 (en-US acoustic model and CMU
dictionary inside the wheel), finds every synonym of the label vocabulary in a procedure's audio:

1. The audio is averaged to mono, resampled to 16 kHz, raised if it was recorded quietly
   (:func:`.denoise.level_gain`), high-passed and passed through a noise suppressor
   (:func:`.denoise.suppress_noise`: WebRTC's where the ``webrtc-noise-gain`` wheel exists, else
   a stationary Wiener gain), then cut into voiced regions by pocketsphinx's voice-activity
   detector (:mod:`.vad`), so silence costs nothing.
2. Each region is searched by pocketsphinx's keyphrase spotter (:mod:`.spotter`): every
   vocabulary phrase is a chain of triphone HMMs (one dictionary word, so the phones at word
   joins have their neighbours as context) scored frame by frame against a free loop over the
   39 English phones.  Acronyms are spelled ("PD" -> "P D"); words missing from the dictionary
   come from a small medical lexicon or from espeak-ng's letter-to-sound rules when it is
   installed (:mod:`.pronunciation`).
3. Each hit's score is the log-likelihood ratio of the phrase against the phone loop over the
   phrase's own frames, per frame; a logistic curve maps it to a confidence in 0-1.  A hit is
   kept when its confidence reaches the phrase's threshold (:data:`.spotter.DEFAULT_THRESHOLD`
   unless a calibrated vocabulary says otherwise, see :mod:`.calibrate`); overlapping hits
   compete (:func:`select_mentions`).

This module is the pipeline: recordings are cut into pieces decoded in worker processes, and
the hits become mentions.  Onsets are the spotter's start frame of the phrase (10 ms frames), on
the video clock.  Measured accuracy and speed, and what limits them: ``docs/detection.md``.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Iterable, Mapping, Optional, Sequence, Union

import numpy as np

from ..core.errors import EUSVoiceLabelError
from ..core.paper import WINDOW_S
from ..core.pool import process_cores, run_tasks, spawn_pool
from ..core.progress import Cancelled, ProgressLike, as_progress
from ..data.mentions import CSV_FIELDS, Mention
from ..data.outputs import OutputKind, csv_rows
from ..data.procedure import Procedure, load_procedure
from ..data.vocabulary import LabelSet, load_labelset
from .denoise import RATE, level_gain, noise_suppressor, to_mono, to_pcm16
from .spotter import Hit, Keyphrase, build_keyphrases, get_spotter
from .vad import voiced_regions

log = logging.getLogger(__name__)

OVERLAP_S = 0.05  # phrases overlapping less than this are both kept
#: Detected mentions whose onsets are closer than one window compete like overlapping phrases:
#: their windows (the second of speech and frames each is labelled from) would overlap.
MIN_ONSET_GAP_S = WINDOW_S
#: A kept phrase takes the onset of a longer phrase of its label that ends with it and starts
#: at least this much earlier (a whole word more: "head of the pancreas" around "pancreas").
NEST_MIN_S = 0.3
NEST_END_S = 0.1  # "ends with it": the two ends this close

CHUNK_S = 60.0          # recordings are decoded in pieces of this length ...
CHUNK_OVERLAP_S = 3.0   # ... overlapping so that no phrase is lost at a cut
PARALLEL_MIN_S = 120.0  # recordings shorter than this are decoded in one process


def _detected_mentions(path) -> bool:
    """A mentions CSV written by ``detect``: our header, every row from the detector."""
    rows = csv_rows(path)
    return bool(rows) and rows[0] == list(CSV_FIELDS) and \
        all(row[-1:] == ["auto"] for row in rows[1:] if row)


#: ``detect --out``: replaces an existing file only when it holds detected mentions of ours
#: (never a hand-made or reviewed mentions.csv).
DETECTED_MENTIONS = OutputKind("detected-mentions", "a CSV of mentions found by "
                               "'eusvoicelabel detect'", folder=False,
                               signature=_detected_mentions)


def _spot_chunk(keyphrases: Sequence[Keyphrase], samples: np.ndarray, sample_rate: int,
                t0_s: float, gain: float = 1.0) -> list[Hit]:
    """Clean, segment and decode one piece of a recording (runs in worker processes too)."""
    pcm = to_pcm16(samples, sample_rate, clean=True, gain=gain)
    if len(pcm) < int(0.2 * RATE) or not np.any(pcm):
        return []
    spotter = get_spotter(keyphrases)
    hits: list[Hit] = []
    for a, b in voiced_regions(pcm):
        hits.extend(spotter.spot(pcm[a:b], t0_s + a / RATE))
    return hits


MAX_WORKERS = 2  # decoding processes at most


def default_workers(duration_s: float = math.inf) -> int:
    """Decoding processes to use by default: one per core, at most :data:`MAX_WORKERS`; one
    for a recording shorter than :data:`PARALLEL_MIN_S` (not worth starting processes)."""
    return min(MAX_WORKERS, process_cores()) if duration_s >= PARALLEL_MIN_S else 1


class DetectionCancelled(Cancelled):
    """Detection was stopped by its progress reporter (nothing is returned)."""


def spot_candidates(audio: np.ndarray, sample_rate: int, labelset: LabelSet, *,
                    progress: ProgressLike = False, workers: Optional[int] = None,
                    desc: str = "detect") -> list[Hit]:
    """Every keyphrase hit in a recording, before thresholds, on the audio clock.

    The recording is cut into overlapping pieces of :data:`CHUNK_S` decoded by ``workers``
    processes (default: 2 on recordings of two minutes or more when the machine has 2 cores).
    ``progress`` reports the seconds of audio decoded (see :mod:`..core.progress`; a callback
    gets ``(seconds done, seconds in all)``); when it is cancelled, detection stops after the
    current piece and raises :class:`DetectionCancelled`.
    """
    x = to_mono(audio, finite=False)  # each piece is made finite as it is decoded (to_pcm16)
    if sample_rate <= 0:
        raise EUSVoiceLabelError(f"invalid sample rate {sample_rate}")
    duration = len(x) / sample_rate
    noise_suppressor()  # a bad EUSVOICELABEL_NOISE_SUPPRESSOR fails here, not in a worker
    if duration < 0.2 or not np.any(x):
        return []
    keyphrases = build_keyphrases(labelset)
    gain = level_gain(x)
    step = int((CHUNK_S - CHUNK_OVERLAP_S) * sample_rate)
    size = int(CHUNK_S * sample_rate)
    starts = list(range(0, max(1, len(x) - int(CHUNK_OVERLAP_S * sample_rate)), step))
    tasks = [(keyphrases, x[s:s + size], sample_rate, s / sample_rate, gain) for s in starts]
    workers = default_workers(duration) if workers is None else max(1, int(workers))
    reporter = as_progress(progress)
    total_s = round(duration)
    hits: list[Hit] = []
    with reporter.task(desc, total=total_s, unit="s audio", transient=True) as task:

        def piece_done(i: int, found: list[Hit]) -> None:
            # pieces overlap: the seconds decoded stop at the recording's length
            hits.extend(found)
            task.update(min(float(total_s), task.done + len(tasks[i][1]) / sample_rate))
            if reporter.cancelled():
                raise DetectionCancelled("detection cancelled")

        if workers > 1 and len(tasks) > 1:
            try:
                with spawn_pool(min(workers, len(tasks))) as pool:
                    run_tasks(pool, _spot_chunk, tasks, on_result=piece_done)
                return _dedupe(hits)
            except (OSError, RuntimeError, ImportError) as exc:  # e.g. no process spawning
                log.warning("parallel decoding unavailable (%s); decoding in one process", exc)
                hits.clear()
                task.restart()
        for i, args in enumerate(tasks):
            piece_done(i, _spot_chunk(*args))
    return _dedupe(hits)


def _dedupe(hits: list[Hit]) -> list[Hit]:
    """Keep the best-scoring of overlapping hits of one phrase (repeats where long regions were
    cut with overlap, and the decoder's near-identical alignments of one phrase).

    Different phrases are all kept for :func:`select_mentions`: "tail of the pancreas" scores
    lower per frame than the "pancreas" inside it, yet it is the mention (with its onset).
    """
    bucket_s = 1.0  # kept hits are filed under every second they touch: linear, not quadratic
    kept: dict[tuple[int, int], list[Hit]] = {}
    out: list[Hit] = []
    for h in sorted(hits, key=lambda h: -h.score):
        span = range(int(h.start_s // bucket_s), int(h.end_s // bucket_s) + 1)
        if any(o.start_s < h.end_s and h.start_s < o.end_s
               for b in span for o in kept.get((h.phrase_index, b), ())):
            continue
        out.append(h)
        for b in span:
            kept.setdefault((h.phrase_index, b), []).append(h)
    return sorted(out, key=lambda h: h.start_s)


def select_mentions(hits: Iterable[Hit], labelset: LabelSet,
                    thresholds: Optional[Mapping[str, float]] = None,
                    audio_offset_s: float = 0.0) -> list[Mention]:
    """Keep the hits whose confidence reaches their phrase's threshold, as video-clock
    mentions."""
    keyphrases = build_keyphrases(labelset, thresholds)
    above = [h for h in hits if h.confidence >= keyphrases[h.phrase_index].threshold]
    kept: list[Hit] = []
    # Phrases spotted on the same stretch of speech compete: the most confident one wins (the
    # longer one on a tie).  A longer phrase needs no other favour: its per-frame score is a
    # fair match for the shorter one inside it once the decoder's beam lets it live (see
    # KeywordSpotter), and where the speaker said only "pancreas", "head of the pancreas"
    # over "and the pancreas" scores worse.  So do phrases that start within one window of
    # each other: each mention is labelled from the second that starts at its onset, so two
    # that close would label the same speech and frames twice (on the synthetic cohorts the
    # second one was a carrier word after the name, "... bile duct on the left" heard as
    # "common duct", or a distractor; docs/detection.md).
    for h in sorted(above, key=lambda h: (-h.confidence, h.start_s - h.end_s)):
        if any(_overlaps(h, k) or abs(h.start_s - k.start_s) < MIN_ONSET_GAP_S for k in kept):
            continue
        kept.append(h)
    out = []
    for h in kept:
        start, phrase = _whole_phrase(h, above, kept, keyphrases)
        t = round(start - audio_offset_s, 3)
        if t < 0:
            continue  # spoken before the video started
        out.append(Mention(t, keyphrases[h.phrase_index].label,
                           round(h.end_s - audio_offset_s, 3), phrase,
                           round(h.confidence, 4), "auto"))
    return sorted(out, key=lambda m: m.time_s)


def _overlaps(a: Hit, b: Hit) -> bool:
    """Two hits share more than :data:`OVERLAP_S` of speech."""
    return a.start_s < b.end_s - OVERLAP_S and b.start_s < a.end_s - OVERLAP_S


def _whole_phrase(h: Hit, above: Sequence[Hit], kept: Sequence[Hit],
                  keyphrases: Sequence[Keyphrase]) -> tuple[float, str]:
    """The onset and phrase of a kept hit, moved to the longest phrase of the same label
    that ends with it, starts at least :data:`NEST_MIN_S` earlier and overlaps no other kept
    hit (``above``: the hits that reach their phrase's threshold).

    The shorter phrase inside a longer one often scores higher per frame ("pancreas" inside
    "head of the pancreas", "portal confluence" inside "splenoportal confluence"), so it wins
    the competition and the mention was reported 0.5-0.7 s after its first word: a miss and a
    false alarm to ``--evaluate``, and a window that starts after the name began.  The label
    stays the kept hit's, and so does its confidence (the evidence for that label); only where
    the name began moves.
    """
    label = keyphrases[h.phrase_index].label
    longer = [o for o in above
              if keyphrases[o.phrase_index].label == label
              and o.start_s <= h.start_s - NEST_MIN_S and abs(o.end_s - h.end_s) <= NEST_END_S
              and not any(k is not h and _overlaps(o, k) for k in kept)]
    if not longer:
        return h.start_s, keyphrases[h.phrase_index].phrase
    whole = min(longer, key=lambda o: o.start_s)
    return whole.start_s, keyphrases[whole.phrase_index].phrase


def detect_mentions(audio: np.ndarray, sample_rate: int, labelset: Optional[LabelSet] = None,
                    *, audio_offset_s: float = 0.0,
                    thresholds: Optional[Mapping[str, float]] = None,
                    progress: ProgressLike = False,
                    workers: Optional[int] = None) -> list[Mention]:
    """Find spoken landmark mentions in a recording.

    Args:
        audio: samples (float, -1..1), mono or multi-channel, any rate.
        sample_rate: their rate in Hz.
        labelset: the vocabulary (default: the paper's five landmarks); a calibrated vocabulary
            carries per-phrase thresholds.
        audio_offset_s: audio time = video time + offset (``procedure.json``).
        thresholds: minimum confidence per phrase or label id (overrides the vocabulary's).
        progress: reporter of the seconds of audio decoded (True: a progress bar, a callback
            ``(seconds done, seconds in all)``, see :mod:`..core.progress`); when it is
            cancelled, :class:`DetectionCancelled` is raised.
        workers: decoding processes (default: 2 on long recordings, see
            :func:`spot_candidates`).

    Returns:
        Mentions on the video clock (``source="auto"``), sorted by time, with the phrase heard
        as ``text``, the end of the phrase and a confidence in 0-1.  Silent or very short
        recordings give an empty list.
    """
    labelset = labelset or LabelSet.default()
    hits = spot_candidates(audio, sample_rate, labelset, progress=progress, workers=workers)
    return select_mentions(hits, labelset, thresholds, audio_offset_s)


def in_video(mentions: Iterable[Mention], duration_s: float) -> list[Mention]:
    """The mentions whose onset lies within a video of ``duration_s`` (the audio may run
    longer, or start before it)."""
    return [m for m in mentions if 0 <= m.time_s < duration_s]


def detect_procedure(path_or_procedure: Union[str, os.PathLike, Procedure],
                     labelset: Optional[LabelSet] = None,
                     vocab: Union[str, os.PathLike, LabelSet, None] = None,
                     progress: ProgressLike = False, workers: Optional[int] = None
                     ) -> list[Mention]:
    """Detect the mentions of a procedure folder (or a loaded :class:`Procedure`), those whose
    onset lies within its video.

    ``vocab`` is a calibrated vocabulary (``detect --calibrate`` output) or a LabelSet; it
    replaces ``labelset``.  Default vocabulary: the procedure's ``labels.json`` or the paper's.
    """
    if isinstance(vocab, LabelSet):
        labelset = vocab
    elif vocab is not None:
        labelset = load_labelset(vocab)
    if isinstance(path_or_procedure, Procedure):
        proc = path_or_procedure
        labelset = labelset or proc.labelset
    else:
        labelset = labelset or load_labelset(None, path_or_procedure)
        proc = load_procedure(path_or_procedure, labelset=labelset)
    samples, rate = proc.native_audio()
    found = detect_mentions(samples, rate, labelset, audio_offset_s=proc.audio_offset_s,
                            progress=progress, workers=workers)
    return in_video(found, proc.duration_s)
