"""Automatic detection of spoken landmark mentions (the paper's future work).

An offline recogniser that ships its own model, pocketsphinx 5 (en-US acoustic model and CMU
dictionary inside the wheel), finds every synonym of the label vocabulary in a procedure's audio:

1. The audio is averaged to mono, resampled to 16 kHz, raised if it was recorded quietly
   (:func:`level_gain`), high-passed and passed through a noise suppressor
   (:func:`suppress_noise`: WebRTC's where the ``webrtc-noise-gain`` wheel exists, else a
   stationary Wiener gain), then cut into voiced regions by pocketsphinx's voice-activity
   detector, so silence costs nothing.
2. Each region is searched by pocketsphinx's keyphrase spotter: every vocabulary phrase is a
   chain of triphone HMMs (one dictionary word, so the phones at word joins have their
   neighbours as context) scored frame by frame against a free loop over the 39 English
   phones.  Acronyms are spelled ("PD" -> "P D"); words missing from the dictionary come from
   a small medical lexicon or from espeak-ng's letter-to-sound rules when it is installed.
3. Each hit's score is the log-likelihood ratio of the phrase against the phone loop over the
   phrase's own frames, per frame; a logistic curve maps it to a confidence in 0-1.  A hit is
   kept when its confidence reaches the phrase's threshold (:data:`DEFAULT_THRESHOLD` unless a
   calibrated vocabulary says otherwise, see :mod:`.detect_eval`); overlapping hits compete
   (:func:`select_mentions`).

Onsets are the spotter's start frame of the phrase (10 ms frames), on the video clock.
Measured accuracy and speed, and what limits them: ``docs/detection.md``.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Mapping, Optional, Sequence, Union

import numpy as np

from .core.errors import EUSVoiceLabelError, VocabularyError
from .data.vocabulary import LabelSet, normalize_words

if TYPE_CHECKING:
    from .data.mentions import Mention
    from .data.procedure import Procedure

log = logging.getLogger(__name__)

RATE = 16_000            # pocketsphinx's en-US model
FRAME_S = 0.01           # decoder frame step
DEFAULT_THRESHOLD = 0.5  # confidence a hit needs when the vocabulary gives no threshold

# The 39 phones of the CMU dictionary (the acoustic model's phone set minus SIL).
PHONES = ("AA AE AH AO AW AY B CH D DH EH ER EY F G HH IH IY JH K L M N NG OW OY P R S SH T TH "
          "UH UW V W Y Z ZH").split()

# Letter names, for spelled acronyms ("PD" -> P IY D IY).
LETTERS = {
    "a": "EY", "b": "B IY", "c": "S IY", "d": "D IY", "e": "IY", "f": "EH F", "g": "JH IY",
    "h": "EY CH", "i": "AY", "j": "JH EY", "k": "K EY", "l": "EH L", "m": "EH M", "n": "EH N",
    "o": "OW", "p": "P IY", "q": "K Y UW", "r": "AA R", "s": "EH S", "t": "T IY", "u": "Y UW",
    "v": "V IY", "w": "D AH B AH L Y UW", "x": "EH K S", "y": "W AY", "z": "Z IY",
}

# Anatomical words missing from the CMU dictionary (several spoken variants where usage varies).
MEDICAL_LEXICON: dict[str, tuple[str, ...]] = {
    "wirsung": ("W ER S AH NG", "V IH R S UH NG", "W IH R S AH NG"),
    "choledochus": ("K OW L EH D AH K AH S", "K AH L EH D AH K AH S"),
    "choledochal": ("K OW L EH D AH K AH L",),
    "uncinate": ("AH N S IH N EY T", "AH N S AH N AH T"),
    "parenchyma": ("P ER EH NG K AH M AH", "P AE R AH NG K AY M AH"),
    "spleno": ("S P L IY N OW",),
    "splenoportal": ("S P L IY N OW P AO R T AH L",),
    "splenomesenteric": ("S P L IY N OW M EH S AH N T EH R IH K",),
    "mesenteric": ("M EH S AH N T EH R IH K",),
    "ampulla": ("AE M P UH L AH", "AE M P Y UW L AH"),
    "papilla": ("P AH P IH L AH",),
    "duodenum": ("D UW AH D IY N AH M", "D UW AA D AH N AH M"),
    "choledocholithiasis": ("K OW L EH D AH K OW L IH TH AY AH S IH S",),
    "celiac": ("S IY L IY AE K",),
    "hepatic": ("HH AH P AE T IH K",),
    "cystic": ("S IH S T IH K",),
    "vater": ("F AA T ER", "V AA T ER"),
}


MAX_VARIANTS = 3  # pronunciation variants kept per word


# --------------------------------------------------------------------------- pronunciations
@functools.lru_cache(maxsize=1)
def _model_paths() -> tuple[str, str]:
    """(acoustic model folder, dictionary file) shipped in the pocketsphinx wheel."""
    try:
        import pocketsphinx
    except ImportError:  # pragma: no cover - a declared dependency
        raise EUSVoiceLabelError("pocketsphinx is not installed",
                                 hint="pip install 'pocketsphinx>=5'") from None
    root = Path(pocketsphinx.get_model_path())
    hmm, dic = root / "en-us" / "en-us", root / "en-us" / "cmudict-en-us.dict"
    if not (hmm / "mdef").is_file() or not dic.is_file():
        raise EUSVoiceLabelError("the pocketsphinx en-US model is missing", root,
                                 "reinstall pocketsphinx (its wheel ships the model)")
    return str(hmm), str(dic)


@functools.lru_cache(maxsize=1)
def _cmudict() -> dict[str, tuple[str, ...]]:
    """The CMU dictionary shipped with pocketsphinx: word -> pronunciations."""
    out: dict[str, list[str]] = {}
    with open(_model_paths()[1], encoding="utf-8") as f:
        for line in f:
            parts = line.split()
            if len(parts) < 2:
                continue
            word = re.sub(r"\(\d+\)$", "", parts[0])
            out.setdefault(word, []).append(" ".join(parts[1:]))
    return {w: tuple(p) for w, p in out.items()}


# espeak-ng IPA -> CMU phones (longest symbols first when scanning).
_IPA = {
    "tʃ": "CH", "dʒ": "JH", "aɪ": "AY", "aʊ": "AW", "eɪ": "EY", "oʊ": "OW", "əʊ": "OW", "ɔɪ": "OY",
    "ɜː": "ER", "ɝ": "ER", "ɚ": "ER", "ɑː": "AA", "ɔː": "AO", "iː": "IY", "uː": "UW", "ɪə": "IH R",
    "eə": "EH R", "ʊə": "UH R", "ɑ": "AA", "ɒ": "AA", "æ": "AE", "ʌ": "AH", "ə": "AH", "ɐ": "AH",
    "ɔ": "AO", "ɛ": "EH", "e": "EH", "ɪ": "IH", "i": "IY", "ᵻ": "IH", "ʊ": "UH", "u": "UW",
    "o": "OW", "a": "AE", "b": "B", "d": "D", "ð": "DH", "f": "F", "ɡ": "G", "g": "G", "h": "HH",
    "j": "Y", "k": "K", "l": "L", "m": "M", "n": "N", "ŋ": "NG", "p": "P", "ɹ": "R", "r": "R",
    "s": "S", "ʃ": "SH", "t": "T", "θ": "TH", "v": "V", "w": "W", "z": "Z", "ʒ": "ZH", "x": "K",
    "ɾ": "T", "ʔ": "", "ɫ": "L", "y": "UW", "ø": "ER", "œ": "ER", "ç": "HH",
}
_IPA_KEYS = sorted(_IPA, key=len, reverse=True)


@functools.lru_cache(maxsize=256)
def _espeak_pronunciation(word: str) -> Optional[str]:
    """CMU phones for a word from espeak-ng's letter-to-sound rules, if espeak-ng is present."""
    exe = shutil.which("espeak-ng") or shutil.which("espeak")
    if exe is None:
        return None
    try:
        ipa = subprocess.run([exe, "-q", "-v", "en-us", "--ipa", word], capture_output=True,
                             text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    ipa = re.sub(r"[ˈˌː.\s\-_]", lambda m: "ː" if m.group(0) == "ː" else "", ipa)
    phones: list[str] = []
    i = 0
    while i < len(ipa):
        for key in _IPA_KEYS:
            if ipa.startswith(key, i):
                if _IPA[key]:
                    phones.extend(_IPA[key].split())
                i += len(key)
                break
        else:
            i += 1  # unknown symbol (stress, length, tie): skip
    return " ".join(phones) or None


def _is_acronym(token: str, raw: str) -> bool:
    """Whether a phrase word is spoken letter by letter: upper-case or dotted in the vocabulary
    ("PD", "P.D."), or a short word without vowels ("cbd")."""
    if re.fullmatch(r"(?:[A-Za-z]\.){2,}[A-Za-z]?\.?", raw):
        return True
    letters = re.sub(r"[^A-Za-z]", "", raw)
    if 2 <= len(letters) <= 5 and letters.isupper():
        return True
    return 2 <= len(token) <= 5 and not re.search(r"[aeiouy]", token)


def word_pronunciations(token: str, raw: str = "") -> list[list[str]]:
    """How one normalised phrase word is spoken: a list of units, each with its pronunciation
    variants (CMU phone strings).

    ``raw`` is the word as written in the vocabulary, used to recognise acronyms.  An acronym
    is one unit per letter ("PD" -> [["P IY"], ["D IY"]]); other words are one unit from the
    CMU dictionary, else the medical lexicon, else espeak-ng.  The keyword search uses
    each unit's first pronunciation (:attr:`Keyphrase.pronunciation`).  Empty when no
    pronunciation is found.
    """
    if token.isalpha() and _is_acronym(token, raw or token):
        return [[LETTERS[c]] for c in token]
    prons = list(_cmudict().get(token, ()))[:MAX_VARIANTS]
    if not prons and token.isalpha():
        # Rare words: the curated readings; espeak-ng's letter-to-sound rules only for a word
        # the lexicon lacks (a reading after the first is never searched, so asking espeak-ng
        # for a known word would only start a process for nothing).
        prons = list(MEDICAL_LEXICON.get(token, ()))[:MAX_VARIANTS]
        if not prons:
            guess = _espeak_pronunciation(token)
            prons = [guess] if guess else []
    return [prons] if prons else []


def _raw_words(synonym: str) -> list[str]:
    """The vocabulary's spelling of each normalised word (to spot upper-case acronyms)."""
    # Same splitting as normalize_words, keeping case: dotted acronyms collapse first.
    text = re.sub(r"\b((?:[A-Za-z]\.){2,}[A-Za-z]?)", lambda m: m.group(1).replace(".", ""),
                  synonym)
    return re.findall(r"[A-Za-z0-9']+", text)


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
    a warning.
    """
    given = {tuple(normalize_words(k)): float(v) for k, v in (thresholds or {}).items()}
    by_label = {lid: float(v) for lid, v in (thresholds or {}).items() if lid in labelset}
    stored = _labelset_thresholds(labelset)
    out: list[Keyphrase] = []
    for syn, lid in labelset.phrases():
        words = normalize_words(syn)
        raws = _raw_words(syn)
        if len(raws) != len(words):
            raws = words
        units: list[tuple[str, ...]] = []
        for token, raw in zip(words, raws):
            spoken = word_pronunciations(token, raw)
            if not spoken:
                log.warning("no pronunciation for %r (in %r): phrase not detected", token, syn)
                break
            units.extend(tuple(u) for u in spoken)
        else:
            key = tuple(words)
            thr = given.get(key, by_label.get(lid, stored.get(key, DEFAULT_THRESHOLD)))
            out.append(Keyphrase(syn, lid, tuple(units), thr))
    return out


def _labelset_thresholds(labelset: LabelSet) -> dict[tuple[str, ...], float]:
    """Per-phrase thresholds a calibrated vocabulary carries (``Label.thresholds``)."""
    out: dict[tuple[str, ...], float] = {}
    for label in labelset.labels:
        for phrase, value in dict(getattr(label, "thresholds", None) or ()).items():
            out[tuple(normalize_words(phrase))] = float(value)
    return out


# --------------------------------------------------------------------------- recogniser
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
    (a likelihood ratio over the whole phrase; permissive, since the per-frame confidence makes
    the final choice.  At the decoder's usual 1e-30 long phrases such as "body of the pancreas"
    spoken slowly in noise fell below it and were lost entirely).

    The search beam is :data:`BEAM`, far wider than pocketsphinx's 1e-48: the free phone loop
    is the best path in every frame, so a phrase's deficit grows with its length, and at 1e-48
    a phrase of more than about half a second was pruned even where it matched well ("tail of
    the pancreas" lost, its "pancreas" reported 0.7 s late).
    """

    def __init__(self, keyphrases: Sequence[Keyphrase], candidate_threshold: float = 1e-60,
                 **config: object):
        from pocketsphinx import Decoder

        if not keyphrases:
            raise VocabularyError("no vocabulary phrase could be given a pronunciation",
                                  hint="use words of the English dictionary or spell acronyms "
                                       "in capitals")
        self.keyphrases = list(keyphrases)
        hmm, _ = _model_paths()
        # One dictionary word per phrase ("k3"), its units' phones joined: pocketsphinx gives a
        # word's inner phones their triphone contexts but treats a word's edges as next to
        # silence, so "P IY" + "D IY" as two words lost the IY-D context that tells PD from
        # PV (see Keyphrase.pronunciation).
        threshold = np.format_float_scientific(candidate_threshold, trim="-")
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
    return 1.0 / (1.0 + math.exp(-(score - SCORE_CENTRE) * SCORE_SLOPE))


# Confidence 0.5 at a per-frame log-likelihood ratio of -3.7, rising to 0.95 at -1.7.  The
# centre was chosen on eight synthetic conditions at once (two cohorts at 15 dB room noise, one
# each at 10 dB, 20 dB and clean, and the clean speech under broadband hiss, white noise, and
# room noise without beeps) with WebRTC's suppressor: the value of best mean F1, with
# precision >= 0.85 in all eight; it is not the optimum of any one of them (docs/detection.md).
# Per-frame ratios of true mentions fall as the noise rises, so noisier rooms trade recall for
# precision here and ``detect --calibrate`` adapts the thresholds to a site's own recordings.
SCORE_CENTRE = -3.7
SCORE_SLOPE = 1.5
OVERLAP_S = 0.05  # phrases overlapping less than this are both kept
# Search beam (see KeywordSpotter): every value from 1e-80 to 1e-200 gave the same detections on
# the synthetic cohorts, at the same speed.
BEAM = 1e-100


# --------------------------------------------------------------------------- voice activity
def voiced_regions(pcm16: np.ndarray, *, pad_s: float = 0.3, min_gap_s: float = 0.6,
                   min_len_s: float = 0.2, max_len_s: float = 20.0, overlap_s: float = 2.0,
                   mode: int = 1) -> list[tuple[int, int]]:
    """Sample ranges [start, stop) of 16 kHz audio that contain speech.

    WebRTC-style frame classification (pocketsphinx ``Vad``), padded by ``pad_s`` so word edges
    are kept, merged across gaps shorter than ``min_gap_s``; regions longer than ``max_len_s``
    are cut into overlapping pieces (``overlap_s``) so no phrase is lost at a cut.
    """
    from pocketsphinx import Vad

    vad = Vad(mode, RATE)
    step = vad.frame_bytes // 2
    n = len(pcm16) // step
    if n == 0:
        return []
    frames = np.ascontiguousarray(pcm16[:n * step], dtype=np.int16).reshape(n, step)
    voiced = np.fromiter((vad.is_speech(f.tobytes()) for f in frames), bool, n)
    if not voiced.any():
        return []
    # Runs of voiced frames -> padded sample ranges, merged across short gaps.
    edges = np.flatnonzero(np.diff(np.r_[0, voiced.astype(np.int8), 0]))
    pad, gap = int(pad_s * RATE), int(min_gap_s * RATE)
    regions: list[list[int]] = []
    for a, b in zip(edges[::2], edges[1::2]):
        s0, s1 = max(0, a * step - pad), min(len(pcm16), b * step + pad)
        if regions and s0 - regions[-1][1] < gap:
            regions[-1][1] = s1
        else:
            regions.append([s0, s1])
    out: list[tuple[int, int]] = []
    max_len, ov = int(max_len_s * RATE), int(overlap_s * RATE)
    for s0, s1 in regions:
        if s1 - s0 < min_len_s * RATE:
            continue
        while s1 - s0 > max_len:
            out.append((s0, s0 + max_len))
            s0 += max_len - ov
        out.append((s0, s1))
    return out


# --------------------------------------------------------------------------- noise reduction
HIGHPASS_HZ = 150.0


def highpass(samples: np.ndarray, cutoff_hz: Optional[float] = None) -> np.ndarray:
    """Remove rumble and mains hum below the speech band (4th-order Butterworth, 16 kHz)."""
    from scipy.signal import butter, sosfiltfilt

    x = np.asarray(samples, dtype=np.float32)
    if x.size < 64:
        return x
    sos = butter(4, cutoff_hz or HIGHPASS_HZ, "highpass", fs=RATE, output="sos")
    return sosfiltfilt(sos, x).astype(np.float32)


def denoise(samples: np.ndarray, *, n_fft: int = 512, hop: int = 160, block_s: float = 10.0,
            percentile: float = 20.0, over: float = 1.5, floor: float = 0.1) -> np.ndarray:
    """Suppress stationary background noise (hiss, hum, suction rumble) at 16 kHz.

    A Wiener-style spectral gain: the noise power per frequency is a low percentile of the frame
    powers in blocks of ``block_s`` (speech occupies a minority of frames and varies, the room
    noise does not), and each time-frequency bin keeps ``max(floor, 1 - over * noise / power)``
    of its amplitude.  The recogniser's model was trained on clean speech; this brings noisy
    procedure audio closer to it.
    """
    from scipy.signal import istft, stft

    x = np.asarray(samples, dtype=np.float32)
    if x.size < n_fft * 4:
        return x
    _, _, spec = stft(x, nperseg=n_fft, noverlap=n_fft - hop, boundary="even", padded=True)
    power = spec.real ** 2 + spec.imag ** 2
    n_frames = power.shape[1]
    block = max(1, int(block_s * RATE / hop))
    gain = np.empty_like(power)
    for b0 in range(0, n_frames, block):
        # Estimate over a block at least `block` long (the last one borrows from before).
        lo = max(0, min(b0, n_frames - block))
        noise = np.percentile(power[:, lo:lo + block], percentile, axis=1, keepdims=True)
        p = power[:, b0:b0 + block]
        gain[:, b0:b0 + block] = np.maximum(floor, 1.0 - over * noise / np.maximum(p, 1e-20))
    _, y = istft(spec * np.sqrt(gain), nperseg=n_fft, noverlap=n_fft - hop, boundary=True)
    return y[:x.size].astype(np.float32)


WEBRTC_LEVEL = 3  # the strongest ("very high"); levels 1 and 2 gave lower F1 at 15 dB
NOISE_SUPPRESSORS = ("webrtc", "wiener")
SUPPRESSOR_ENV = "EUSVOICELABEL_NOISE_SUPPRESSOR"


def webrtc_suppress(samples: np.ndarray, level: int = WEBRTC_LEVEL) -> np.ndarray:
    """WebRTC's noise suppressor (the one in web browsers' audio processing) on 16 kHz audio.

    It follows noise that changes from frame to frame (beeps, suction), where :func:`denoise`
    assumes noise that stays put for seconds.  Needs the ``webrtc-noise-gain``
    package; the last partial 10 ms frame is returned silent.
    """
    from webrtc_noise_gain import AudioProcessor

    x = np.asarray(samples, dtype=np.float32)
    step = RATE // 100
    n = x.size // step
    out = np.zeros(x.size, dtype=np.float32)
    if n == 0:
        return out
    pcm = (np.clip(x[:n * step], -1.0, 1.0) * 32767.0).astype(np.int16)
    processor = AudioProcessor(0, int(level))  # no automatic gain
    done = np.empty(n * step, dtype=np.int16)
    for i in range(n):
        frame = pcm[i * step:(i + 1) * step].tobytes()
        done[i * step:(i + 1) * step] = np.frombuffer(processor.Process10ms(frame).audio,
                                                      dtype=np.int16)
    out[:n * step] = done.astype(np.float32) / 32767.0
    return out


def noise_suppressor() -> str:
    """The noise suppressor detection uses: ``"webrtc"`` when the ``webrtc-noise-gain`` package
    is installed (wheels for Linux), else ``"wiener"`` (:func:`denoise`).

    The environment variable ``EUSVOICELABEL_NOISE_SUPPRESSOR`` chooses one explicitly, e.g. to
    reproduce on Linux what a macOS or Windows installation reports.
    """
    chosen = os.environ.get(SUPPRESSOR_ENV, "").strip().lower()
    if chosen:
        if chosen not in NOISE_SUPPRESSORS:
            raise EUSVoiceLabelError(
                f"{SUPPRESSOR_ENV}={chosen!r} is not a noise suppressor",
                hint=f"use one of {', '.join(NOISE_SUPPRESSORS)} or unset it")
        if chosen == "webrtc" and not _webrtc_installed():
            raise EUSVoiceLabelError(f"{SUPPRESSOR_ENV}=webrtc but webrtc-noise-gain is not "
                                     "installed", hint="pip install webrtc-noise-gain")
        return chosen
    return "webrtc" if _webrtc_installed() else "wiener"


@functools.lru_cache(maxsize=1)
def _webrtc_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("webrtc_noise_gain") is not None


def suppress_noise(samples: np.ndarray, method: Optional[str] = None) -> np.ndarray:
    """High-pass, then suppress background noise with ``method`` (default
    :func:`noise_suppressor`), on 16 kHz float audio."""
    method = method or noise_suppressor()
    x = highpass(samples)
    return webrtc_suppress(x) if method == "webrtc" else denoise(x)


# --------------------------------------------------------------------------- public API
_SPOTTERS: dict[tuple, KeywordSpotter] = {}
SPOTTER_OPTIONS: dict[str, object] = {}
CHUNK_S = 60.0          # recordings are decoded in pieces of this length ...
CHUNK_OVERLAP_S = 3.0   # ... overlapping so that no phrase is lost at a cut
PARALLEL_MIN_S = 120.0  # recordings shorter than this are decoded in one process


def get_spotter(keyphrases: Union[LabelSet, Sequence[Keyphrase]]) -> KeywordSpotter:
    """A keyword spotter for a vocabulary (built once per process and reused)."""
    if isinstance(keyphrases, LabelSet):
        keyphrases = build_keyphrases(keyphrases)
    key = tuple((kp.phrase, kp.label, kp.units) for kp in keyphrases)
    spotter = _SPOTTERS.get(key)
    if spotter is None:
        if len(_SPOTTERS) > 4:
            _SPOTTERS.clear()
        spotter = _SPOTTERS[key] = KeywordSpotter(keyphrases, **SPOTTER_OPTIONS)
    return spotter


def to_mono(audio: np.ndarray, finite: bool = True) -> np.ndarray:
    """Float32 mono samples; multi-channel input may be (n, channels) or (channels, n).
    ``finite``: NaN and infinite samples become 0 (a copy of the whole recording)."""
    x = np.asarray(audio, dtype=np.float32)
    if x.ndim == 2:
        x = x.mean(axis=1 if x.shape[0] >= x.shape[1] else 0)
    elif x.ndim != 1:
        raise EUSVoiceLabelError(f"audio must be 1-D or 2-D samples, not {x.ndim}-D")
    return np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0) if finite else x


def to_pcm16(audio: np.ndarray, sample_rate: int, clean: bool = False,
             gain: float = 1.0) -> np.ndarray:
    """Mono int16 at 16 kHz from float audio of any rate and channel layout, times ``gain``
    (see :func:`level_gain`; ``clean``: with rumble and background noise suppressed, see
    :func:`suppress_noise`)."""
    from .data.audio import resample

    if sample_rate <= 0:
        raise EUSVoiceLabelError(f"invalid sample rate {sample_rate}")
    x = resample(to_mono(audio), int(sample_rate), RATE)
    if gain != 1.0:
        x = x * np.float32(gain)
    if clean:
        x = suppress_noise(x)
    return (np.clip(x, -1.0, 1.0) * 32767.0).astype(np.int16)


LEVEL_TARGET = 0.1    # quieter recordings are raised to this robust peak (-20 dBFS)
MAX_GAIN = 1000.0     # at most +60 dB


def level_gain(samples: np.ndarray) -> float:
    """The gain that raises a quiet recording's robust peak (99.9th percentile of the
    magnitude) to :data:`LEVEL_TARGET`; 1 for recordings already louder.

    A quietly recorded microphone otherwise reaches the recogniser with a few bits of 16-bit
    resolution (a test recording peaking at -57 dBFS gave no mention at all).  One gain for the
    whole recording, so a long silent stretch is not raised to speech level.
    """
    x = np.asarray(samples)
    if x.size == 0:
        return 1.0
    step = max(1, x.size // 2_000_000)  # a 2-million-sample subset is plenty for a percentile
    peak = float(np.percentile(np.abs(np.nan_to_num(x[::step], posinf=0.0, neginf=0.0)), 99.9))
    if not np.isfinite(peak) or peak <= 0.0:
        return 1.0
    return float(min(MAX_GAIN, max(1.0, LEVEL_TARGET / peak)))


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
    return min(MAX_WORKERS, os.cpu_count() or 1) if duration_s >= PARALLEL_MIN_S else 1


class DetectionCancelled(Exception):
    """Detection was stopped by its ``should_stop`` callback (nothing is returned)."""


Progress = Union[bool, Callable[[int, int], None]]


def spot_candidates(audio: np.ndarray, sample_rate: int, labelset: LabelSet, *,
                    progress: Progress = False, workers: Optional[int] = None,
                    desc: str = "detect",
                    should_stop: Optional[Callable[[], bool]] = None) -> list[Hit]:
    """Every keyphrase hit in a recording, before thresholds, on the audio clock.

    The recording is cut into overlapping pieces of :data:`CHUNK_S` decoded by ``workers``
    processes (default: 2 on recordings of two minutes or more when the machine has 2 cores).
    ``progress`` is True for a progress bar or a callback ``(seconds done, seconds in all)``
    called after each piece; ``should_stop`` is checked after each piece and raises
    :class:`DetectionCancelled` when it returns True.
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
    pieces = [(x[s:s + size], s / sample_rate) for s in starts]
    workers = default_workers(duration) if workers is None else max(1, int(workers))
    report = _AudioProgress(progress, round(duration), desc)
    hits: list[Hit] = []
    done = False
    try:
        if workers > 1 and len(pieces) > 1:
            try:
                hits = _spot_parallel(keyphrases, pieces, sample_rate, gain, workers,
                                      report, should_stop)
                done = True
            except (OSError, RuntimeError, ImportError) as exc:  # e.g. no process spawning
                log.warning("parallel decoding unavailable (%s); decoding in one process", exc)
                hits = []
                report.restart()
        if not done:
            for piece, t0 in pieces:
                hits.extend(_spot_chunk(keyphrases, piece, sample_rate, t0, gain))
                report.add(len(piece) / sample_rate)
                if should_stop is not None and should_stop():
                    raise DetectionCancelled("detection cancelled")
    finally:
        report.close()
    return _dedupe(hits)


class _AudioProgress:
    """Seconds of audio decoded so far (at most the recording's length: pieces overlap), shown
    as a tqdm bar (``progress=True``) or passed to ``progress(done_s, total_s)``."""

    def __init__(self, progress: Progress, total_s: int, desc: str) -> None:
        self.total_s = total_s
        self.done_s = 0.0
        self.callback = progress if callable(progress) else None
        self.bar = None
        if progress and self.callback is None:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=total_s, desc=desc, unit="s audio", leave=False)

    def add(self, seconds: float) -> None:
        self.done_s = min(float(self.total_s), self.done_s + seconds)
        if self.callback is not None:
            self.callback(round(self.done_s), self.total_s)
        elif self.bar is not None:
            self.bar.update(round(self.done_s) - self.bar.n)

    def restart(self) -> None:
        self.done_s = 0.0
        if self.bar is not None:
            self.bar.reset()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _spot_parallel(keyphrases: Sequence[Keyphrase], pieces: list, sample_rate: int,
                   gain: float, workers: int, report: _AudioProgress,
                   should_stop: Optional[Callable[[], bool]] = None) -> list[Hit]:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    hits: list[Hit] = []
    # "spawn": safe in any host (no forked copies of GUI or torch threads).
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(workers, len(pieces)), mp_context=ctx) as pool:
        futures = {pool.submit(_spot_chunk, keyphrases, piece, sample_rate, t0, gain):
                   len(piece) for piece, t0 in pieces}
        try:
            for fut in as_completed(futures):
                hits.extend(fut.result())
                report.add(futures[fut] / sample_rate)
                if should_stop is not None and should_stop():
                    raise DetectionCancelled("detection cancelled")
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise
    return hits


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
                    audio_offset_s: float = 0.0) -> list["Mention"]:
    """Keep the hits whose confidence reaches their phrase's threshold, as video-clock
    mentions."""
    from .data.mentions import Mention

    keyphrases = build_keyphrases(labelset, thresholds)
    kept: list[Hit] = []
    # Phrases spotted on the same stretch of speech compete: the most confident one wins (the
    # longer one on a tie).  A longer phrase needs no other favour: its per-frame score is a
    # fair match for the shorter one inside it once the decoder's beam lets it live (see
    # KeywordSpotter), and where the speaker said only "pancreas", "head of the pancreas"
    # over "and the pancreas" scores worse.
    for h in sorted(hits, key=lambda h: (-h.confidence, h.start_s - h.end_s)):
        if h.confidence < keyphrases[h.phrase_index].threshold:
            continue
        if any(h.start_s < k.end_s - OVERLAP_S and k.start_s < h.end_s - OVERLAP_S
               for k in kept):
            continue
        kept.append(h)
    out = []
    for h in kept:
        kp = keyphrases[h.phrase_index]
        t = round(h.start_s - audio_offset_s, 3)
        if t < 0:
            continue  # spoken before the video started
        out.append(Mention(t, kp.label, round(h.end_s - audio_offset_s, 3), kp.phrase,
                           round(h.confidence, 4), "auto"))
    return sorted(out, key=lambda m: m.time_s)


def detect_mentions(audio: np.ndarray, sample_rate: int, labelset: Optional[LabelSet] = None,
                    *, audio_offset_s: float = 0.0,
                    thresholds: Optional[Mapping[str, float]] = None,
                    progress: Progress = False, workers: Optional[int] = None,
                    should_stop: Optional[Callable[[], bool]] = None) -> list["Mention"]:
    """Find spoken landmark mentions in a recording.

    Args:
        audio: samples (float, -1..1), mono or multi-channel, any rate.
        sample_rate: their rate in Hz.
        labelset: the vocabulary (default: the paper's five landmarks); a calibrated vocabulary
            carries per-phrase thresholds.
        audio_offset_s: audio time = video time + offset (``procedure.json``).
        thresholds: minimum confidence per phrase or label id (overrides the vocabulary's).
        progress: True for a progress bar, or a callback ``(seconds done, seconds in all)``.
        workers: decoding processes (default: 2 on long recordings, see
            :func:`spot_candidates`).
        should_stop: checked as the decoding goes; returning True raises
            :class:`DetectionCancelled`.

    Returns:
        Mentions on the video clock (``source="auto"``), sorted by time, with the phrase heard
        as ``text``, the end of the phrase and a confidence in 0-1.  Silent or very short
        recordings give an empty list.
    """
    labelset = labelset or LabelSet.default()
    hits = spot_candidates(audio, sample_rate, labelset, progress=progress, workers=workers,
                           should_stop=should_stop)
    return select_mentions(hits, labelset, thresholds, audio_offset_s)


def detect_procedure(path_or_procedure: Union[str, os.PathLike, "Procedure"],
                     labelset: Optional[LabelSet] = None,
                     vocab: Union[str, os.PathLike, LabelSet, None] = None,
                     progress: bool = False, workers: Optional[int] = None
                     ) -> list["Mention"]:
    """Detect the mentions of a procedure folder (or a loaded :class:`Procedure`).

    ``vocab`` is a calibrated vocabulary (``detect --calibrate`` output) or a LabelSet; it
    replaces ``labelset``.  Default vocabulary: the procedure's ``labels.json`` or the paper's.
    """
    from .data.procedure import Procedure, load_procedure
    from .data.vocabulary import load_labelset

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
    samples, rate = proc._native_audio()
    return detect_mentions(samples, rate, labelset, audio_offset_s=proc.audio_offset_s,
                           progress=progress, workers=workers)
