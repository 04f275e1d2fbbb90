"""The mention verifier: its rule, its place in the checkpoint, and that it learns from a
cohort's own recordings (speech/verify.py, docs/detection.md "Verifying each mention")."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import torch

import mediafactory as mf
from EUSVoiceLabelLib.core.errors import CheckpointError
from EUSVoiceLabelLib.data.procedure import load_procedure
from EUSVoiceLabelLib.data.vocabulary import LabelSet
from EUSVoiceLabelLib.speech.spotter import Hit, build_keyphrases
from EUSVoiceLabelLib.speech.verify import (CANDIDATE_THRESHOLD, VERIFIER_WEIGHT,
                                            MentionVerifier, MentionVerifierNet,
                                            combined_confidence, train_verifier,
                                            training_windows, verify_mentions)

LABELS = LabelSet.default()


def test_combined_confidence_adds_half_the_verifiers_log_odds():
    logit = lambda p: math.log(p / (1 - p))  # noqa: E731
    for c, p in [(0.3, 0.9), (0.6, 0.1), (0.95, 0.5), (0.5, 0.99)]:
        want = 1 / (1 + math.exp(-(logit(c) + VERIFIER_WEIGHT * logit(p))))
        assert combined_confidence(c, p) == pytest.approx(want)
    assert VERIFIER_WEIGHT == 0.5
    # An unsure verifier leaves the spotter's word; a sure one turns a weak or a strong one.
    assert combined_confidence(0.7, 0.5) == pytest.approx(0.7)
    assert combined_confidence(0.3, 0.9) > 0.5 > combined_confidence(0.9, 0.01)
    assert 0 < combined_confidence(0.0, 0.0) < 1e-6 and combined_confidence(1.0, 1.0) > 1 - 1e-6


class _FixedVerifier(MentionVerifier):
    """The verifier's probability given per onset: tests the selection, not the network."""

    def __init__(self, by_onset: dict[float, float]) -> None:
        super().__init__([MentionVerifierNet()])
        self.by_onset = by_onset

    def probability(self, proc, mentions):
        return np.array([self.by_onset[round(m.time_s, 2)] for m in mentions])


def _hit(phrase: str, start: float, conf: float) -> Hit:
    index = next(i for i, kp in enumerate(build_keyphrases(LABELS)) if kp.phrase == phrase)
    return Hit(start, start + 0.5, index, 0.0, conf)


def test_verify_mentions_checks_candidates_below_the_spotters_threshold(tmp_path):
    proc = load_procedure(mf.make_procedure(tmp_path / "p", seconds=8.0))
    hits = [_hit("pancreas", 0.5, 0.30),     # weak, the verifier is sure: kept
            _hit("portal vein", 2.0, 0.90),  # strong, the verifier is sure it is not: dropped
            _hit("bile duct", 4.0, 0.70),    # the verifier unsure: the spotter's word stands
            _hit("confluence", 6.0, 0.15)]   # below the candidate threshold: never checked
    assert 0.15 < CANDIDATE_THRESHOLD < 0.30
    verifier = _FixedVerifier({0.5: 0.9, 2.0: 0.01, 4.0: 0.5})
    found = verify_mentions(proc, hits, LABELS, verifier)
    assert [(m.time_s, m.label) for m in found] == [(0.5, "pancreas"), (4.0, "bile_duct")]
    assert found[0].confidence == pytest.approx(combined_confidence(0.30, 0.9), abs=1e-4)
    assert found[1].confidence == pytest.approx(0.70, abs=1e-4)
    assert all(m.source == "auto" and m.end_s > m.time_s for m in found)


def test_the_verifier_rides_in_the_checkpoint_under_its_digest(tmp_path):
    from EUSVoiceLabelLib.core.paper import SPECTROGRAM_SHAPE, WINDOW_FRAMES
    from EUSVoiceLabelLib.labelling.run import LabelModel
    from EUSVoiceLabelLib.nn.network import build_model
    from EUSVoiceLabelLib.train.checkpoints import (VERIFIER_WEIGHTS_KEY, load_checkpoint,
                                                    save_checkpoint)
    from EUSVoiceLabelLib.train.config import TrainConfig
    from EUSVoiceLabelLib.train.loop import TrainResult

    cfg = TrainConfig(variant="voice_only", epochs=1, image_size=(40, 48),
                      frames=WINDOW_FRAMES, width=0.125)
    model = build_model("voice_only", len(LABELS), WINDOW_FRAMES, width=0.125).eval()
    pre = cfg.window_settings().to_json()
    pre["voice_shape"] = list(SPECTROGRAM_SHAPE)
    torch.manual_seed(1)
    verifier = MentionVerifier([MentionVerifierNet().eval(), MentionVerifierNet().eval()])
    with_v, without = tmp_path / "with.pt", tmp_path / "without.pt"
    save_checkpoint(with_v, TrainResult(model, cfg, [1.0] * 5), LABELS, pre,
                    verifier=verifier.to_state())
    save_checkpoint(without, TrainResult(model, cfg, [1.0] * 5), LABELS, pre)

    assert load_checkpoint(without).verifier_state is None
    assert LabelModel.load(without, device="cpu").verifier is None
    back = LabelModel.load(with_v, device="cpu").verifier
    assert len(back.members) == 2 and back.weight == VERIFIER_WEIGHT
    x = torch.randn(3, 48, 105)
    for a, b in zip(verifier.members, back.members):
        torch.testing.assert_close(a(x), b(x))

    # One changed verifier weight is a damaged checkpoint, not a silently other verifier.
    data = torch.load(with_v, weights_only=True)
    name = next(iter(data[VERIFIER_WEIGHTS_KEY]))
    data[VERIFIER_WEIGHTS_KEY][name] = data[VERIFIER_WEIGHTS_KEY][name] + 1.0
    torch.save(data, tmp_path / "damaged.pt")
    with pytest.raises(CheckpointError, match="damaged"):
        load_checkpoint(tmp_path / "damaged.pt")


@pytest.mark.skipif(shutil.which("flite") is None, reason="flite is not installed")
def test_the_verifier_learns_mentions_from_other_speech_of_a_cohort(tmp_path):
    from EUSVoiceLabelLib.speech.evaluate import collect_candidates
    from EUSVoiceLabelLib.synth import synth_cohort

    cohort = synth_cohort(tmp_path / "c", patients=3, seed=5, counts=4, frame_size=(128, 96),
                          progress=False, workers=1)
    verifier = train_verifier(cohort, LABELS, progress=False, members=1, epochs=25)
    assert verifier is not None and len(verifier.members) == 1
    # On the cohort's own windows the mentions score above the other speech: what it learnt
    # is the difference, from real recordings through the spotter's own candidates.
    cands, _ = collect_candidates(cohort, LABELS, progress=False, workers=1)
    pos, neg = [], []
    for pc in cands:
        proc = load_procedure(cohort / pc.name)
        _, targets = training_windows(proc, pc.hits, LABELS, pc.reference)
        assert targets.sum() >= len(pc.reference) and (targets == 0).any()
        p = verifier.probability(proc, pc.reference)
        pos.extend(p)
        far = [m for m in _other_speech(proc, pc)][:10]
        neg.extend(verifier.probability(proc, far))
    assert neg, "the cohort has speech that is no mention"
    assert np.mean(pos) > np.mean(neg) + 0.2, (np.mean(pos), np.mean(neg))


def _other_speech(proc, pc):
    """Mentions at spotter onsets at least 1.5 s from every true mention."""
    from EUSVoiceLabelLib.data.mentions import Mention

    onsets = sorted({round(h.start_s - proc.audio_offset_s, 2) for h in pc.hits})
    for t in onsets:
        if 0 <= t < proc.duration_s - 1 and all(abs(t - r.time_s) > 1.5 for r in pc.reference):
            yield Mention(t, "pancreas")
