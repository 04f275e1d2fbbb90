"""Label vocabularies: which landmarks exist, how they are spoken, shown and weighted.

A vocabulary is a list of labels, each with an id (used in files), a display name, the spoken
synonyms that name it, a colour (0-1 RGB) and an optional class weight.  The paper's five
landmarks are the default; a cohort may carry its own ``labels.json``::

    {"labels": [{"id": "pancreas", "name": "Pancreas",
                 "synonyms": ["pancreas", "head of the pancreas"],
                 "color": [0.9, 0.7, 0.2], "weight": 2.6}, ...]}

(a bare list of label objects is accepted too).  Matching spoken or transcribed text against the
synonyms is case-insensitive, ignores punctuation, treats "P.D." like "PD" and prefers the
longest synonym ("common bile duct" over "bile duct").
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Sequence

from ..core.errors import VocabularyError
from ..core.fileio import atomic_write_text

_ID_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_\-]*$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
#: Landmark labelmaps store label k as k + 1 (0 = background) in at most 16 bits.
MAX_LABELS = 65535


@dataclass(frozen=True)
class Label:
    """One landmark of a vocabulary."""

    id: str
    name: str
    synonyms: tuple[str, ...] = ()
    color: tuple[float, float, float] = (1.0, 1.0, 0.0)
    weight: Optional[float] = None
    # Detection confidence thresholds (0-1) per spoken phrase, from `detect --calibrate`.
    thresholds: tuple[tuple[str, float], ...] = ()

    def to_json(self) -> dict:
        out = {"id": self.id, "name": self.name, "synonyms": list(self.synonyms),
               "color": [round(c, 4) for c in self.color]}
        if self.weight is not None:
            out["weight"] = self.weight
        if self.thresholds:
            out["thresholds"] = {k: v for k, v in self.thresholds}
        return out


@dataclass(frozen=True)
class PhraseMatch:
    """A synonym found in a text: the label, the synonym and its span in word indices."""

    label: str
    synonym: str
    first_word: int
    last_word: int  # inclusive


_DEFAULT_LABELS: tuple[Label, ...] = (
    Label("pancreas", "Pancreas",
          ("pancreas", "head of the pancreas", "pancreatic head", "body of the pancreas",
           "pancreatic body", "tail of the pancreas", "pancreatic tail", "pancreatic parenchyma",
           "uncinate process"),
          (0.95, 0.75, 0.25), 2.6),
    Label("portal_vein", "Portal vein",
          ("portal vein", "PV", "main portal vein"),
          (0.25, 0.45, 0.95), 1.7),
    Label("pancreatic_duct", "Pancreatic duct",
          ("pancreatic duct", "PD", "main pancreatic duct", "MPD", "duct of Wirsung",
           "Wirsung", "Wirsung duct", "the duct"),
          (0.2, 0.85, 0.3), 1.1),
    Label("portal_venous_confluence", "Portal venous confluence",
          ("portal venous confluence", "portal confluence", "confluence", "PVC",
           "splenoportal confluence", "spleno portal confluence", "portal splenic confluence"),
          (0.85, 0.25, 0.85), 1.7),
    Label("bile_duct", "Bile duct",
          ("bile duct", "common bile duct", "CBD", "choledochus", "common duct"),
          (0.95, 0.3, 0.25), 1.0),
)


def normalize_words(text: str) -> list[str]:
    """Split text into lower-case words the way synonyms are matched.

    Dotted acronyms collapse ("P.D." -> "pd"), hyphens and punctuation separate words.
    """
    text = text.lower()
    # "p.d." / "c.b.d" -> "pd" / "cbd": dots between single letters are acronym dots.
    text = re.sub(r"\b[a-z](?:\.[a-z])+\.?(?![a-z])", lambda m: m.group(0).replace(".", ""),
                  text)
    return re.findall(r"[a-z0-9']+", text)


@dataclass(frozen=True)
class LabelSet:
    """An ordered label vocabulary.  The order fixes class indices in models and matrices."""

    labels: tuple[Label, ...]
    _phrases: tuple[tuple[tuple[str, ...], str, str], ...] = field(default=(), compare=False,
                                                                   repr=False)

    def __post_init__(self) -> None:
        if not self.labels:
            raise VocabularyError("the vocabulary has no labels")
        if len(self.labels) > MAX_LABELS:
            raise VocabularyError(f"the vocabulary has {len(self.labels)} labels, more than "
                                  f"the {MAX_LABELS} a landmark labelmap can hold")
        seen: dict[str, str] = {}
        phrases = []
        for label in self.labels:
            if not _ID_RE.match(label.id):
                raise VocabularyError(f"label id {label.id!r} is not a plain identifier",
                                      hint="use letters, digits, '_' or '-'")
            for text in (label.name, *label.synonyms):
                if _CONTROL_RE.search(text):
                    raise VocabularyError(
                        f"label {label.id!r}: {text!r} holds a line break or control "
                        "character", hint="write names and synonyms on one line")
            if label.id in seen:
                raise VocabularyError(f"label id {label.id!r} appears twice")
            seen[label.id] = label.id
            for syn in (label.id.replace("_", " "), label.name, *label.synonyms):
                words = tuple(normalize_words(syn))
                if words:
                    phrases.append((words, label.id, syn))
        # Longest phrases first so "common bile duct" wins over "bile duct".
        unique: dict[tuple[str, ...], tuple[str, str]] = {}
        for words, lid, syn in sorted(phrases, key=lambda p: -len(p[0])):
            if words in unique and unique[words][0] != lid:
                raise VocabularyError(
                    f"synonym {syn!r} names both {unique[words][0]!r} and {lid!r}",
                    hint="each spoken phrase must name one label")
            unique.setdefault(words, (lid, syn))
        object.__setattr__(self, "_phrases",
                           tuple((w, lid, syn) for w, (lid, syn) in unique.items()))

    # ----------------------------------------------------------------- construction
    @classmethod
    def default(cls) -> "LabelSet":
        """The paper's five landmarks with its class weights."""
        return cls(_DEFAULT_LABELS)

    @classmethod
    def from_json(cls, data: object, source: str = "labels") -> "LabelSet":
        """Build from parsed JSON (a dict with "labels" or a list of label objects)."""
        items = data.get("labels") if isinstance(data, Mapping) else data
        if not isinstance(items, list) or not items:
            raise VocabularyError("expected a non-empty list of labels (or {\"labels\": [...]})",
                                  source)
        labels = []
        for i, item in enumerate(items):
            if not isinstance(item, Mapping) or not isinstance(item.get("id"), str):
                raise VocabularyError(f"label #{i + 1} has no string 'id'", source)
            lid = item["id"]
            name = item.get("name", lid.replace("_", " ").capitalize())
            syns = item.get("synonyms", [])
            if not isinstance(name, str) or not isinstance(syns, list) or \
                    not all(isinstance(s, str) for s in syns):
                raise VocabularyError(f"label {lid!r}: 'name' must be text and 'synonyms' a "
                                      "list of text", source)
            color = item.get("color", _auto_color(i))
            try:
                color = tuple(float(c) for c in color)
            except (TypeError, ValueError):
                raise VocabularyError(f"label {lid!r}: 'color' must be 3 numbers", source)
            if len(color) != 3 or not all(0.0 <= c <= 1.0 for c in color):
                if len(color) == 3 and all(0 <= c <= 255 for c in color):
                    color = tuple(c / 255.0 for c in color)  # accept 0-255 colours too
                else:
                    raise VocabularyError(f"label {lid!r}: 'color' must be 3 numbers in 0-1",
                                          source)
            weight = item.get("weight")
            if weight is not None:
                if isinstance(weight, bool) or not isinstance(weight, (int, float)) or \
                        not (0 < float(weight) < 1e6):
                    raise VocabularyError(f"label {lid!r}: 'weight' must be a positive number",
                                          source)
                weight = float(weight)
            thresholds = item.get("thresholds", {})
            if not isinstance(thresholds, Mapping) or not all(
                    isinstance(k, str) and isinstance(v, (int, float))
                    and not isinstance(v, bool) and 0.0 <= float(v) <= 1.0
                    for k, v in thresholds.items()):
                raise VocabularyError(f"label {lid!r}: 'thresholds' must map phrases to numbers "
                                      "in 0-1", source)
            labels.append(Label(lid, name, tuple(syns), color, weight,  # type: ignore[arg-type]
                                tuple((k, float(v)) for k, v in thresholds.items())))
        try:
            return cls(tuple(labels))
        except VocabularyError as exc:
            raise VocabularyError(exc.message, source, exc.hint) from None

    @classmethod
    def load(cls, path: os.PathLike | str) -> "LabelSet":
        """Read a ``labels.json`` vocabulary file."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
            data = json.loads(text)
        except FileNotFoundError:
            raise VocabularyError("file not found", path) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise VocabularyError(f"cannot read ({exc.__class__.__name__})", path) from None
        except json.JSONDecodeError as exc:
            raise VocabularyError(f"not valid JSON (line {exc.lineno}: {exc.msg})", path,
                                  "fix the syntax or delete the file to use the default "
                                  "labels") from None
        except RecursionError:  # a bomb of nested brackets (found by fuzzing, test_fuzz.py)
            raise VocabularyError("not a valid vocabulary (JSON nested too deeply)", path,
                                  "fix the file or delete it to use the default labels") from None
        return cls.from_json(data, str(path))

    def to_json(self) -> dict:
        return {"labels": [label.to_json() for label in self.labels]}

    def save(self, path: os.PathLike | str) -> None:
        atomic_write_text(path, json.dumps(self.to_json(), indent=2) + "\n")

    # ----------------------------------------------------------------- queries
    @property
    def ids(self) -> list[str]:
        return [label.id for label in self.labels]

    def __len__(self) -> int:
        return len(self.labels)

    def __contains__(self, label_id: object) -> bool:
        return label_id in self.ids

    def index(self, label_id: str) -> int:
        """Class index of a label id (raises VocabularyError for unknown ids)."""
        try:
            return self.ids.index(label_id)
        except ValueError:
            raise VocabularyError(f"unknown label {label_id!r}",
                                  hint="known labels: " + ", ".join(self.ids)) from None

    def get(self, label_id: str) -> Label:
        return self.labels[self.index(label_id)]

    def resolve(self, text: str) -> Optional[str]:
        """Label id for a label given by id, display name or synonym; None if none matches."""
        if text in self.ids:
            return text
        words = tuple(normalize_words(text))
        for phrase, lid, _ in self._phrases:
            if phrase == words:
                return lid
        return None

    def phrases(self) -> list[tuple[str, str]]:
        """Every (spoken phrase, label id) pair, longest first."""
        return [(syn, lid) for _, lid, syn in self._phrases]

    def find(self, words: Sequence[str]) -> list[PhraseMatch]:
        """Non-overlapping synonym matches in a list of normalised words.

        Overlaps are resolved in favour of the longer phrase ("the duct of Wirsung" is one
        mention via "duct of Wirsung", not "the duct" + "Wirsung"), then the earlier one.
        """
        words = tuple(words)
        candidates = []
        for i in range(len(words)):
            for phrase, lid, syn in self._phrases:
                k = len(phrase)
                if words[i:i + k] == phrase:
                    candidates.append(PhraseMatch(lid, syn, i, i + k - 1))
        taken: set[int] = set()
        out: list[PhraseMatch] = []
        for m in sorted(candidates, key=lambda m: (m.first_word - m.last_word, m.first_word)):
            span = set(range(m.first_word, m.last_word + 1))
            if not span & taken:
                taken |= span
                out.append(m)
        return sorted(out, key=lambda m: m.first_word)

    def find_in_text(self, text: str) -> list[PhraseMatch]:
        """Synonym matches in free text (see :func:`normalize_words`)."""
        return self.find(normalize_words(text))

    def class_weights(self, counts: Optional[Mapping[str, int]] = None) -> list[float]:
        """Class weights for the loss.

        With ``counts`` (samples per label in the training data) the weights are
        max_count / count, as in the paper; labels without samples get weight 0.  Without counts
        the vocabulary's own weights are used (1.0 where none is given).
        """
        if counts is None:
            return [label.weight if label.weight is not None else 1.0 for label in self.labels]
        values = [int(counts.get(lid, 0)) for lid in self.ids]
        top = max(values) if values else 0
        if top <= 0:
            return [1.0] * len(values)
        return [top / v if v > 0 else 0.0 for v in values]


def _auto_color(i: int) -> tuple[float, float, float]:
    palette = [(0.95, 0.75, 0.25), (0.25, 0.45, 0.95), (0.2, 0.85, 0.3), (0.85, 0.25, 0.85),
               (0.95, 0.3, 0.25), (0.3, 0.85, 0.85), (0.6, 0.4, 0.2), (0.5, 0.5, 0.5)]
    return palette[i % len(palette)]


def labels_file(folder: Optional[os.PathLike | str]) -> Optional[Path]:
    """The ``labels.json`` a folder uses: its own, else its parent's (None if neither)."""
    if folder is not None:
        for cand in (Path(folder) / "labels.json", Path(folder).parent / "labels.json"):
            if cand.is_file():
                return cand
    return None


def load_labelset(path: Optional[os.PathLike | str] = None,
                  folder: Optional[os.PathLike | str] = None) -> LabelSet:
    """The vocabulary from ``path``, else ``folder/labels.json`` (or its parent's), else the
    default five labels."""
    if path is not None:
        return LabelSet.load(path)
    found = labels_file(folder)
    return LabelSet.load(found) if found is not None else LabelSet.default()
