"""Label fusion (EUSVoiceLabelLib.labelling.fusion): the rule q · p_net / prior, its review
flag, the training prior read from a checkpoint, and the end-to-end scoring that measures it."""

from types import SimpleNamespace

import numpy as np
import pytest

from EUSVoiceLabelLib.data.mentions import Mention
from EUSVoiceLabelLib.data.vocabulary import LabelSet
from EUSVoiceLabelLib.labelling.endtoend import main as end_to_end_main
from EUSVoiceLabelLib.labelling.endtoend import pair_windows, score_result, summarise
from EUSVoiceLabelLib.labelling.fusion import (DISAGREES, LOW_CONFIDENCE, UNCERTAIN_DETECTION,
                                               checkpoint_temperature,
                                               fuse_posteriors, fuse_window, speech_evidence,
                                               training_prior)
from EUSVoiceLabelLib.train.metrics import (expected_calibration_error, fit_temperature,
                                            scale_probabilities)
from EUSVoiceLabelLib.slicer.review import RESULT_COLUMNS, ReviewTable

IDS = LabelSet.default().ids  # pancreas, portal_vein, pancreatic_duct, pvc, bile_duct


def _net(top: str, p: float) -> np.ndarray:
    """A network posterior with ``p`` on ``top`` and the rest spread evenly."""
    out = np.full(len(IDS), (1 - p) / (len(IDS) - 1))
    out[IDS.index(top)] = p
    return out


def test_a_certain_mention_decides_whatever_the_network_says():
    for source in ("file", "transcript", "review"):
        fused = fuse_window(_net("portal_vein", 0.999999), Mention(1.0, "bile_duct",
                                                                  source=source), IDS)
        assert fused.label == "bile_duct" and fused.confidence == 1.0
        assert fused.needs_review and fused.review_reason == DISAGREES
    agree = fuse_window(_net("bile_duct", 0.6), Mention(1.0, "bile_duct"), IDS)
    assert agree.label == "bile_duct" and not agree.needs_review


def test_detector_confidence_weighs_against_the_network():
    # Said with probability c (then heard right with r = 0.95), else uniform:
    # q(heard) = 0.96 * 0.95 + 0.04 / 5, q(other) = 0.96 * 0.05 / 4 + 0.04 / 5.
    sure = Mention(1.0, "bile_duct", confidence=0.96, source="auto")
    q = speech_evidence(sure, IDS)
    np.testing.assert_allclose(q, [0.02, 0.02, 0.02, 0.02, 0.92])
    p = _net("portal_vein", 0.9)
    fused = fuse_window(p, sure, IDS)
    expected = q * p / (q * p).sum()
    np.testing.assert_allclose(fused.probabilities, expected)
    assert fused.label == "bile_duct" and fused.needs_review   # the network disagrees
    # The heard label wins while the network gives it more than 1/46 of its top label ...
    assert fuse_window(_net("portal_vein", 0.9), sure, IDS).label == "bile_duct"  # 1/36
    assert fuse_window(_net("portal_vein", 0.95), sure, IDS).label == "portal_vein"  # 1/76
    # ... a detection nobody can be sure was said speaks for no label ...
    np.testing.assert_allclose(speech_evidence(Mention(1.0, "bile_duct", confidence=0.0,
                                                       source="auto"), IDS), np.full(5, 0.2))
    # ... and a hesitant detection loses to a confident network.
    weak = Mention(1.0, "bile_duct", confidence=0.4, source="auto")
    fused = fuse_window(_net("portal_vein", 0.95), weak, IDS)
    assert fused.label == "portal_vein" and DISAGREES in fused.review_reason
    # A confident detection the network agrees with is not flagged; an unsure one is.
    assert not fuse_window(_net("bile_duct", 0.7), sure, IDS).needs_review
    unsure = fuse_window(np.full(5, 0.2), Mention(1.0, "bile_duct", confidence=0.5,
                                                  source="auto"), IDS)
    assert unsure.label == "bile_duct"
    assert unsure.review_reason.endswith(f"{LOW_CONFIDENCE}; {UNCERTAIN_DETECTION}")


def test_a_doubtful_detection_is_doubt_about_whether_it_was_said_not_about_its_label():
    """A detection at 0.55 is a true mention about half the time, and then its label is
    nearly always the one heard: a network that leans to another label, 5.5 times the heard
    one, must not turn it (read as the heard label's own probability, 0.55 against 0.1125 on
    each other label, it did)."""
    heard = Mention(1.0, "portal_vein", confidence=0.55, source="auto")
    q = speech_evidence(heard, IDS)
    np.testing.assert_allclose(q.sum(), 1.0)
    assert q[IDS.index("portal_vein")] / q[IDS.index("pancreatic_duct")] > 6
    leaning = np.array([0.08, 0.12, 0.66, 0.07, 0.07])  # the network: pancreatic duct
    fused = fuse_window(leaning, heard, IDS)
    assert fused.label == "portal_vein" and fused.needs_review
    assert DISAGREES in fused.review_reason and UNCERTAIN_DETECTION in fused.review_reason


def test_a_window_resting_on_an_uncertain_detection_is_flagged_even_when_both_agree():
    """The network's voice branch hears the same speech as the detector: where both mishear
    an acronym the same way the fused label looks sure, so a detection heard below the
    review threshold is flagged whatever the fused confidence."""
    agree = _net("pancreatic_duct", 0.8)
    heard = Mention(1.0, "pancreatic_duct", confidence=0.72, source="auto")
    fused = fuse_window(agree, heard, IDS)
    assert fused.label == "pancreatic_duct" and fused.confidence > 0.9
    assert fused.needs_review and fused.review_reason == UNCERTAIN_DETECTION
    clear = Mention(1.0, "pancreatic_duct", confidence=0.85, source="auto")
    assert not fuse_window(agree, clear, IDS).needs_review
    # a mention someone wrote down is not a detection: never flagged for how it was heard
    for source in ("file", "transcript", "review"):
        written = Mention(1.0, "pancreatic_duct", confidence=0.5, source=source)
        assert not fuse_window(agree, written, IDS).needs_review
    assert not fuse_window(agree, None, IDS).needs_review  # nothing said: nothing heard


def test_temperature_fitted_on_held_out_predictions_undoes_overconfidence():
    # Labels drawn from softmax(z): calibrated at T = 1.  The network reports softmax(3 z),
    # three times too sure; the fit must find T = 3 and lower the calibration error.
    rng = np.random.default_rng(0)
    z = rng.normal(0, 1.5, (4000, 5))
    true_p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    y = np.array([rng.choice(5, p=p) for p in true_p])
    reported = scale_probabilities(true_p, 1 / 3)
    fit = fit_temperature(reported, y)
    assert fit["temperature"] == pytest.approx(3.0, rel=0.1)
    assert fit["nll_calibrated"] < fit["nll_raw"] - 0.1
    assert fit["ece_calibrated"] < 0.03 < fit["ece_raw"]
    np.testing.assert_allclose(expected_calibration_error(true_p, y), fit["ece_calibrated"],
                               atol=0.02)
    # Scaling keeps the ranking, so the network's own label never changes.
    assert (scale_probabilities(reported, 3.0).argmax(1) == reported.argmax(1)).all()


def test_a_calibrated_network_no_longer_outvotes_a_confident_detection():
    heard = Mention(1.0, "bile_duct", confidence=0.9, source="auto")
    wrong_and_sure = _net("portal_vein", 0.99)
    assert fuse_window(wrong_and_sure, heard, IDS).label == "portal_vein"
    calibrated = fuse_window(wrong_and_sure, heard, IDS, temperature=4.0)
    assert calibrated.label == "bile_duct" and calibrated.needs_review
    # A network right as often as it claims (T = 1) is left alone, and the temperature a
    # checkpoint carries is read only when it is a usable number.
    np.testing.assert_allclose(scale_probabilities(wrong_and_sure, 1.0), wrong_and_sure)
    assert checkpoint_temperature({"calibration": {"temperature": 2.5}}) == 2.5
    for meta in (None, {}, {"calibration": {}}, {"calibration": {"temperature": "x"}},
                 {"calibration": {"temperature": -1.0}}, {"calibration": [1]}):
        assert checkpoint_temperature(meta) == 1.0


def test_prior_division_and_the_training_prior_of_a_checkpoint():
    flat = np.array([0.5, 0.5])
    np.testing.assert_allclose(fuse_posteriors(np.array([0.5, 0.5]), flat, np.array([0.8, 0.2])),
                               [0.2, 0.8])
    # prior ∝ training counts x class weights: the paper's max/count weights make it uniform.
    k = len(IDS)
    counts = [16, 24, 38, 24, 41]
    weighted = {"preprocessing": {"label_counts": counts},
                "class_weights": [41 / c for c in counts]}
    np.testing.assert_allclose(training_prior(weighted, k), np.full(k, 0.2))
    plain = {"preprocessing": {"label_counts": counts}, "class_weights": [1.0] * k}
    np.testing.assert_allclose(training_prior(plain, k), np.array(counts) / sum(counts))
    np.testing.assert_allclose(training_prior({}, k), np.full(k, 0.2))  # older checkpoints
    # A label never trained on (no windows, weight 0) is not boosted by a zero prior.
    unseen = {"preprocessing": {"label_counts": [0, 10, 10, 10, 10]},
              "class_weights": [0.0, 1.0, 1.0, 1.0, 1.0]}
    p_unseen = np.array([0.1, 0.6, 0.1, 0.1, 0.1])
    np.testing.assert_allclose(fuse_window(p_unseen, None, IDS,
                                           training_prior(unseen, k)).probabilities, p_unseen)
    # With an unweighted network that leans to a frequent class, the division undoes it.
    p = np.array([0.1, 0.1, 0.1, 0.1, 0.6])
    prior = training_prior(plain, k)
    assert fuse_window(p, None, IDS).label == "bile_duct"
    lean = np.array([0.2, 0.15, 0.15, 0.15, 0.35])
    assert fuse_window(lean, None, IDS, prior).label == "pancreas"


def test_zero_safe_arithmetic():
    zeros = np.array([0.0, 1.0, 0.0, 0.0, 0.0])
    for m in (Mention(1.0, "bile_duct", confidence=1.0, source="auto"),
              Mention(1.0, "bile_duct", confidence=0.0, source="auto"),
              Mention(1.0, "bile_duct"), None):
        fused = fuse_window(zeros, m, IDS, np.array([0.0, 0.25, 0.25, 0.25, 0.25]))
        assert np.all(np.isfinite(fused.probabilities))
        assert fused.probabilities.sum() == pytest.approx(1.0)
    assert fuse_window(zeros, Mention(1.0, "bile_duct"), IDS).label == "bile_duct"
    assert fuse_window(zeros, None, IDS).label == "portal_vein"


def _window(i, t, spoken, predicted, label, flagged, conf=0.9, label_conf=0.99):
    return SimpleNamespace(index=i, time_s=t, end_s=t + 0.5, spoken_label=spoken,
                           predicted=predicted, confidence=conf, label=label,
                           label_confidence=label_conf, needs_review=flagged,
                           mention=Mention(t, spoken or "", source="auto", confidence=0.9),
                           probabilities=_net(predicted, conf), frame_indices=np.arange(25))


def test_review_table_puts_flagged_windows_first_and_keeps_the_fused_label():
    windows = [_window(0, 1.0, "pancreas", "pancreas", "pancreas", False, 0.5, 0.6),
               _window(1, 3.0, "bile_duct", "portal_vein", "bile_duct", True, 0.95, 0.99),
               _window(2, 5.0, "portal_vein", "portal_vein", "portal_vein", False, 0.99, 0.999),
               _window(3, 7.0, "pancreas", "bile_duct", "pancreas", True, 0.8, 0.7)]
    table = ReviewTable.from_windows(windows, LabelSet.default())
    assert [r.window for r in table.sorted_rows("confidence")] == [3, 1, 0, 2]
    assert [r.window for r in table.sorted_rows("confidence", ascending=False)] == [1, 3, 2, 0]
    assert [r.window for r in table.sorted_rows("time")] == [0, 1, 2, 3]
    # Exports and training take the fused label; accepting confirms it.
    assert table.final_labels()[1] == "bile_duct"
    table.accept(1)
    assert table.row(1).reviewed == "bile_duct" and table.row(1).status == "accepted"
    mentions = [w.mention for w in windows]
    assert table.training_mentions(mentions)[1].label == "bile_duct"
    # The table round-trips with its flags; a table from before fusion still reads.
    cols = list(RESULT_COLUMNS)
    back = ReviewTable.from_rows(cols, table.to_rows("confidence"), LabelSet.default())
    assert [r.window for r in back.sorted_rows("confidence")] == [3, 1, 0, 2]
    assert back.row(3).label == "pancreas" and back.row(3).predicted == "bile_duct"
    old = ReviewTable.from_rows(cols[:8], [r[:8] for r in table.to_rows("time")])
    assert old.row(3).final_label == "bile_duct" and not old.row(3).needs_review


def test_end_to_end_scoring_pairs_windows_with_true_mentions():
    truth = [Mention(1.0, "pancreas", 1.4), Mention(3.0, "bile_duct", 3.3),
             Mention(6.0, "portal_vein", 6.5)]
    # one window per true mention (the last one missed), a second window on the first name,
    # and a window where nothing was said.
    windows = [_window(0, 1.05, "pancreas", "bile_duct", "pancreas", True),
               _window(1, 1.3, "pancreas", "pancreas", "pancreas", False),
               _window(2, 3.02, "bile_duct", "bile_duct", "bile_duct", False),
               _window(3, 9.0, "bile_duct", "bile_duct", "bile_duct", False)]
    pairing = pair_windows([(w.time_s, w.time_s + 1.0) for w in windows], truth)
    assert pairing.pairs == {0: 0, 2: 1}
    result = SimpleNamespace(procedure=SimpleNamespace(fps=25.0), windows=windows,
                             labelset=LabelSet.default())
    counts = score_result(result, truth)
    # each row keeps the network's whole posterior, so a report can be fused again
    assert counts["rows"][0]["network_probabilities"] == dict(zip(IDS, [0.025] * 4 + [0.9]))
    s = summarise([counts])
    assert s["true_mentions_right"] == {"network": round(1 / 3, 4), "spoken": round(2 / 3, 4),
                                        "fused": round(2 / 3, 4)}
    assert s["false_windows"] == 0.5
    assert s["wrong_windows"] == {"network": 0.75, "fused": 0.5}
    assert s["flagged"] == 1 and s["flagged_fraction"] == 0.25
    assert s["wrong_fused_flagged"] == 0 and s["wrong_flagged_fraction"] == 0.0


def test_end_to_end_out_follows_the_output_rule(tmp_path, capsys):
    """--out is claimed before the model is read: a file inside the cohort or someone else's
    file is refused with one line and left as it was."""
    cohort = tmp_path / "cohort"
    cohort.mkdir()
    (cohort / "notes.txt").write_text("the cohort's notes\n")
    theirs = tmp_path / "theirs.json"
    theirs.write_text('{"not": "ours"}\n')
    model = tmp_path / "missing.pt"
    for out, reason in [(cohort / "report.json", "lies inside the input"),
                        (theirs, "is not an end-to-end report")]:
        assert end_to_end_main([str(cohort), "--model", str(model), "--out", str(out),
                                "--quiet"]) == 1
        err = capsys.readouterr().err
        assert reason in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert theirs.read_text() == '{"not": "ours"}\n'
    assert not (cohort / "report.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cohort", "theirs.json"]
