"""Loading procedure folders: videos, frame folders, sequences, audio, offsets, crops."""

import hashlib
import json
import logging
from pathlib import Path

import mediafactory as mf
import numpy as np
import pytest

from EUSVoiceLabelLib import load_procedure
from EUSVoiceLabelLib.cli import main as cli
from EUSVoiceLabelLib.data.media import load_audio
from EUSVoiceLabelLib.data.mentions import Mention
from EUSVoiceLabelLib.data.procedure import default_crop, find_patients, load_cohort


def levels(frames):
    return [mf.frame_index_of(f.mean()) for f in frames]


def tree_hash(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        h.update(str(p.relative_to(folder)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def test_video_with_audio_track(tmp_path, capsys):
    folder = mf.make_procedure(tmp_path / "p", audio="track")
    before = tree_hash(folder)
    proc = load_procedure(folder)
    assert proc.audio_path == folder / "video.mp4"
    assert proc.n_frames == 100 and proc.fps == 25
    assert proc.frame_size == (96, 64)
    assert [m.label for m in proc.mentions] == ["pancreas", "bile_duct"]
    assert levels(proc.frames_window(1.0, 25)) == list(range(25, 50))
    assert proc.audio.dtype == np.float32 and proc.sample_rate == 48000
    # The tone's amplitude steps every audio second: 0.1*(1+s)*0.2 in second s.
    seg = proc.audio_segment(2.2, 2.8)
    assert np.abs(seg).max() == pytest.approx(0.06, abs=0.006)
    assert cli(["info", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "frame_count: 100" in out and "pancreas: 1" in out and "video.mp4" in out
    assert tree_hash(folder) == before  # inputs are never modified


def test_frames_folder_with_wav_and_offset(tmp_path, capsys):
    folder = tmp_path / "p"
    mf.write_frames_folder(folder / "frames", 60, ext=".png")
    samples = mf.tone(4.0)
    samples[int(1.5 * 48000):] *= 0  # silence from audio time 1.5 s
    mf.write_wav(folder / "audio.wav", samples, 48000)
    (folder / "procedure.json").write_text(json.dumps({"audio_offset_s": 0.5, "fps": 30}))
    (folder / "mentions.csv").write_text("time_s,label\n0.5,portal_vein\n1.2,PD\n")
    proc = load_procedure(folder)
    assert proc.audio_offset_s == 0.5
    assert proc.source.native_fps == 30 and proc.n_frames == 50  # 2 s at 25 fps
    # 25 fps grid over 30 fps frames: nearest frame by time (natural sort of frame_10 etc.).
    assert levels(proc.frames_window(0.0, 25)) == list(np.rint(np.arange(25) * 30 / 25).astype(int))
    assert proc.mentions[1].label == "pancreatic_duct"  # synonym resolved
    # Video 0.5 s = audio 1.0 s: tone; video 1.2 s = audio 1.7 s: silence.
    assert np.abs(proc.voice_window(proc.mentions[0])[:20000]).max() > 0.2
    assert np.abs(proc.voice_window(proc.mentions[1])).max() == 0
    assert cli(["info", str(folder), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["audio_offset_s"] == 0.5 and info["frame_count"] == 50


def test_seq_nrrd_frames(tmp_path):
    from EUSVoiceLabelLib.slicer.files import write_frame_sequence

    folder = tmp_path / "p"
    folder.mkdir()
    n, h, w = 10, 40, 60
    frames = np.stack([np.full((h, w), mf.frame_level(i), np.uint8) for i in range(n)])
    frames[:, 0, :] = 0  # first row dark: checks rows and columns are not swapped
    write_frame_sequence(folder / "frames.seq.nrrd", frames, np.arange(n) * 0.1)  # 10 fps
    proc = load_procedure(folder)
    assert proc.source.native_fps == pytest.approx(10)
    assert proc.frame_size == (60, 40)
    got = proc.frames_at([0.0, 0.1, 0.26, 0.9])
    assert [mf.frame_index_of(f[1:].mean()) for f in got] == [0, 1, 3, 9]
    assert got[0][0].max() == 0 and got[0][1:].min() > 0


@pytest.mark.parametrize("suffix,codec", [(".wav", None), (".flac", "flac"), (".mp3", "libmp3lame"),
                                          (".m4a", "aac")])
def test_audio_formats(tmp_path, suffix, codec):
    x = mf.tone(1.0, rate=44100, freq=300)
    path = tmp_path / f"audio{suffix}"
    if codec is None:
        mf.write_wav(path, x, 44100)
    else:
        mf.write_audio(path, x, 44100, codec)
    samples, rate = load_audio(path)
    assert rate == 44100
    assert abs(len(samples) - 44100) < 3000  # encoders add priming/padding
    assert np.sqrt(np.mean(samples ** 2)) == pytest.approx(0.3 / np.sqrt(2), rel=0.1)


def test_stereo_44k_wav_is_mixed_to_mono_48k(tmp_path):
    folder = mf.make_procedure(tmp_path / "p", audio="none", mentions=None)
    stereo = np.stack([mf.tone(5.0, 44100), np.zeros(5 * 44100, np.float32)], axis=1)
    mf.write_wav(folder / "audio.wav", stereo, 44100)
    proc = load_procedure(folder)
    assert proc.audio_duration_s == pytest.approx(5.0, abs=1e-3)
    assert np.abs(proc.audio).max() == pytest.approx(0.15, rel=0.05)  # mean of the channels


def test_default_and_custom_crop(tmp_path):
    assert default_crop(720, 480) == (15, 65, 690, 350)
    assert default_crop(640, 300) == (0, 0, 640, 300)
    frames = [np.zeros((480, 720), np.uint8) for _ in range(3)]
    frames[0][65:415, 15:705] = 200  # the central crop is bright, the border dark
    folder = tmp_path / "p"
    folder.mkdir()
    mf.write_video(folder / "video.mp4", 3, size=(720, 480), frames=frames)
    proc = load_procedure(folder)
    assert proc.crop == (15, 65, 690, 350)
    first = proc.frames_at([0.0])[0]
    assert first.shape == (350, 690) and first.min() > 150
    (folder / "procedure.json").write_text(json.dumps({"crop": [0, 0, 100, 50]}))
    assert load_procedure(folder).frames_at([0.0])[0].shape == (50, 100)


def test_window_at_the_end_repeats_the_last_frame(tmp_path, caplog):
    from EUSVoiceLabelLib.data.dataset import extract_windows

    folder = mf.make_procedure(tmp_path / "p", mentions="time_s,label\n3.5,pancreas\n")
    proc = load_procedure(folder)
    with caplog.at_level(logging.WARNING):
        win = extract_windows(proc)
    assert "past the end" in caplog.text
    # 3.5 * 25 = 87.5: the nearest frame, ties going up, is 88; frame_index_of counts modulo 56.
    assert levels(win.images[0]) == [i % 56 for i in range(88, 100)] + [99 % 56] * 13


def test_mentions_override_and_transcript(tmp_path):
    folder = mf.make_procedure(tmp_path / "p", offset=0.25)
    srt = tmp_path / "t.srt"
    srt.write_text("1\n00:00:01,250 --> 00:00:02,250\nthe bile duct\n")
    proc = load_procedure(folder, mentions=srt)
    # Transcript times are on the audio clock: shifted by the offset onto the video clock.
    assert proc.mentions[0].label == "bile_duct"
    assert proc.mentions[0].time_s == pytest.approx(1.25 + 1.0 * 4 / 13 - 0.25, abs=0.01)
    proc = load_procedure(folder, mentions=[Mention(0.5, "portal_vein")])
    assert proc.mentions[0].label == "portal_vein"


def test_cohort_discovery(tmp_path):
    for name in ("p2", "p1"):
        mf.make_procedure(tmp_path / name)
    (tmp_path / "notes").mkdir()
    (tmp_path / ".cache").mkdir()
    assert [p.name for p in find_patients(tmp_path)] == ["p1", "p2"]
    cohort = load_cohort(tmp_path)
    assert cohort.patient_ids == ["p1", "p2"] and len(cohort.labelset) == 5
    assert len(list(cohort.procedures())) == 2
