"""The keyword spotter: pocketsphinx's keyphrase search over the vocabulary's phrases, and the
hits it reports with their confidence."""

from __future__ import annotations

import logging
import math
import os
import re
import tempfile
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence, Union

import numpy as np
from pocketsphinx import Decoder

from ..core.errors import VocabularyError
from ..data.vocabulary import LabelSet, normalize_words
from .denoise import RATE
from .pronunciation import model_paths, raw_words, word_readings

log = logging.getLogger(__name__)


FRAME_S = 0.01           # decoder frame step
DEFAULT_THRESHOLD = 0.5  # confidence a hit needs when the vocabulary gives no threshold


@dataclass(frozen=True)
class Keyphrase:
    """One spoken phrase of the vocabulary as the recogniser sees it."""

    phrase: str                   # the synonym as written in the vocabulary
    label: str                    # its label id
    units: tuple[tuple[str, ...], ...]  # spoken units (words, letters) -> pronunciations
    threshold: float

    @property
    def pronunciation(self) -> str:
        """The phones searched for: each unit's first pronunciation, in order.

        pocketsphinx's keyword search uses one pronunciation per word.  Searching every
        combination of the units' alternatives as a phrase of its own was measured on the
        synthetic cohorts: the same recall, more false alarms (seed 0 at 15 dB: precision
        0.942 against 0.956).
        """
        return " ".join(prons[0] for prons in self.units)


def build_keyphrases(labelset: LabelSet,
                     thresholds: Optional[Mapping[str, float]] = None) -> list[Keyphrase]:
    """The vocabulary's phrases with pronunciations and confidence thresholds.

    ``thresholds`` maps a phrase (any spelling that normalises to it) or a label id to a
    minimum confidence; phrases without one use the label set's calibrated thresholds, then
    :data:`DEFAULT_THRESHOLD`.  Phrases with a word that has no pronunciation are skipped with
    a warning.  A phrase with a word of several readings (a spelled D, a rare word's spelling
    reading: :func:`.pronunciation.word_readings`) gives one keyphrase per reading, the usual
    one first.
    """
    given = {tuple(normalize_words(k)): float(v) for k, v in (thresholds or {}).items()}
    by_label = {lid: float(v) for lid, v in (thresholds or {}).items() if lid in labelset}
    stored = _labelset_thresholds(labelset)
    out: list[Keyphrase] = []
    for syn, lid in labelset.phrases():
        words = normalize_words(syn)
        raws = raw_words(syn)
        if len(raws) != len(words):
            raws = words
        readings: list[list[tuple[str, ...]]] = [[]]
        for token, raw in zip(words, raws):
            spoken = word_readings(token, raw)
            if not spoken:
                log.warning("no pronunciation for %r (in %r): phrase not detected", token, syn)
                break
            readings = [r + [tuple(u) for u in units] for r in readings for units in spoken]
        else:
            key = tuple(words)
            thr = given.get(key, by_label.get(lid, stored.get(key, DEFAULT_THRESHOLD)))
            # The first reading is the phrase's usual one; the others are searched as
            # phrases of their own with the same label and threshold, and compete with it
            # like any other phrase (select_mentions).
            out.extend(Keyphrase(syn, lid, tuple(units), thr) for units in readings)
    return out


def _labelset_thresholds(labelset: LabelSet) -> dict[tuple[str, ...], float]:
    """Per-phrase thresholds a calibrated vocabulary carries (``Label.thresholds``)."""
    out: dict[tuple[str, ...], float] = {}
    for label in labelset.labels:
        for phrase, value in dict(getattr(label, "thresholds", None) or ()).items():
            out[tuple(normalize_words(phrase))] = float(value)
    return out


@dataclass(frozen=True)
class Hit:
    """A keyphrase found by the decoder, on the audio clock (before thresholding)."""

    start_s: float
    end_s: float
    phrase_index: int
    score: float       # per-frame log-likelihood ratio of the phrase vs the phone loop
    confidence: float  # in 0-1


class KeywordSpotter:
    """pocketsphinx keyphrase search over the vocabulary (see the module doc).

    Every phrase is a chain of phone HMMs scored against a free phone loop, frame by frame; a
    phrase is reported where its path beats the loop by more than ``candidate_threshold``
    (a likelihood ratio over the whole phrase, default the search beam: whatever survives the
    search is a candidate, and the per-frame confidence makes the final choice).  A ratio over
    the whole phrase punishes length: at 1e-60 "body of the pancreas" spoken in 1.5-1.7 s was
    never reported though its confidence was 0.87-0.95, only its "pancreas", 0.7 s late
    (docs/detection.md).

    The search beam is :data:`BEAM`, far wider than pocketsphinx's 1e-48: the free phone loop
    is the best path in every frame, so a phrase's deficit grows with its length, and at 1e-48
    a phrase of more than about half a second was pruned even where it matched well ("tail of
    the pancreas" lost, its "pancreas" reported 0.7 s late).
    """

    def __init__(self, keyphrases: Sequence[Keyphrase],
                 candidate_threshold: Optional[float] = None, **config: object):
        if not keyphrases:
            raise VocabularyError("no vocabulary phrase could be given a pronunciation",
                                  hint="use words of the English dictionary or spell acronyms "
                                       "in capitals")
        self.keyphrases = list(keyphrases)
        hmm, _ = model_paths()
        # One dictionary word per phrase ("k3"), its units' phones joined: pocketsphinx gives a
        # word's inner phones their triphone contexts but treats a word's edges as next to
        # silence, so "P IY" + "D IY" as two words lost the IY-D context that tells PD from
        # PV (see Keyphrase.pronunciation).
        threshold = np.format_float_scientific(
            BEAM if candidate_threshold is None else candidate_threshold, trim="-")
        lines = [f"k{i} {kp.pronunciation}" for i, kp in enumerate(self.keyphrases)]
        phrases = [f"k{i} /{threshold}/" for i in range(len(self.keyphrases))]
        # Batch cepstral mean normalisation: each region is normalised on its own, so results
        # do not depend on what was decoded before.
        options = dict(hmm=hmm, samprate=RATE, loglevel="FATAL", lm=None, cmn="batch",
                       beam=BEAM, pbeam=BEAM)
        options.update(config)
        with tempfile.TemporaryDirectory(prefix="eusvoicelabel_kws_") as tmp:
            dict_path = os.path.join(tmp, "keyphrases.dict")
            kws_path = os.path.join(tmp, "keyphrases.kws")
            with open(dict_path, "w", encoding="utf-8") as f:
                f.write("\n".join(lines) + "\n")
            with open(kws_path, "w", encoding="utf-8") as f:
                f.write("\n".join(phrases) + "\n")
            self.decoder = Decoder(dict=dict_path, **options)
            self.decoder.add_kws("spot", kws_path)
        self.decoder.activate_search("spot")
        self._cmn = self.decoder.get_cmn()

    def spot(self, pcm16: np.ndarray, t0_s: float = 0.0) -> list[Hit]:
        """Candidate phrases in one voiced region (int16 samples at 16 kHz) from ``t0_s``."""
        d = self.decoder
        # Every region starts from the same front-end state, so results do not depend on
        # what was decoded before.
        d.reinit_feat()
        d.set_cmn(self._cmn)
        d.start_utt()
        d.process_raw(np.ascontiguousarray(pcm16, dtype=np.int16).tobytes(), full_utt=True)
        d.end_utt()
        hits: list[Hit] = []
        for seg in d.seg() or ():
            m = re.fullmatch(r"k(\d+)", seg.word.strip())  # the keyphrase, as written
            if m is None:
                continue
            sf, ef = seg.start_frame, seg.end_frame
            # Per-frame log-likelihood ratio of the phrase against the phone loop
            # (seg.prob is exp(score / 1024): scores are stored shifted by 10 bits).
            score = _log_score(seg.prob) / max(1, ef - sf + 1)
            hits.append(Hit(t0_s + sf * FRAME_S, t0_s + (ef + 1) * FRAME_S, int(m.group(1)),
                            score, _confidence(score)))
        return hits


def _log_score(ascore: float) -> float:
    return math.log(max(ascore, 1e-300)) * 1024.0


def _confidence(score: float) -> float:
    """Map the per-frame log-likelihood gap to 0-1 (logistic; centre and slope set below)."""
    z = (score - SCORE_CENTRE) * SCORE_SLOPE
    if z < -700.0:  # a hopeless hit of the widest beam: exp would overflow
        return 0.0
    return 1.0 / (1.0 + math.exp(-z))


# Confidence 0.5 at a per-frame log-likelihood ratio of -3.7, rising to 0.95 at -1.7.  The
# centre was chosen on eight synthetic conditions at once (two cohorts at 15 dB room noise, one
# each at 10 dB, 20 dB and clean, and the clean speech under broadband hiss, white noise, and
# room noise without beeps) with WebRTC's suppressor: the value of best mean F1, with
# precision >= 0.85 in all eight; it is not the optimum of any one of them (docs/detection.md).
# Per-frame ratios of true mentions fall as the noise rises, so noisier rooms trade recall for
# precision here and ``detect --calibrate`` adapts the thresholds to a site's own recordings.
SCORE_CENTRE = -3.7
SCORE_SLOPE = 1.5


# Search beam, and the candidate threshold (see KeywordSpotter).  Wider beams keep more long
# phrases over the words before a name: at 1e-200 (with the threshold as wide) recall fell on
# three of the four synthetic cohorts ("confluence" taken for "portal splenic confluence").
BEAM = 1e-100
_SPOTTERS: dict[tuple, KeywordSpotter] = {}


def get_spotter(keyphrases: Union[LabelSet, Sequence[Keyphrase]]) -> KeywordSpotter:
    """A keyword spotter for a vocabulary (built once per process and reused)."""
    if isinstance(keyphrases, LabelSet):
        keyphrases = build_keyphrases(keyphrases)
    key = tuple((kp.phrase, kp.label, kp.units) for kp in keyphrases)
    spotter = _SPOTTERS.get(key)
    if spotter is None:
        if len(_SPOTTERS) > 4:
            _SPOTTERS.clear()
        spotter = _SPOTTERS[key] = KeywordSpotter(keyphrases)
    return spotter
