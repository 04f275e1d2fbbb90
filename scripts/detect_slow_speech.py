"""Detection on speech made apart from `synth`: flite voices, names spoken up to 1.3x slower.

A benchmark, not a test (about a minute on 2 cores; needs flite, which scripts/install.sh
installs).  Sixteen recordings, four flite voices, seven names each between carrier words
("now we see the ... right there") at 15 dB white noise; every vocabulary phrase may come up,
each spoken at 0.9-1.3 times its usual length.  Prints precision and recall as
``detect --evaluate`` counts them.

    python3 scripts/detect_slow_speech.py [--candidate-threshold 1e-60] [--stretch 0.7,0.8]

``--candidate-threshold`` replaces the spotter's (default: its search beam) to compare.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
from pathlib import Path

import numpy as np

from EUSVoiceLabelLib.data.mentions import Mention
from EUSVoiceLabelLib.data.vocabulary import LabelSet
from EUSVoiceLabelLib.speech import detect, spotter
from EUSVoiceLabelLib.speech.denoise import RATE  # the recogniser's rate
from EUSVoiceLabelLib.speech.evaluate import PatientCandidates, evaluate_candidates

# flite speech as the detection tests make it (Testing/Python/mediafactory.py).
TESTS = Path(__file__).resolve().parents[1] / "EUSVoiceLabel" / "Testing" / "Python"
sys.path.insert(0, str(TESTS))
from mediafactory import say  # noqa: E402  (after the path above)

VOICES = ("slt", "awb", "rms", "kal")
BEFORE = ("okay", "now we see the", "and this is the", "here is the", "I can see the",
          "looking at the", "there", "we are on the")
AFTER = ("", "right there", "nice and clear", "okay", "here", "just there")
STRETCH = (0.9, 1.0, 1.15, 1.3)


def recording(voice: str, seed: int, rng: random.Random, labels: LabelSet,
              stretches: tuple[float, ...] = STRETCH, names: int = 7
              ) -> tuple[np.ndarray, list[Mention]]:
    """One noisy recording of ``names`` names in carrier words, and the names' onsets."""
    phrases = list(labels.phrases())
    x = np.zeros(int(60 * RATE), np.float32)
    refs: list[Mention] = []
    pos = int(0.5 * RATE)
    for _ in range(names):
        phrase, label = rng.choice(phrases)
        stretch = rng.choice(stretches)
        for kind, text in (("before", rng.choice(BEFORE)), ("name", phrase),
                           ("after", rng.choice(AFTER))):
            if not text:
                continue
            clip = say(text, voice, stretch if kind == "name" else 1.0, RATE)
            if kind == "name":
                refs.append(Mention(pos / RATE, label, None, phrase, None, "file"))
            x[pos:pos + len(clip)] += 0.5 * clip
            pos += len(clip) + int(0.08 * RATE)
        pos += int(rng.uniform(1.2, 2.5) * RATE)
    x = x[:pos]
    power = np.mean(x[np.abs(x) > 0.01] ** 2)
    noise = np.random.default_rng(seed).standard_normal(x.size).astype(np.float32)
    return x + noise * np.sqrt(power / 10 ** 1.5), refs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidate-threshold", type=float, default=None)
    parser.add_argument("--stretch", default=",".join(map(str, STRETCH)),
                        help="comma-separated lengths of the names, 1 = flite's usual")
    args = parser.parse_args()
    if shutil.which("flite") is None:
        print("flite is not installed (scripts/install.sh installs it)", file=sys.stderr)
        return 2
    if args.candidate_threshold is not None:
        built: dict[tuple, spotter.KeywordSpotter] = {}

        def get_spotter(keyphrases):
            key = tuple(kp.phrase for kp in keyphrases)
            if key not in built:
                built[key] = spotter.KeywordSpotter(keyphrases, args.candidate_threshold)
            return built[key]

        detect.get_spotter = get_spotter  # this process only: decode with workers=1 below
    stretches = tuple(float(v) for v in args.stretch.split(","))
    labels = LabelSet.default()
    rng = random.Random(0)
    candidates = []
    for voice in VOICES:
        for seed in range(4):
            audio, refs = recording(voice, seed, rng, labels, stretches)
            hits = detect.spot_candidates(audio, RATE, labels, workers=1)
            candidates.append(PatientCandidates(f"{voice}{seed}", hits, refs, 0.0,
                                                len(audio) / RATE, 0.0))
    overall = evaluate_candidates(candidates, labels)["overall"]
    print(f"{sum(len(c.reference) for c in candidates)} names: precision "
          f"{overall['precision']:.3f}, recall {overall['recall']:.3f}, F1 {overall['f1']:.3f} "
          f"(tp {overall['tp']}, fp {overall['fp']}, fn {overall['fn']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
