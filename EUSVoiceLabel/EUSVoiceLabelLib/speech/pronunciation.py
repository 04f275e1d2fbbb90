"""How the vocabulary's words are spoken: CMU phone strings for each phrase word.

Dictionary words come from the CMU dictionary shipped in the pocketsphinx wheel; acronyms are
spelled letter by letter ("PD" -> P IY D IY); anatomical words missing from the dictionary come
from a small medical lexicon, then from espeak-ng's letter-to-sound rules when it is installed.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from pathlib import Path
from typing import Optional

import pocketsphinx

from ..core.errors import EUSVoiceLabelError


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

# Other readings of a spelled letter, each searched as a phrase of its own beside the letter's
# name.  English /d/ at the start of a syllable is often voiceless unaspirated, voicing and
# burst being what noise and its suppression take first, and the recogniser then hears "dee"
# as "tee" (a free phone decoding of flite's four voices saying "nice view of P D" gave
# P IY T IY or JH IY for it).  With the T reading, on the four synthetic cohorts at 15 dB the
# pancreatic duct's mentions found rose from 118 to 129 of 152 and the bile duct's from 141 to
# 148 of 164, with fewer false alarms (48 -> 43 in all; docs/detection.md).  The same for B,
# V and Z (read P, F, S) only added false alarms, and JH for D found nothing more.
LETTER_READINGS: dict[str, tuple[str, ...]] = {"d": ("T IY",)}


@functools.lru_cache(maxsize=1)
def model_paths() -> tuple[str, str]:
    """(acoustic model folder, dictionary file) shipped in the pocketsphinx wheel."""
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
    with open(model_paths()[1], encoding="utf-8") as f:
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
        # Rare words: the curated readings; espeak-ng's letter-to-sound rules for a word the
        # lexicon lacks (word_readings adds them beside the lexicon's as well).
        prons = list(MEDICAL_LEXICON.get(token, ()))[:MAX_VARIANTS]
        if not prons:
            guess = _espeak_pronunciation(token)
            prons = [guess] if guess else []
    return [prons] if prons else []


def word_readings(token: str, raw: str = "") -> list[list[list[str]]]:
    """The readings of one phrase word that the keyword search tries, each a list of units as
    :func:`word_pronunciations` gives them.

    A word has one reading (the search uses its first pronunciation; searching every
    combination of the words' variants gave more false alarms), and a word of the medical
    lexicon that the CMU dictionary lacks one more, espeak-ng's letter-to-sound reading, when
    espeak-ng is installed and that reading is not one of the lexicon's.  A spelled acronym
    has its letters' names and, for each letter with another reading
    (:data:`LETTER_READINGS`), one more with that letter read so ("PD": P IY D IY and
    P IY T IY).  Empty when the word has no pronunciation.
    """
    units = word_pronunciations(token, raw)
    if not units:
        return []
    readings = [units]
    if token in MEDICAL_LEXICON and token not in _cmudict():
        # A rare word is also searched as its spelling suggests: speakers who do not know it,
        # and speech synthesisers, read "choledochus" with the "ch" of "church", where the
        # lexicon has the clinical K ("splenoportal" and "parenchyma" get one too).  On the
        # four synthetic cohorts at 15 dB this found 3 more mentions (2 "choledochus", 1
        # "splenoportal confluence") and no false alarm.
        spelled = _espeak_pronunciation(token)
        if spelled and spelled not in units[0]:
            readings.append([[spelled]])
    if token.isalpha() and _is_acronym(token, raw or token):
        for i, letter in enumerate(token):
            for other in LETTER_READINGS.get(letter, ()):
                readings.append([[other] if j == i else unit for j, unit in enumerate(units)])
    return readings


def raw_words(synonym: str) -> list[str]:
    """The vocabulary's spelling of each normalised word (to spot upper-case acronyms)."""
    # Same splitting as normalize_words, keeping case: dotted acronyms collapse first.
    text = re.sub(r"\b((?:[A-Za-z]\.){2,}[A-Za-z]?)", lambda m: m.group(1).replace(".", ""),
                  synonym)
    return re.findall(r"[A-Za-z0-9']+", text)
