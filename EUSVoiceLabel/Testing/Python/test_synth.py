"""Tests of the synthetic cohort generator (EUSVoiceLabelLib.synth)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from EUSVoiceLabelLib.core.fileio import file_sha256
from EUSVoiceLabelLib.data.vocabulary import LabelSet

pytestmark = pytest.mark.skipif(shutil.which("flite") is None or shutil.which("festival") is None
                                or shutil.which("espeak-ng") is None,
                                reason="TTS engines not installed (scripts/install.sh)")

from EUSVoiceLabelLib.synth import (DISTRACTORS, SYNONYMS, TABLE_I, count_plan,  # noqa: E402
                                    list_speakers, speak, speak_phrase, speak_words,
                                    synth_cohort)
from EUSVoiceLabelLib.synth.cohort import PREFIXES, SUFFIXES  # noqa: E402

TINY = dict(patients=3, counts=3, frame_size=(240, 160), lead_in_s=1.5, gap_s=0.3,
            progress=False, workers=1, offset_fraction=1.0)  # every wav patient has an offset
PAPER_TABLE = {  # Table I of the paper, typed in independently of the generator
    "pancreas": [0, 0, 0, 1, 1, 0, 0, 5, 4, 2, 2, 1],
    "portal_vein": [0, 1, 1, 1, 1, 0, 0, 8, 5, 0, 6, 1],
    "pancreatic_duct": [1, 11, 0, 2, 5, 4, 0, 5, 2, 3, 2, 3],
    "portal_venous_confluence": [0, 2, 1, 1, 3, 1, 0, 7, 8, 0, 1, 0],
    "bile_duct": [1, 4, 2, 3, 8, 2, 1, 2, 10, 3, 5, 0],
}
PAPER_TOTALS = [2, 18, 4, 8, 18, 7, 1, 27, 29, 8, 16, 5]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return synth_cohort(tmp_path_factory.mktemp("c") / "cohort", seed=3, **TINY)


def _patients(cohort: Path) -> list[Path]:
    return sorted(p for p in cohort.iterdir() if p.is_dir())


def _read_mentions(p: Path) -> list[dict]:
    with open(p / "mentions.csv", newline="") as fh:
        return list(csv.DictReader(fh))


# --------------------------------------------------------------------------- counts
def test_paper_counts_match_table_one():
    plan = count_plan("paper", 12)
    for lab, col in PAPER_TABLE.items():
        assert [p[lab] for p in plan] == col
    assert [sum(p.values()) for p in plan] == PAPER_TOTALS
    assert sum(sum(p.values()) for p in plan) == 143
    assert {k: list(v) for k, v in TABLE_I.items()} == PAPER_TABLE


def test_small_and_int_counts():
    small = count_plan("small", 12)
    total = sum(sum(p.values()) for p in small)
    assert 40 <= total <= 56 and all(sum(p.values()) >= 1 for p in small)
    for p, col in enumerate(small):  # never more of a label than the paper's patient had
        assert all(col[lab] <= PAPER_TABLE[lab][p] for lab in col)
    four = count_plan(4, 5, seed=1)
    assert all(sum(p.values()) == 4 for p in four)
    assert all(max(p.values()) <= 1 for p in four)  # spread over labels


def test_bad_counts_rejected():
    from EUSVoiceLabelLib.core.errors import ConfigError
    with pytest.raises(ConfigError):
        count_plan("huge", 3)
    with pytest.raises(ConfigError):
        count_plan(0, 3)


# --------------------------------------------------------------------------- phrases
def test_synonyms_resolve_and_distractors_name_nothing():
    ls = LabelSet.default()
    for lab, syns in SYNONYMS.items():
        for syn, _ in syns:
            assert ls.resolve(syn) == lab, syn
            for pre in PREFIXES:
                for suf in SUFFIXES:
                    found = {m.label for m in ls.find_in_text(f"{pre} {syn} {suf}")}
                    assert found == {lab}, (pre, syn, suf, found)
    for text in DISTRACTORS + PREFIXES + SUFFIXES:
        assert not ls.find_in_text(text), text


def test_speakers_and_word_timing():
    speakers = list_speakers()
    engines = [s.engine for s in speakers]
    assert len(speakers) >= 6 and engines.count("espeak") < len(speakers) / 3
    assert {"flite", "festival", "espeak"} <= set(engines)
    x = speak("portal vein", speakers[0])
    assert x.dtype == np.float32 and 0.3 < len(x) / 48000 < 2.0
    ph = speak_phrase("and this is the", "portal vein", "here", speakers[2])
    words = speak("portal vein", speakers[2])
    n0 = int(round(ph.words_start_s * 48000))
    # the landmark words sit exactly where the phrase says they are
    assert np.array_equal(ph.audio[n0:n0 + len(words)], words)
    assert abs(ph.words_end_s - ph.words_start_s - len(words) / 48000) < 1e-6
    clips = speak_words(["pancreas", "duct"], speakers[1], sample_rate=16000)
    assert clips.shape == (2, 16000) and np.abs(clips).max() > 0.3


def test_trim_keeps_the_word_not_the_engines_padding_noise():
    from EUSVoiceLabelLib.synth.speech import trim_silence

    rng = np.random.default_rng(0)
    sr = 48000
    pad = 0.015 * rng.standard_normal(int(0.25 * sr))            # -36 dB below the word's peak
    t = np.arange(int(0.4 * sr)) / sr
    word = 0.9 * np.sin(2 * np.pi * 220 * t) * np.minimum(1, t / 0.01)
    x = np.concatenate([pad, word, pad]).astype(np.float32)
    y = trim_silence(x, sr)
    # a peak-relative rule alone (-38 dB) would keep the 0.25 s of padding noise
    assert abs(len(y) / sr - 0.4) < 0.02
    onset = int(np.flatnonzero(np.abs(y) > 0.1)[0])
    assert onset < int(0.015 * sr)
    # digital silence around a quiet word: nothing of the word is cut
    quiet = np.concatenate([np.zeros(4800), 0.05 * word, np.zeros(4800)]).astype(np.float32)
    assert abs(len(trim_silence(quiet, sr)) / sr - 0.4) < 0.02


@pytest.mark.parametrize("speaker", [s.name for s in list_speakers()])
def test_word_onsets_are_where_the_speech_starts(speaker):
    """Every voice's trimmed clip starts within 40 ms of its first loud (-30 dB) frame, so
    labelled onsets are not early by the engine's leading noise (flite rms: was 0.2 s)."""
    x = speak("portal vein", speaker)
    hop = 240
    n = len(x) // hop
    rms = np.sqrt(np.mean(x[:n * hop].reshape(n, hop) ** 2, axis=1))
    loud = int(np.flatnonzero(rms > rms.max() * 10 ** (-30 / 20))[0]) * hop / 48000
    assert loud < 0.04, f"{speaker}: speech starts {loud:.3f} s after the labelled onset"


# --------------------------------------------------------------------------- cohort files
def test_tiny_cohort_layout_and_readback(tiny):
    import av
    from scipy.io import wavfile

    pats = _patients(tiny)
    assert len(pats) == 3
    embedded = [p for p in pats if not (p / "audio.wav").exists()]
    assert len(embedded) == 1
    offsets = [json.loads((p / "procedure.json").read_text())["audio_offset_s"] for p in pats]
    assert sum(o != 0 for o in offsets) == 2 and all(-0.5 < o < 2 for o in offsets)
    for p in pats:
        proc = json.loads((p / "procedure.json").read_text())
        assert proc["crop"] == [5, 21, 230, 117]
        truth = json.loads((p / "truth.json").read_text())
        with av.open(str(p / "video.mp4")) as c:
            v = c.streams.video[0]
            assert (v.codec_context.name, v.width, v.height) == ("h264", 240, 160)
            assert abs(float(v.average_rate) - 25) < 1e-6
            n = sum(1 for _ in c.decode(video=0))
            assert n == truth["n_frames"]
        with av.open(str(p / "video.mp4")) as c:
            has_audio = len(c.streams.audio) > 0
            if p in embedded:
                a = c.streams.audio[0]
                assert a.rate == 48000 and a.codec_context.name == "aac"
                samples = np.concatenate([f.to_ndarray().ravel() for f in c.decode(audio=0)])
                assert len(samples) >= 48000 * (truth["duration_s"] - 0.1)
        if p not in embedded:
            assert not has_audio
            sr, x = wavfile.read(p / "audio.wav")
            assert sr == 48000 and x.ndim == 1 and x.dtype == np.int16
            assert abs(len(x) / sr - (truth["duration_s"] + proc["audio_offset_s"])) < 0.01
        rows = _read_mentions(p)
        assert list(rows[0]) == ["time_s", "label", "end_s", "text"]
        assert len(rows) == 3
        for r in rows:
            assert r["label"] in LabelSet.default().ids
            assert float(r["end_s"]) > float(r["time_s"]) >= 0
            assert LabelSet.default().resolve(r["text"]) == r["label"]


def _audio_on_video_clock(p: Path) -> np.ndarray:
    from scipy.io import wavfile

    off = json.loads((p / "procedure.json").read_text())["audio_offset_s"]
    if (p / "audio.wav").exists():
        _, x = wavfile.read(p / "audio.wav")
        x = x.astype(np.float32) / 32768
    else:
        import av
        with av.open(str(p / "video.mp4")) as c:
            x = np.concatenate([f.to_ndarray().ravel() for f in c.decode(audio=0)])
    shift = int(round(off * 48000))
    return x[shift:] if shift >= 0 else np.concatenate([np.zeros(-shift, np.float32), x])


def test_mention_windows_hold_speech_and_visible_landmark(tiny):
    for p in _patients(tiny):
        truth = json.loads((p / "truth.json").read_text())
        x = _audio_on_video_clock(p)
        rms = lambda a, b: float(np.sqrt(np.mean(x[int(a * 48000):int(b * 48000)] ** 2)))
        speech_spans = [(m["phrase_start_s"], m["phrase_end_s"]) for m in truth["mentions"]] + \
            [(d["start_s"], d["end_s"]) for d in truth["distractors"]]
        gaps = []
        edges = sorted(speech_spans)
        for (a0, a1), (b0, _) in zip(edges, edges[1:]):
            if b0 - a1 > 0.25:
                gaps.append(rms(a1 + 0.08, b0 - 0.02))
        noise = float(np.median(gaps))
        for m in truth["mentions"]:
            # the landmark words themselves are loud compared with the pauses
            assert rms(m["time_s"], m["end_s"]) > 2.5 * noise, (p.name, m)
            assert m["time_s"] < m["end_s"] <= m["time_s"] + 1.6
            w = m["window"]
            assert w["frames"] == 25 and w["named_visible"], (p.name, m["label"])
            box = w["named_bbox"]
            assert box[2] > 2 and box[3] > 2
            assert 0 <= box[0] and box[0] + box[2] <= 231 and 0 <= box[1] and box[1] + box[3] <= 118
            assert m["label"] in w["visible"]
            if "pancreatic_duct" in w["landmarks"]:
                assert "pancreas" in w["landmarks"]  # the duct only ever inside the pancreas


def test_burnt_in_text_outside_crop_and_image_looks_like_eus(tiny):
    import av

    p = _patients(tiny)[0]
    with av.open(str(p / "video.mp4")) as c:
        frames = [f.to_ndarray(format="gray") for i, f in zip(range(60), c.decode(video=0))]
    f = np.stack(frames).astype(np.float32)
    x, y, w, h = json.loads((p / "procedure.json").read_text())["crop"]
    outside = f.copy()
    outside[:, y:y + h, x:x + w] = 0
    assert outside.max() > 150          # there is burnt-in text / markers ...
    inside = f[:, y:y + h, x:x + w]
    centre = inside[:, h // 3: 2 * h // 3, w // 3: 2 * w // 3]
    assert 25 < centre.mean() < 200      # ... and a grey speckled image in the fan
    assert centre.std() > 12
    # slow probe motion: consecutive frames differ, but far less than unrelated ones
    d1 = np.abs(inside[1:] - inside[:-1]).mean()
    assert d1 > 0.5


def test_same_seed_same_bytes(tiny, tmp_path):
    again = synth_cohort(tmp_path / "again", seed=3, **TINY)
    for p in _patients(tiny):
        for f in sorted(p.iterdir()):
            assert file_sha256(f) == file_sha256(again / p.name / f.name), f
    other = synth_cohort(tmp_path / "other", seed=4, patients=1, counts=2,
                         frame_size=(240, 160), lead_in_s=1.5, progress=False, workers=1)
    assert file_sha256(other / "patient01" / "video.mp4") != \
        file_sha256(tiny / "patient01" / "video.mp4")


def test_refuses_non_empty_output(tmp_path):
    from EUSVoiceLabelLib.core.errors import OutputError
    (tmp_path / "x.txt").write_text("keep me")
    with pytest.raises(OutputError):
        synth_cohort(tmp_path, **TINY)


def test_cli_synth(tmp_path):
    from EUSVoiceLabelLib.cli import main

    out = tmp_path / "cli"
    rc = main(["synth", str(out), "--patients", "1", "--counts", "2", "--seed", "1",
               "--frame-size", "240x160", "--quiet"])
    assert rc == 0 and len(_read_mentions(out / "patient01")) == 2
    assert main(["synth", str(out), "--patients", "1", "--counts", "2", "--quiet"]) == 2


def test_cohort_loads_with_procedure_loader(tiny):
    procedure = pytest.importorskip("EUSVoiceLabelLib.data.procedure")
    for p in procedure.find_patients(tiny):
        proc = procedure.load_procedure(p)
        truth = json.loads((p / "truth.json").read_text())
        assert proc.sample_rate == 48000
        assert abs(proc.audio_offset_s - truth["audio_offset_s"]) < 1e-6
        assert len(proc.mentions) == len(truth["mentions"])
        m = proc.mentions[0]
        win = proc.frames_window(m.time_s, 25)
        assert win.shape == (25, 117, 230) and win.dtype == np.uint8
        assert win.mean() > 10
