"""Automatic mention detection (pocketsphinx keyphrase spotting) on synthetic speech.

Speech comes from flite (installed by scripts/install.sh); every phrase is synthesised as
separate pieces so the onset of each landmark name is known to the sample.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import shutil

import numpy as np
import pytest
from scipy.io import wavfile
from scipy.signal import resample_poly

from EUSVoiceLabelLib.core.errors import EUSVoiceLabelError
from EUSVoiceLabelLib.core.progress import CallbackProgress
from EUSVoiceLabelLib.data.mentions import Mention
from EUSVoiceLabelLib.data.vocabulary import LabelSet
from EUSVoiceLabelLib.speech.calibrate import calibrate_candidates
from EUSVoiceLabelLib.speech.denoise import (SUPPRESSOR_ENV, level_gain, noise_suppressor,
                                             suppress_noise, webrtc_suppress)
from EUSVoiceLabelLib.speech.detect import detect_mentions, detect_procedure, select_mentions
from EUSVoiceLabelLib.speech.evaluate import (PatientCandidates, evaluate_candidates,
                                              evaluate_detection, match, score_detections)
from EUSVoiceLabelLib.speech.pronunciation import word_pronunciations, word_readings
from EUSVoiceLabelLib.speech.spotter import DEFAULT_THRESHOLD, Hit, build_keyphrases, get_spotter
from mediafactory import say

pytestmark = pytest.mark.skipif(shutil.which("flite") is None, reason="flite is not installed")

RATE = 16000
LABELS = LabelSet.default()


def track(events: list[tuple[float, str, str, str, str]], seconds: float, snr_db: float = 25.0,
          seed: int = 0, stretch: float = 1.0) -> tuple[np.ndarray, list[tuple[float, str]]]:
    """Mix (start_s, prefix, landmark words, suffix, voice) phrases into a noisy recording;
    returns it and the (onset, words) of each landmark (``stretch``: landmark names spoken
    that many times slower)."""
    out = np.zeros(int(seconds * RATE), np.float32)
    truth = []
    for start, prefix, words, suffix, voice in events:
        pos = int(start * RATE)
        for kind, text in (("pre", prefix), ("words", words), ("suf", suffix)):
            if not text:
                continue
            clip = say(text, voice, stretch if kind == "words" else 1.0)
            if kind == "words":
                truth.append((pos / RATE, words))
            out[pos:pos + len(clip)] += 0.5 * clip
            pos += len(clip) + int(0.08 * RATE)
    rng = np.random.default_rng(seed)
    speech_power = np.mean(out[np.abs(out) > 0.01] ** 2)
    noise = rng.standard_normal(out.size).astype(np.float32)
    out += noise * np.sqrt(speech_power / 10 ** (snr_db / 10))
    return out, truth


MENTIONS = [
    (1.0, "there is the", "pancreatic duct", "nice and clear", "slt"),
    (6.0, "now I can see the", "portal vein", "", "awb"),
    (10.0, "and this is the", "common bile duct", "here", "slt"),
    (15.0, "okay", "confluence", "right there", "awb"),
]
EXPECTED_LABELS = ["pancreatic_duct", "portal_vein", "bile_duct", "portal_venous_confluence"]


@pytest.fixture(scope="module")
def speech():
    return track(MENTIONS, 19.0)


HAVE_WEBRTC = importlib.util.find_spec("webrtc_noise_gain") is not None
SUPPRESSORS = ["wiener"] + (["webrtc"] if HAVE_WEBRTC else [])


@pytest.mark.parametrize("suppressor", SUPPRESSORS)
def test_finds_known_mentions_with_labels_and_onsets(speech, suppressor, monkeypatch):
    # Both front-ends: WebRTC's suppressor where its wheel exists, the Wiener fallback elsewhere.
    monkeypatch.setenv(SUPPRESSOR_ENV, suppressor)
    audio, truth = speech
    found = detect_mentions(audio, RATE, LABELS)
    assert [m.label for m in found] == EXPECTED_LABELS
    for m, (onset, words) in zip(found, truth):
        if m.text != words and m.text.endswith(words):
            # The whole-phrase rule (docs/detection.md, step 4) may take a longer name of the
            # label over the carrier word before it ("okay confluence" read as "portal venous
            # confluence"): a known trade-off, measured.  The onset is then early, never late,
            # and by less than a window, so the labelled second still holds the name.
            assert onset - 1.0 < m.time_s < onset, (m, onset)
        else:
            assert abs(m.time_s - onset) < 0.15, (m, onset)
        assert m.end_s is not None and m.end_s > m.time_s
        assert m.source == "auto" and 0.0 <= m.confidence <= 1.0
        assert LABELS.resolve(m.text) == m.label


def test_nothing_in_distractor_speech_and_noise():
    distractors = [(0.5, "", "hold it there", "", "awb"),
                   (3.0, "", "the patient is comfortable", "", "slt"),
                   (6.5, "", "let me adjust the gain a little", "", "awb"),
                   (10.0, "", "take a picture please", "", "rms"),
                   (12.5, "", "we are in the stomach now", "", "slt")]
    audio, _ = track(distractors, 16.0, snr_db=15.0, seed=1)
    assert detect_mentions(audio, RATE, LABELS) == []


def test_quiet_recording_is_raised_before_decoding(speech):
    # The same speech 60 dB down (peak -67 dBFS, as from a microphone left at low gain): 16-bit
    # samples would keep a few bits of it; one gain for the recording restores the detections.
    audio, _ = speech
    loud = detect_mentions(audio, RATE, LABELS)
    quiet = audio * 1e-3
    quiet[100:300] = np.nan  # damaged samples (a broken stream) count as silence
    quiet[RATE // 2] = np.inf
    quiet = detect_mentions(quiet, RATE, LABELS)
    assert [m.label for m in quiet] == [m.label for m in loud] == EXPECTED_LABELS
    assert all(abs(a.time_s - b.time_s) < 0.05 for a, b in zip(quiet, loud))
    assert level_gain(audio) == 1.0  # a normal level is left alone
    assert level_gain(np.zeros(100, np.float32)) == 1.0


@pytest.mark.parametrize("audio", [np.zeros(0, np.float32), np.zeros(50, np.float32),
                                   np.zeros(5 * RATE, np.float32),
                                   np.full(3 * RATE, 1e-5, np.float32)])
def test_silent_or_short_recordings_give_nothing(audio):
    assert detect_mentions(audio, RATE, LABELS) == []


def test_stereo_44k_file_and_audio_offset(speech, tmp_path):
    from EUSVoiceLabelLib.data.media import load_audio

    audio, truth = speech
    head = audio[:int(9.5 * RATE)]  # the first two mentions
    x44 = resample_poly(head, 441, 160).astype(np.float32)
    stereo = np.stack([x44, 0.8 * x44], axis=1)
    path = tmp_path / "stereo.wav"
    wavfile.write(path, 44100, (np.clip(stereo, -1, 1) * 32767).astype(np.int16))
    samples, rate = load_audio(path)
    assert rate == 44100
    plain = detect_mentions(samples, rate, LABELS)
    assert [m.label for m in plain] == EXPECTED_LABELS[:2]
    assert abs(plain[0].time_s - truth[0][0]) < 0.15
    # A raw (n, 2) array works too.
    assert [m.label for m in detect_mentions(stereo, 44100, LABELS)] == EXPECTED_LABELS[:2]
    # audio time = video time + offset: mentions move earlier on the video clock ...
    shifted = detect_mentions(samples, rate, LABELS, audio_offset_s=1.25)
    assert [round(m.time_s - p.time_s, 3) for m, p in zip(shifted, plain)] == [-1.25, -1.25]
    # ... and one spoken before the video started is dropped.
    late = detect_mentions(samples, rate, LABELS, audio_offset_s=plain[0].time_s + 0.5)
    assert [m.label for m in late] == EXPECTED_LABELS[1:2]


def test_thresholds_and_vocabulary_round_trip(speech, tmp_path):
    audio, _ = speech
    head = audio[:int(9.5 * RATE)]
    # A threshold of 1 for one label silences it, by label id or by phrase.
    found = detect_mentions(head, RATE, LABELS, thresholds={"portal_vein": 1.0})
    assert [m.label for m in found] == ["pancreatic_duct"]
    data = LABELS.to_json()
    data["labels"][LABELS.index("pancreatic_duct")]["thresholds"] = {"pancreatic duct": 1.0}
    vocab = tmp_path / "vocab.json"
    vocab.write_text(json.dumps(data))
    calibrated = LabelSet.load(vocab)
    assert dict(calibrated.get("pancreatic_duct").thresholds) == {"pancreatic duct": 1.0}
    assert LabelSet.from_json(calibrated.to_json()) == calibrated
    found = detect_mentions(head, RATE, calibrated)
    assert "pancreatic duct" not in [m.text for m in found]
    assert [m.label for m in found][-1] == "portal_vein"
    bad = LABELS.to_json()
    bad["labels"][0]["thresholds"] = {"pancreas": 3}
    with pytest.raises(Exception, match="thresholds"):
        LabelSet.from_json(bad)


def test_detect_cli_writes_mentions_csv(speech, tmp_path):
    from mediafactory import make_procedure

    from EUSVoiceLabelLib.cli import main

    audio, truth = speech
    cohort = tmp_path / "cohort"  # outputs go beside it: never into an input
    proc = make_procedure(cohort / "p1", seconds=18.0, mentions=None,
                          settings={"audio_offset_s": 0.5})
    wavfile.write(proc / "audio.wav", RATE, (np.clip(audio, -1, 1) * 32767).astype(np.int16))
    out = tmp_path / "found.csv"
    assert main(["detect", str(proc), "--out", str(out), "--quiet"]) == 0
    rows = list(csv.DictReader(out.open()))
    assert [r["label"] for r in rows] == EXPECTED_LABELS
    assert {"time_s", "label", "end_s", "text", "confidence"} <= set(rows[0])
    assert abs(float(rows[0]["time_s"]) - (truth[0][0] - 0.5)) < 0.15
    # The same through the Python API, and a cohort evaluation against those mentions.
    assert [m.label for m in detect_procedure(proc)] == EXPECTED_LABELS
    # Audio starting 2 s before the video: the first mention (1 s into the audio) has no
    # video, so it is not written.
    early = make_procedure(tmp_path / "other" / "p2", seconds=18.0, mentions=None,
                           settings={"audio_offset_s": 2.0})
    shutil.copy(proc / "audio.wav", early / "audio.wav")
    assert main(["detect", str(early), "--out", str(tmp_path / "early.csv"), "--quiet"]) == 0
    assert [r["label"] for r in csv.DictReader((tmp_path / "early.csv").open())] == \
        EXPECTED_LABELS[1:]
    shutil.copy(out, proc / "mentions.csv")
    report_path = tmp_path / "report.json"
    assert main(["detect", str(cohort), "--evaluate", "--out", str(report_path),
                 "--quiet"]) == 0
    report = json.loads(report_path.read_text())
    assert report["overall"]["f1"] == 1.0 and report["onset_error_s"]["median"] < 0.01
    assert report["speed"]["x_real_time"] > 1
    assert report["noise_suppressor"] == noise_suppressor()
    # Two patients decoded side by side in worker processes score like one after the other.
    shutil.copytree(proc, cohort / "p2")
    side_by_side = evaluate_detection(cohort, workers=2, progress=False)
    in_turn = evaluate_detection(cohort, workers=1, progress=False)
    assert side_by_side["n_patients"] == in_turn["n_patients"] == 2
    for key in ("overall", "per_label", "onset_error_s"):
        assert side_by_side[key] == in_turn[key]
    assert side_by_side["overall"]["tp"] == 2 * len(EXPECTED_LABELS)
    assert side_by_side["speed"]["audio_s"] == in_turn["speed"]["audio_s"]


def test_acronyms_are_spelled():
    assert word_pronunciations("pd", "PD") == [["P IY"], ["D IY"]]
    assert word_pronunciations("cbd", "cbd") == [["S IY"], ["B IY"], ["D IY"]]
    assert word_pronunciations("pancreas")[0][0] == "P AE N K R IY AH S"
    phrases = {kp.phrase: kp for kp in build_keyphrases(LABELS)}
    assert len(phrases["P.D."].units) == 2 if "P.D." in phrases else True
    assert phrases["PVC"].units == (("P IY",), ("V IY",), ("S IY",))
    assert all(kp.threshold == DEFAULT_THRESHOLD for kp in phrases.values())


def test_a_spelled_d_is_also_searched_as_tee():
    # Each reading of a spelled letter is a phrase of its own; words keep one reading.
    assert word_readings("pd", "PD") == [[["P IY"], ["D IY"]], [["P IY"], ["T IY"]]]
    assert word_readings("pv", "PV") == [[["P IY"], ["V IY"]]]
    assert word_readings("duct") == [word_pronunciations("duct")]
    readings: dict[str, list] = {}
    for kp in build_keyphrases(LABELS):
        readings.setdefault(kp.phrase, []).append(kp)
    assert [kp.pronunciation for kp in readings["PD"]] == ["P IY D IY", "P IY T IY"]
    assert [kp.pronunciation for kp in readings["CBD"]] == ["S IY B IY D IY", "S IY B IY T IY"]
    assert [kp.pronunciation for kp in readings["MPD"]] == ["EH M P IY D IY", "EH M P IY T IY"]
    spelled = ({"choledochus", "splenoportal confluence", "pancreatic parenchyma"}
               if shutil.which("espeak-ng") else set())
    assert all(len(kps) == 1 for p, kps in readings.items()
               if p not in {"PD", "CBD", "MPD"} | spelled)
    assert {kp.label for kp in readings["PD"]} == {"pancreatic_duct"}
    # A calibrated threshold is the phrase's, whichever reading was heard.
    kps = build_keyphrases(LABELS, {"PD": 0.7})
    assert [kp.threshold for kp in kps if kp.phrase == "PD"] == [0.7, 0.7]


def _m(t: float, label: str) -> Mention:
    return Mention(t, label)


def test_matching_and_scores():
    ref = [_m(1.0, "pancreas"), _m(3.0, "bile_duct"), _m(5.0, "pancreas")]
    det = [_m(1.3, "pancreas"), _m(3.1, "portal_vein"), _m(5.6, "pancreas"), _m(5.45, "pancreas")]
    assert sorted(match(det, ref)) == [(0, 0), (3, 2)]
    report = score_detections([(det, ref)], LABELS.ids)
    assert report["overall"] == {"precision": 0.5, "recall": 0.6667, "f1": 0.5714, "tp": 2,
                                 "fp": 2, "fn": 1}
    assert report["per_label"]["bile_duct"]["fn"] == 1
    assert report["onset_error_s"]["median"] == pytest.approx(0.375)


def test_calibration_picks_thresholds_that_maximise_f1():
    kps = build_keyphrases(LABELS)
    pd, pd_tee = [i for i, kp in enumerate(kps) if kp.phrase == "PD"]
    pv = next(i for i, kp in enumerate(kps) if kp.phrase == "portal vein")
    # "PD" hits: true ones at confidence 0.3-0.4 (one of them heard in its "P IY T IY"
    # reading), false ones at 0.1; "portal vein": false at 0.9.
    hits = [Hit(1.0, 1.3, pd, 0, 0.35), Hit(4.0, 4.3, pd_tee, 0, 0.3), Hit(7.0, 7.3, pd, 0, 0.1),
            Hit(9.0, 9.5, pv, 0, 0.9), Hit(12.0, 12.5, pv, 0, 0.95)]
    ref = [_m(1.0, "pancreatic_duct"), _m(4.0, "pancreatic_duct"), _m(12.0, "portal_vein")]
    cands = [PatientCandidates("p", hits, ref, 0.0, 20.0, 1.0)]
    assert evaluate_candidates(cands, LABELS)["overall"]["tp"] == 1
    chosen = calibrate_candidates(cands, LABELS)
    assert 0.1 < chosen["PD"] <= 0.3 and 0.9 < chosen["portal vein"] <= 0.95
    report = evaluate_candidates(cands, LABELS, chosen)
    assert report["overall"]["f1"] == 1.0
    # Competing phrases on the same speech: the more confident one is kept.
    kept = select_mentions([Hit(1.0, 1.4, pd, 0, 0.6), Hit(1.1, 1.5, pv, 0, 0.8)], LABELS)
    assert [m.label for m in kept] == ["portal_vein"]


def test_mentions_closer_than_one_window_compete():
    """Two detections whose onsets are less than a window (1 s) apart would label the same
    second twice: the more confident is kept, wherever the two phrases lie."""
    kps = build_keyphrases(LABELS)
    index = {kp.phrase: i for i, kp in enumerate(kps)}
    bile, common, conf = index["bile duct"], index["common duct"], index["confluence"]
    # "bile duct" said, then "on the left" heard as "common duct" right after it
    hits = [Hit(8.19, 8.75, bile, 0, 0.95), Hit(8.76, 9.47, common, 0, 0.60),
            Hit(12.0, 12.6, conf, 0, 0.55), Hit(12.9, 13.4, bile, 0, 0.90),
            Hit(20.0, 20.5, conf, 0, 0.70), Hit(21.05, 21.5, bile, 0, 0.65)]
    kept = select_mentions(hits, LABELS)
    assert [(m.time_s, m.text) for m in kept] == [
        (8.19, "bile duct"), (12.9, "bile duct"),           # the less confident one lost
        (20.0, "confluence"), (21.05, "bile duct")]        # 1.05 s apart: both kept


def test_a_name_starts_where_the_longer_phrase_of_its_label_starts():
    """"pancreas" wins inside "head of the pancreas" (it scores higher per frame), but the
    mention starts at "head"; the label and the confidence stay those of the winner."""
    kps = build_keyphrases(LABELS)
    index = {kp.phrase: i for i, kp in enumerate(kps)}
    hits = [Hit(4.19, 5.00, index["pancreas"], 0, 0.87),
            Hit(3.49, 5.00, index["head of the pancreas"], 0, 0.60),
            # "the portal vein" heard as "main portal vein": 0.2 s earlier only, not moved
            Hit(10.30, 10.90, index["portal vein"], 0, 0.95),
            Hit(10.10, 10.90, index["main portal vein"], 0, 0.70),
            # a longer phrase of another label, or one below its threshold: not moved
            Hit(20.50, 21.00, index["confluence"], 0, 0.90),
            Hit(19.90, 21.00, index["bile duct"], 0, 0.80),
            Hit(19.80, 21.02, index["portal venous confluence"], 0, 0.30)]
    kept = select_mentions(hits, LABELS)
    assert [(m.time_s, m.label, m.text, m.confidence, m.end_s) for m in kept] == [
        (3.49, "pancreas", "head of the pancreas", 0.87, 5.0),
        (10.3, "portal_vein", "portal vein", 0.95, 10.9),
        (20.5, "portal_venous_confluence", "confluence", 0.9, 21.0)]


def test_dedupe_keeps_the_best_of_overlapping_hits_of_one_phrase():
    from EUSVoiceLabelLib.speech.detect import _dedupe

    kps = build_keyphrases(LABELS)
    index = {kp.phrase: i for i, kp in enumerate(kps)}
    pd, mpd, pv = index["PD"], index["MPD"], index["PV"]
    hits = [Hit(1.90, 2.30, pd, -3.0, 0.5),   # overlaps the better PD hit across 2.0 s: dropped
            Hit(1.95, 2.40, pd, -2.0, 0.7),
            Hit(1.95, 2.40, mpd, -4.0, 0.3),  # another phrase, same label: kept for selection
            Hit(2.00, 2.30, pv, -4.0, 0.3),   # another label: kept
            Hit(2.45, 2.80, pd, -5.0, 0.2),   # touches nothing kept: kept
            Hit(9.00, 9.30, pd, -1.0, 0.9)]
    kept = _dedupe(hits)
    assert kept == sorted(hits[1:], key=lambda h: h.start_s)
    # Linear time: 20 000 hits (a long, talkative procedure) in well under a second.
    import time

    rng = np.random.default_rng(0)
    many = [Hit(float(a), float(a + d), int(k), float(sc), 0.5) for a, d, k, sc in zip(
        rng.uniform(0, 1200, 20000), rng.uniform(0.1, 1.5, 20000),
        rng.integers(0, len(kps), 20000), rng.uniform(-10, 0, 20000))]
    t0 = time.perf_counter()
    kept = _dedupe(many)
    assert time.perf_counter() - t0 < 2.0
    by_phrase: dict = {}
    for h in kept:
        by_phrase.setdefault(h.phrase_index, []).append(h)
    for group in by_phrase.values():  # no two kept hits of one phrase overlap
        assert all(a.end_s <= b.start_s for a, b in zip(group, group[1:]))


@pytest.mark.parametrize("workers", [1, 2])
def test_progress_callback_and_cancel(speech, workers):
    from EUSVoiceLabelLib.speech.detect import DetectionCancelled

    audio, _ = speech
    long = np.tile(audio, 7)  # 133 s: three 60 s pieces
    seen: list[tuple[int, int]] = []
    found = detect_mentions(long, RATE, LABELS, workers=workers,
                            progress=lambda done, total: seen.append((done, total)))
    assert len(found) == 7 * len(EXPECTED_LABELS)
    assert len(seen) == 3 and seen[-1] == (133, 133)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    asked = []

    def stop() -> bool:
        asked.append(1)
        return True

    with pytest.raises(DetectionCancelled):
        detect_mentions(long, RATE, LABELS, workers=workers,
                        progress=CallbackProgress(should_stop=stop))
    assert len(asked) == 1  # stopped after the first piece


def _band_db(x: np.ndarray) -> float:
    return 10 * np.log10(np.mean(x.astype(np.float64) ** 2) + 1e-20)


@pytest.mark.skipif(not HAVE_WEBRTC, reason="webrtc-noise-gain has no wheel for this platform")
def test_webrtc_suppressor_is_the_default_and_lowers_noise_not_speech(monkeypatch):
    monkeypatch.delenv(SUPPRESSOR_ENV, raising=False)
    assert noise_suppressor() == "webrtc"
    # 2 s of noise alone, then a spoken phrase in the same noise (13 dB SNR): the noise-only
    # part must drop far more than the speech part (measured: 17 dB against 2.6 dB).
    voice = say("the portal venous confluence is here", "slt")
    rng = np.random.default_rng(3)
    noise = 0.02 * rng.standard_normal(2 * RATE + voice.size).astype(np.float32)
    clean = np.concatenate([np.zeros(2 * RATE, np.float32), 0.5 * voice])
    out = suppress_noise(clean + noise)
    assert out.shape == clean.shape and out.dtype == np.float32
    settle = RATE // 2  # it adapts to the noise within the first half second
    noise_drop = _band_db(noise[settle:2 * RATE]) - _band_db(out[settle:2 * RATE])
    speech_drop = _band_db((clean + noise)[2 * RATE:]) - _band_db(out[2 * RATE:])
    assert noise_drop > 10.0, noise_drop
    assert speech_drop < 5.0, speech_drop
    # Short or empty input: same length back, no error.
    for n in (0, 100, 161):
        assert webrtc_suppress(np.ones(n, np.float32) * 0.1).shape == (n,)


def test_noise_suppressor_setting_is_checked(monkeypatch):
    monkeypatch.setenv(SUPPRESSOR_ENV, "wiener")
    assert noise_suppressor() == "wiener"
    monkeypatch.setenv(SUPPRESSOR_ENV, "rnnoise")
    with pytest.raises(EUSVoiceLabelError, match="not a noise suppressor"):
        detect_mentions(np.zeros(RATE, np.float32), RATE, LABELS)


@pytest.mark.parametrize("seed", [0, 1])
def test_long_phrase_is_found_whole_with_its_own_onset(seed):
    # "tail of the pancreas" lasts over a second; with pocketsphinx's default search beam
    # (1e-48) it was pruned in both of these noise draws: missed, or its last word reported
    # alone 0.6 s late (outside the 0.5 s hit tolerance).
    events = [(0.8, "we are on the", "tail of the pancreas", "now", "awb"),
              (5.5, "and here is the", "head of the pancreas", "", "slt")]
    audio, truth = track(events, 9.0, snr_db=15.0, seed=seed)
    found = detect_mentions(audio, RATE, LABELS)
    assert [(m.label, m.text) for m in found] == [("pancreas", "tail of the pancreas"),
                                                  ("pancreas", "head of the pancreas")]
    for m, (onset, _) in zip(found, truth):
        assert abs(m.time_s - onset) < 0.15, (m, onset)


def test_confidence_of_a_hopeless_hit_is_zero_not_an_overflow():
    from EUSVoiceLabelLib.speech.spotter import SCORE_CENTRE, _confidence
    assert _confidence(-1e6) == 0.0
    assert 0.0 < _confidence(SCORE_CENTRE - 5.0) < _confidence(SCORE_CENTRE) == 0.5 \
        < _confidence(SCORE_CENTRE + 3.7) < 1.0


@pytest.mark.parametrize("seed", [0, 1])
def test_slowly_spoken_long_phrase_is_a_candidate(seed):
    # Spoken slowly (1.7 s), "tail of the pancreas" trails the phone loop by more than a
    # phrase-level ratio of 1e-60: with that candidate threshold the phrase was never reported
    # (only its "pancreas", 0.7 s late) in both noise draws; as wide as the search beam, it is.
    events = [(0.8, "we are on the", "tail of the pancreas", "", "kal"),
              (5.5, "and here is the", "body of the pancreas", "", "kal")]
    audio, truth = track(events, 10.0, snr_db=15.0, seed=seed, stretch=1.3)
    found = detect_mentions(audio, RATE, LABELS)
    assert [m.text for m in found] == ["tail of the pancreas", "body of the pancreas"]
    for m, (onset, _) in zip(found, truth):
        assert abs(m.time_s - onset) < 0.15, (m, onset)


def test_spelled_acronyms_are_told_apart():
    # PD, PV and CBD differ in one or two consonants between vowels.  Each phrase is one
    # dictionary word so those consonants keep their neighbours as triphone context; with one
    # word per letter (each letter's edges taken as silence) the PV here scored at the
    # threshold's edge (confidence 0.54 against 0.73; missed at the previous centre).
    events = [(0.8, "now we see the", "PD", "just there", "rms"),
              (4.5, "and this is the", "PV", "", "rms"),
              (8.0, "you can see the", "CBD", "here", "rms"),
              (11.5, "looking at the", "PD", "okay", "rms")]
    audio, truth = track(events, 15.0)
    found = detect_mentions(audio, RATE, LABELS)
    assert [m.text for m in found] == ["PD", "PV", "CBD", "PD"]
    for m, (onset, _) in zip(found, truth):
        assert abs(m.time_s - onset) < 0.15, (m, onset)
    spotter = get_spotter(LABELS)
    pd = next(i for i, kp in enumerate(spotter.keyphrases) if kp.phrase == "PD")
    assert spotter.decoder.lookup_word(f"k{pd}") == "P IY D IY"


@pytest.mark.parametrize("seed", [1, 2])
def test_spelled_d_heard_as_tee_in_noise_is_found(seed):
    # At 15 dB the recogniser hears the D of flite awb's "MPD" and "CBD" as T: searched as
    # "dee" only, the CBD was missed in the first noise draw and both in the second; with the
    # letter's "tee" reading beside it both are found, with their onsets.
    events = [(0.8, "looking at the", "MPD", "", "awb"), (4.5, "there is the", "CBD", "", "awb")]
    audio, truth = track(events, 8.0, snr_db=15.0, seed=seed)
    found = detect_mentions(audio, RATE, LABELS)
    assert [(m.label, m.text) for m in found] == [("pancreatic_duct", "MPD"), ("bile_duct", "CBD")]
    for m, (onset, _) in zip(found, truth):
        assert abs(m.time_s - onset) < 0.15, (m, onset)


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_a_rare_word_is_also_searched_as_spelled():
    # The clinical reading first, then espeak-ng's letter-to-sound reading as a phrase of its
    # own ("ch" as in "church"); dictionary words and acronyms get no such reading.
    readings = word_readings("choledochus")
    assert readings[0] == word_pronunciations("choledochus")
    assert len(readings) == 2 and readings[1][0][0].split()[-2:] == ["AH", "S"]
    assert "CH" in readings[1][0][0].split() and readings[1][0][0] not in readings[0][0]
    assert len(word_readings("pancreas")) == 1 and len(word_readings("duct")) == 1
    spotter = get_spotter(LABELS)
    searched = {spotter.decoder.lookup_word(f"k{i}")
                for i, kp in enumerate(spotter.keyphrases) if kp.phrase == "choledochus"}
    assert searched == {readings[0][0][0], readings[1][0][0]}
