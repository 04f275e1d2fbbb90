"""Automatic detection of spoken landmark mentions (the paper's future work).

An offline recogniser that ships its own model, pocketsphinx 5 (en-US acoustic model and CMU
dictionary inside the wheel), finds every synonym of the label vocabulary in a procedure's audio:

1. The audio is resampled to 16 kHz and cut into voiced regions by pocketsphinx's voice-activity
   endpointer, so silence costs nothing.
2. Each region is decoded with a small grammar, ``( phone | keyphrase )*``: a free loop over the 39
   English phones competes with one dictionary entry per vocabulary phrase.  This is keyword
   spotting in which the keyphrases also compete with each other, so "common bile duct" wins over
   "bile duct" and "CBD" over "PD" on the same audio without any overlap rules.  Acronyms are
   spelled ("PD" -> "P D"), out-of-dictionary words come from a small medical lexicon or from
   espeak-ng's letter-to-sound rules when it is installed.
3. Each hit is rescored: the acoustic log-likelihood of the phrase's forced alignment against that
   of the best free phone sequence over the same frames (a per-frame likelihood ratio), combined
   with the decoder's lattice posterior into a confidence in 0-1.  A hit is kept when its
   confidence reaches the phrase's threshold (:data:`DEFAULT_THRESHOLD` unless a calibrated
   vocabulary says otherwise, see :mod:`.detect_eval`).

Onsets are the Viterbi start of the phrase (10 ms frames) on the video clock.
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
from typing import Iterable, Mapping, Optional, Sequence, Union

import numpy as np

from .errors import EUSVoiceLabelError, VocabularyError
from .vocabulary import LabelSet, normalize_words

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


def word_pronunciations(token: str, raw: str = "") -> list[str]:
    """Pronunciations (CMU phone strings) of one normalised phrase word.

    ``raw`` is the word as written in the vocabulary, used to recognise acronyms.  Acronyms are
    spelled (and their dictionary reading kept when there is one); other words come from the CMU
    dictionary, the medical lexicon or espeak-ng, in that order.  Empty when none is found.
    """
    prons: list[str] = []
    if _is_acronym(token, raw or token) and token.isalpha():
        prons.append(" ".join(LETTERS[c] for c in token))
    for p in _cmudict().get(token, ()) + MEDICAL_LEXICON.get(token, ()):
        if p not in prons:
            prons.append(p)
    if not prons and token.isalpha():
        guess = _espeak_pronunciation(token)
        if guess:
            prons.append(guess)
    return prons


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
    pronunciations: tuple[str, ...]  # phone strings of the whole phrase (variants)
    threshold: float


MAX_VARIANTS = 4  # pronunciation variants per phrase (the product over words grows fast)


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
        variants = [""]
        ok = True
        for token, raw in zip(words, raws):
            prons = word_pronunciations(token, raw)
            if not prons:
                log.warning("no pronunciation for %r (in %r): phrase not detected", token, syn)
                ok = False
                break
            variants = [f"{v} {p}".strip() for v in variants for p in prons][:MAX_VARIANTS]
        if not ok:
            continue
        key = tuple(words)
        thr = given.get(key, by_label.get(lid, stored.get(key, DEFAULT_THRESHOLD)))
        out.append(Keyphrase(syn, lid, tuple(dict.fromkeys(variants)), thr))
    return out


def _labelset_thresholds(labelset: LabelSet) -> dict[tuple[str, ...], float]:
    """Per-phrase thresholds a calibrated vocabulary carries (``Label.thresholds``)."""
    out: dict[tuple[str, ...], float] = {}
    for label in labelset.labels:
        for phrase, value in (getattr(label, "thresholds", None) or {}).items():
            out[tuple(normalize_words(phrase))] = float(value)
    return out


# --------------------------------------------------------------------------- recogniser
@dataclass(frozen=True)
class Hit:
    """A keyphrase found by the decoder, on the audio clock (before thresholding)."""

    start_s: float
    end_s: float
    phrase_index: int
    posterior: float
    confidence: float


class KeywordSpotter:
    """A pocketsphinx decoder whose grammar is ``( phone | keyphrase )*`` (see module doc).

    Args:
        keyphrases: from :func:`build_keyphrases`.
        keyphrase_weight: prior weight of entering a keyphrase instead of a phone; higher finds
            more (and more false) candidates.  Confidence thresholds do the final selection.
    """

    def __init__(self, keyphrases: Sequence[Keyphrase], keyphrase_weight: float = 1e-3,
                 beam: float = 1e-48, **config: object):
        from pocketsphinx import Decoder

        if not keyphrases:
            raise VocabularyError("no vocabulary phrase could be given a pronunciation",
                                  hint="use words of the English dictionary or spell acronyms "
                                       "in capitals")
        self.keyphrases = list(keyphrases)
        hmm, _ = _model_paths()
        self._tmp = tempfile.TemporaryDirectory(prefix="eusvoicelabel_kws_")
        dict_path = os.path.join(self._tmp.name, "keyphrases.dict")
        lines = [f"ph_{p.lower()} {p}" for p in PHONES]
        for i, kp in enumerate(self.keyphrases):
            for j, pron in enumerate(kp.pronunciations):
                lines.append(f"kw{i}{'' if j == 0 else f'({j + 1})'} {pron}")
        with open(dict_path, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        grammar = ("#JSGF V1.0;\ngrammar spot;\n"
                   f"public <s> = ( /1/ <phone> | /{keyphrase_weight:g}/ <key> )* ;\n"
                   "<phone> = " + " | ".join(f"ph_{p.lower()}" for p in PHONES) + " ;\n"
                   "<key> = " + " | ".join(f"kw{i}" for i in range(len(self.keyphrases)))
                   + " ;\n")
        options = dict(hmm=hmm, dict=dict_path, samprate=RATE, loglevel="FATAL", lm=None,
                       beam=beam, wbeam=beam, pbeam=beam)
        options.update(config)
        self.decoder = Decoder(**options)
        self.decoder.add_jsgf_string("spot", grammar)
        self.decoder.activate_search("spot")

    def spot(self, pcm16: np.ndarray, t0_s: float = 0.0) -> list[Hit]:
        """Decode one voiced region (int16 samples at 16 kHz) starting at ``t0_s``."""
        d = self.decoder
        d.start_utt()
        d.process_raw(np.ascontiguousarray(pcm16, dtype=np.int16).tobytes(), full_utt=True)
        d.end_utt()
        hits: list[Hit] = []
        if d.hyp() is None:
            return hits
        for seg in d.seg():
            word = seg.word
            if not word.startswith("kw"):
                continue
            idx = int(re.sub(r"\(\d+\)$", "", word)[2:])
            start = t0_s + seg.start_frame * FRAME_S
            end = t0_s + (seg.end_frame + 1) * FRAME_S
            post = float(min(max(seg.prob, 0.0), 1.0))
            hits.append(Hit(start, end, idx, post, post))
        return hits
