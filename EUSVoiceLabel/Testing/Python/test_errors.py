"""Bad input: every case raises the project's own error naming the file, and the command line
prints it on one line with a non-zero exit code.  Inputs are never modified."""

import json
import os

import mediafactory as mf
import numpy as np
import pytest
import scipy.io.wavfile
from test_procedure import tree_hash

from EUSVoiceLabelLib import load_procedure
from EUSVoiceLabelLib.cli import main as cli
from EUSVoiceLabelLib.core.errors import (EUSVoiceLabelError, MediaError, MentionsError,
                                          ProcedureError)
from EUSVoiceLabelLib.data.dataset import build_window_set


def run_info(folder, capsys):
    rc = cli(["info", str(folder)])
    err = capsys.readouterr().err.strip().splitlines()
    return rc, err


def corrupt_video(folder):
    (folder / "video.mp4").write_bytes(os.urandom(5000))


def truncated_video(folder):
    data = (folder / "video.mp4").read_bytes()
    (folder / "video.mp4").write_bytes(data[:len(data) // 3])


def no_audio(folder):
    (folder / "audio.wav").unlink()


def short_audio(folder):
    mf.write_wav(folder / "audio.wav", mf.tone(1.5), 48000)  # mention at 2.0 s is beyond it


def mention_after_end(folder):
    (folder / "mentions.csv").write_text("time_s,label\n1.0,pancreas\n9.5,portal_vein\n")


def unknown_label(folder):
    (folder / "mentions.csv").write_text("time_s,label\n1.0,spleen\n")


def empty_mentions(folder):
    (folder / "mentions.csv").write_text("")


def crop_outside(folder):
    (folder / "procedure.json").write_text(json.dumps({"crop": [50, 0, 100, 64]}))


def nan_audio(folder):
    x = mf.tone(5.0)
    x[1000] = np.nan
    scipy.io.wavfile.write(folder / "audio.wav", 48000, x)


def inf_audio(folder):
    x = mf.tone(5.0)
    x[1000] = np.inf
    scipy.io.wavfile.write(folder / "audio.wav", 48000, x)


def not_a_procedure(folder):
    for p in folder.iterdir():
        p.unlink()
    (folder / "notes.txt").write_text("hello")


def bad_procedure_json(folder):
    (folder / "procedure.json").write_text("{audio_offset_s: 1}")


def random_audio(folder):
    (folder / "audio.wav").write_bytes(os.urandom(3000))


CASES = [
    (corrupt_video, MediaError, "video.mp4", "cannot read video"),
    (truncated_video, MediaError, "video.mp4", ""),
    (no_audio, MediaError, "p", "no audio"),
    (short_audio, MentionsError, "mentions.csv", "outside the audio"),
    (mention_after_end, MentionsError, "mentions.csv", "after the end of the video"),
    (unknown_label, MentionsError, "mentions.csv", "unknown label 'spleen'"),
    (empty_mentions, MentionsError, "mentions.csv", "no mentions"),
    (crop_outside, ProcedureError, "procedure.json", "outside the 96x64 frames"),
    (nan_audio, MediaError, "audio.wav", "NaN or infinite"),
    (inf_audio, MediaError, "audio.wav", "NaN or infinite"),
    (not_a_procedure, ProcedureError, "p", "not a procedure folder"),
    (bad_procedure_json, ProcedureError, "procedure.json", "not valid JSON"),
    (random_audio, MediaError, "audio.wav", "cannot decode audio"),
]


@pytest.mark.parametrize("breaker,error,culprit,words", CASES,
                         ids=[c[0].__name__ for c in CASES])
def test_bad_input(tmp_path, capsys, breaker, error, culprit, words):
    folder = mf.make_procedure(tmp_path / "p")
    breaker(folder)
    before = tree_hash(folder)
    with pytest.raises(error) as exc:
        proc = load_procedure(folder)
        proc.validate()
        from EUSVoiceLabelLib.data.dataset import extract_windows
        extract_windows(proc)  # truncated videos may only fail while decoding frames
    message = str(exc.value)
    assert words in message
    assert exc.value.path is not None and exc.value.path.endswith(culprit)
    rc, err = run_info(folder, capsys)
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("eusvoicelabel info: error: ")
    assert culprit in err[0]
    assert tree_hash(folder) == before


def test_cohort_without_procedures(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ProcedureError, match="contains no procedure folders"):
        build_window_set(tmp_path, progress=False)


def test_single_procedure_given_as_cohort(tmp_path):
    folder = mf.make_procedure(tmp_path / "p")
    with pytest.raises(ProcedureError, match="single procedure, not a cohort"):
        build_window_set(folder, progress=False)


def test_cohort_given_as_a_procedure(tmp_path, capsys):
    """A cohort where one procedure is expected says so and names a procedure to give."""
    for name in ("patient02", "patient01"):
        mf.make_procedure(tmp_path / "cohort" / name)
    with pytest.raises(ProcedureError, match="is a cohort of 2 procedure folders") as exc:
        load_procedure(tmp_path / "cohort")
    assert str(tmp_path / "cohort" / "patient01") in str(exc.value)
    rc, err = run_info(tmp_path / "cohort", capsys)
    assert rc == 2 and len(err) == 1 and "give one of them" in err[0]


def test_errors_are_one_class_family():
    for cls in (MediaError, MentionsError, ProcedureError):
        assert issubclass(cls, EUSVoiceLabelError)
    e = MediaError("is broken", "/x/video.mp4", "re-encode it")
    assert str(e) == "/x/video.mp4: is broken (re-encode it)"
