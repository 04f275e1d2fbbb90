"""Never touch what is not ours (issue 19): outputs that cannot overwrite inputs, leftovers swept
by exact name only, media that cannot crash the process, label sets beyond 8 bits, a full disk
that leaves the previous state, checked checkpoints, distinct patients, one-line errors.

Each test is a reproducer that failed before the fix (exit 0 over an input, a traceback, a
segmentation fault, a silent corruption).  The fault table of docs/reliability.md points here.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import subprocess
import sys
import types
from pathlib import Path

import mediafactory as mf
import nrrd
import numpy as np
import pytest
import torch
from faults import full_disk
from test_reliability import tiny_checkpoint, tree_digest

from EUSVoiceLabelLib.cli import main as cli
from EUSVoiceLabelLib.core.csvtext import csv_text, unescape_cell
from EUSVoiceLabelLib.core.errors import (CheckpointError, ConfigError, MediaError, OutputError,
                                          VocabularyError)
from EUSVoiceLabelLib.core.outputlock import MARKER
from EUSVoiceLabelLib.data.outputs import claim_output
from EUSVoiceLabelLib.data.procedure import find_patients

DEV = ["--device", "cpu", "--quiet"]
PKG_ROOT = Path(__file__).resolve().parents[2]   # the folder holding EUSVoiceLabelLib


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("safety") / "cohort"
    for i in range(3):
        mf.make_procedure(root / f"patient0{i + 1}", seconds=3.0)
    return root


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("model") / "model.pt")


# =========================================================================== 1. inputs
@pytest.mark.parametrize("args, target", [
    (["train", "{c}", "--out", "{c}/patient01/video.mp4"], "patient01/video.mp4"),
    (["detect", "{c}/patient01", "--out", "{c}/patient01/mentions.csv"], "patient01/mentions.csv"),
    (["label", "{c}/patient01", "--model", "{m}", "--out", "{c}/patient02"], "patient02"),
    (["label", "{c}/patient01", "--model", "{m}", "--out", "{c}"], "."),
    (["evaluate", "{c}", "--out", "{c}"], "."),
    (["evaluate", "{c}", "--out", "{c}/results"], "."),
    (["export", "{c}", "--out", "{c}/patient02/../patient03"], "patient03"),
    (["train", "{c}", "--cache", "{c}/patient01", "--out", "{t}/m.pt"], "patient01"),
])
def test_an_output_never_lands_on_or_in_an_input(args, target, cohort, model, tmp_path,
                                                  capsys):
    before = tree_digest(cohort)
    argv = [a.format(c=cohort, m=model, t=tmp_path) for a in args]
    assert cli(argv + DEV) == 2
    err = one_line_error(capsys)
    assert any(w in err for w in ("input", "procedure folder", "cohort folder")), err
    assert tree_digest(cohort) == before  # names, bytes and modification times


def test_symlinks_are_resolved(cohort, tmp_path, capsys):
    link = tmp_path / "link"
    link.symlink_to(cohort / "patient01")
    before = tree_digest(cohort)
    assert cli(["train", str(cohort), "--out", str(link / "model.pt"), *DEV]) == 2
    assert "lies inside the input" in one_line_error(capsys)
    assert tree_digest(cohort) == before


def test_an_existing_file_is_replaced_only_when_it_is_ours(cohort, model, tmp_path, capsys):
    notes = tmp_path / "notes.pt"
    notes.write_bytes(b"my thesis")
    hand = tmp_path / "hand.csv"
    hand.write_text("time_s,label\n1.0,pancreas\n")
    for argv, message in (
            (["train", str(cohort), "--out", str(notes)], "notes.pt: exists and is not a model "
                                                          "checkpoint"),
            (["detect", str(cohort / "patient01"), "--out", str(hand)],
             "hand.csv: exists and is not a CSV of mentions found by"),
            (["label", str(cohort / "patient01"), "--model", str(model), "--out", str(notes)],
             "notes.pt: is a file, not a folder")):
        assert cli(argv + DEV) == 2
        assert message in one_line_error(capsys)
    assert notes.read_bytes() == b"my thesis" and hand.read_text().startswith("time_s,label")
    # Our own earlier outputs of the same kind may be replaced.
    from EUSVoiceLabelLib.speech.detect import DETECTED_MENTIONS
    from EUSVoiceLabelLib.train.checkpoints import CHECKPOINT

    claim_output(model, CHECKPOINT)
    found = tmp_path / "found.csv"
    found.write_text("time_s,label,end_s,text,confidence,source\n1.000,pancreas,,x,0.9,auto\n")
    claim_output(found, DETECTED_MENTIONS)
    with pytest.raises(OutputError, match="is not a CSV of mentions found by"):
        claim_output(hand, DETECTED_MENTIONS)


def test_a_folder_output_of_another_kind_or_someone_else_is_refused(cohort, tmp_path):
    from EUSVoiceLabelLib.data.export import EXPORT_DATASET
    from EUSVoiceLabelLib.labelling.output import LABEL_OUTPUT

    mine = claim_output(tmp_path / "labels", LABEL_OUTPUT)
    assert json.loads((mine / MARKER).read_text())["kind"] == "label"
    with pytest.raises(OutputError, match="'label' output and not an exported image dataset"):
        claim_output(mine, EXPORT_DATASET)
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "labels.csv").write_text("a,b\n")
    with pytest.raises(OutputError, match="is not empty"):
        claim_output(theirs, LABEL_OUTPUT)
    # A label output beside the patients of a cohort is not read as a patient.
    claim_output(cohort.parent / "beside", LABEL_OUTPUT)
    (cohort.parent / "beside" / "frames.seq.nrrd").write_bytes(b"")
    assert [p.name for p in find_patients(cohort)] == ["patient01", "patient02", "patient03"]


# =========================================================================== 2. the sweep
def test_the_sweep_removes_only_our_leftovers_by_exact_name_in_the_folder_itself(cohort,
                                                                                 tmp_path,
                                                                                 capsys):
    # A refused output sweeps nothing, and --out HOME is refused without touching it.
    hidden = cohort / "patient01" / ".video.mp4.abcd1234.part.mp4"
    hidden.write_bytes(b"someone's")
    assert cli(["export", str(cohort), "--out", str(cohort), *DEV]) == 2
    capsys.readouterr()
    assert hidden.is_file()
    hidden.unlink()
    home = tmp_path / "home"
    (home / "photos").mkdir(parents=True)
    user_part = home / "photos" / ".holiday.jpg.abcd1234.part"
    user_part.write_bytes(b"x")
    (home / ".bashrc").write_text("alias")
    assert cli(["export", str(cohort), "--out", str(home), "--every", "25", *DEV]) == 2
    assert "is not empty" in one_line_error(capsys)
    assert user_part.is_file() and (home / ".bashrc").is_file()
    # In our own output folder: our leftovers directly in it go, nothing deeper.
    from EUSVoiceLabelLib.data.export import EXPORT_DATASET

    out = claim_output(tmp_path / "dataset", EXPORT_DATASET)
    ours = [out / ".labels.csv.k2j4h5g6.part.csv", out / ".eusvoicelabel-staging-a1b2c3d4"]
    ours[0].write_bytes(b"half")
    ours[1].mkdir()
    deeper = out / "images" / ".x.png.abcd1234.part.png"
    deeper.parent.mkdir()
    deeper.write_bytes(b"x")
    other = out / ".notes.txt.part"  # not our name pattern
    other.write_bytes(b"x")
    claim_output(out, EXPORT_DATASET)
    assert not any(p.exists() for p in ours) and deeper.is_file() and other.is_file()


# =========================================================================== 3. channels
_LOAD_ALL = """
import sys
from EUSVoiceLabelLib.data.media import load_audio
for f in sys.argv[1:]:
    s, r = load_audio(f)
    print(len(s), r, float(abs(s).mean()) > 0)
"""


def _write_multichannel(path: Path, codec: str, layout: str, channels: int) -> Path:
    import av

    rate = 48000
    x = (0.2 * np.sin(np.arange(rate)[:, None] * 2 * np.pi * 440 / rate)
         * np.ones(channels)).astype(np.float32)
    with av.open(str(path), "w") as out:
        st = out.add_stream(codec, rate=rate, layout=layout)
        fmt = st.codec_context.format.name
        # Interleaved input: PyAV cannot build a planar frame of 8 channels either.
        frame = av.AudioFrame.from_ndarray(x.reshape(1, -1), format="flt", layout=layout)
        frame.sample_rate = rate
        for f in av.AudioResampler(format=fmt, layout=layout, rate=rate).resample(frame):
            for p in st.encode(f):
                out.mux(p)
        for p in st.encode(None):
            out.mux(p)
    return path


def test_audio_with_8_or_more_channels_decodes_instead_of_crashing(tmp_path, capsys):
    files = [mf.write_wav(tmp_path / f"a{c}.wav", mf.tone(1.0, channels=c), 48000)
             for c in (2, 8, 16)]
    files += [_write_multichannel(tmp_path / "a.flac", "flac", "7.1", 8),
              _write_multichannel(tmp_path / "a.m4a", "aac", "7.1", 8)]
    # In a child process: before the fix this was a segmentation fault (exit -11/139).
    r = subprocess.run([sys.executable, "-c", _LOAD_ALL, *map(str, files)],
                       capture_output=True, text=True, cwd=PKG_ROOT, timeout=120)
    assert r.returncode == 0, (r.returncode, r.stderr[-500:])
    lines = r.stdout.split("\n")
    assert all(line.split()[1] == "48000" and line.split()[2] == "True"
               for line in lines[:5]), r.stdout
    from EUSVoiceLabelLib.data.media import load_audio

    mono, _ = load_audio(files[1])
    assert np.allclose(mono, mf.tone(1.0), atol=1e-4)  # the channel average
    many = mf.write_wav(tmp_path / "a65.wav", mf.tone(0.1, channels=65), 48000)
    with pytest.raises(MediaError, match="implausible channel count 65"):
        load_audio(many)
    folder = mf.make_procedure(tmp_path / "p", seconds=3.0)
    mf.write_wav(folder / "audio.wav", mf.tone(4.0, channels=8), 48000)
    r = subprocess.run([sys.executable, "-m", "EUSVoiceLabelLib", "info", str(folder)],
                       capture_output=True, text=True, cwd=PKG_ROOT, timeout=120)
    assert r.returncode == 0 and "audio_duration_s" in r.stdout, r.stderr[-500:]


# =========================================================================== 4. labels
def _window(index: int, label: str, time_s: float, shape, labelset):
    from EUSVoiceLabelLib.data.mentions import Mention
    from EUSVoiceLabelLib.labelling.run import WindowResult

    k = len(labelset)
    probs = np.full(k, 1.0 / k, np.float32)
    cam = np.zeros(shape, np.float32)
    cam[: shape[0] // 2] = 1.0
    return WindowResult(index, Mention(time_s, label), label, float(probs[0]), probs,
                        np.arange(int(time_s * 25), int(time_s * 25) + 3), cam=cam,
                        region=cam >= 0.5, peak=(1, 1))


def test_more_than_255_labels_keep_their_value_in_the_labelmap(tmp_path):
    from EUSVoiceLabelLib.data.procedure import load_procedure
    from EUSVoiceLabelLib.data.vocabulary import LabelSet, Label
    from EUSVoiceLabelLib.labelling.output import LabelOutputWriter
    from EUSVoiceLabelLib.labelling.run import LabelResult

    labelset = LabelSet(tuple(Label(f"l{i}", f"Landmark {i}") for i in range(300)))
    proc = load_procedure(mf.make_procedure(tmp_path / "p", seconds=3.0, mentions=None))
    w = _window(0, "l299", 1.0, (proc.frame_size[1], proc.frame_size[0]), labelset)
    writer = LabelOutputWriter(tmp_path / "out", proc, labelset, [w.mention], 3)
    writer.add(w, proc.frames_window(1.0, 3))
    writer.finish(LabelResult(proc, labelset, [w]))
    data, header = nrrd.read(str(tmp_path / "out" / "landmarks.seq.nrrd"))
    assert header["type"] == "uint16" and data.max() == 300  # was 300 % 256 = 44
    table = (tmp_path / "out" / "landmarks.csv").read_text().splitlines()
    assert len(table) == 301 and table[300].startswith("300,Landmark 299,")
    with pytest.raises(VocabularyError, match="more than the 65535"):
        LabelSet(tuple(Label(f"l{i}", "x") for i in range(65536)))


def test_a_line_break_in_a_label_name_is_refused(tmp_path, capsys):
    from EUSVoiceLabelLib.slicer.files import color_table_csv

    folder = mf.make_procedure(tmp_path / "p", seconds=3.0, mentions=None)
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"labels": [{"id": "a", "name": "Bile\nduct"},
                                             {"id": "b", "name": "Pancreas"}]}))
    assert cli(["info", str(folder), "--labels", str(labels)]) == 2
    assert "line break or control character" in one_line_error(capsys)
    text = color_table_csv([(1, "Bile\nduct, common", (1.0, 0.0, 0.0))])
    assert text.splitlines()[1] == "1,Bile duct  common,255,0,0,255"


# =========================================================================== 5. full disk
@pytest.fixture(scope="module")
def labelled(tmp_path_factory, model) -> tuple[Path, Path]:
    """A procedure and its label output folder (untrained tiny model, no heat maps)."""
    root = tmp_path_factory.mktemp("labelled")
    proc = mf.make_procedure(root / "proc", seconds=3.0)
    out = root / "out"
    assert cli(["label", str(proc), "--model", str(model), "--out", str(out), "--no-cam",
                *DEV]) == 0
    return proc, out


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd")
@pytest.mark.parametrize("fraction", [0.0, 0.3, 0.95])
def test_label_and_export_on_a_full_disk_keep_the_previous_output(fraction, labelled, model,
                                                                  tmp_path, capsys):
    """The disk fills up after ``fraction`` of what the run writes."""
    proc, out = labelled
    dataset = tmp_path / "dataset"
    assert cli(["export", str(out), "--out", str(dataset), *DEV]) == 0
    capsys.readouterr()
    for target, argv in ((out, ["label", str(proc), "--model", str(model), "--out", str(out),
                                "--no-cam"]),
                         (dataset, ["export", str(out), "--out", str(dataset)])):
        with full_disk(target, 1 << 40) as disk:  # how much a run writes
            assert cli(argv + DEV) == 0
        budget = int(fraction * ((1 << 40) - disk["left"]))
        capsys.readouterr()
        before = tree_digest(target)
        with full_disk(target, budget):
            rc = cli(argv + DEV)
        err = one_line_error(capsys)
        assert rc == 2 and "the disk is full" in err and "free disk space" in err, err
        assert tree_digest(target) == before  # not one file changed, nothing left behind


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd")
def test_a_checkpoint_on_a_full_disk_says_so_and_keeps_the_previous_one(tmp_path):
    from EUSVoiceLabelLib.train.checkpoints import load_checkpoint

    path = tiny_checkpoint(tmp_path / "model.pt")
    before = path.read_bytes()
    with full_disk(tmp_path, 5_000):  # torch.save's own writer reports only RuntimeError
        with pytest.raises(OutputError, match="model.pt: cannot write: the disk is full"):
            tiny_checkpoint(path, variant="image_only")
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["model.pt"]
    assert load_checkpoint(path).config.variant == "proposed"


def test_an_export_that_fails_half_way_leaves_the_previous_dataset(labelled, tmp_path,
                                                                   monkeypatch, capsys):
    from EUSVoiceLabelLib.data import export

    proc, out = labelled
    dataset = tmp_path / "dataset"
    assert cli(["export", str(out), "--out", str(dataset), *DEV]) == 0
    capsys.readouterr()
    before = tree_digest(dataset)
    calls = {"n": 0}
    real = export._save_png

    def fail_on_the_fifth(path, frame):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt  # Ctrl-C half way
        real(path, frame)

    monkeypatch.setattr(export, "_save_png", fail_on_the_fifth)
    assert cli(["export", str(out), "--out", str(dataset), *DEV]) == 130
    assert tree_digest(dataset) == before  # the previous dataset, labels.csv included


# =========================================================================== 6. label sets
def test_a_model_of_another_label_set_labels_a_procedure_with_mentions(tmp_path, capsys):
    from EUSVoiceLabelLib.data.vocabulary import Label, LabelSet

    labelset = LabelSet((Label("alpha", "Alpha"), Label("beta", "Beta")))
    model = tiny_checkpoint(tmp_path / "ab.pt", labelset=labelset)
    proc = mf.make_procedure(tmp_path / "p", seconds=3.0)  # mentions.csv: pancreas, bile_duct
    mine = tmp_path / "mine.csv"
    mine.write_text("time_s,label\n0.5,alpha\n1.5,beta\n")
    out = tmp_path / "out"
    assert cli(["label", str(proc), "--model", str(model), "--mentions", str(mine), "--out",
                str(out), "--no-cam", *DEV]) == 0
    rows = list(csv.DictReader((out / "labels.csv").open()))
    assert [r["spoken_label"] for r in rows] == ["alpha", "beta"]
    capsys.readouterr()
    rc = cli(["label", str(proc), "--model", str(model), "--mentions", "auto", "--out",
              str(tmp_path / "auto"), "--no-cam", *DEV])
    err = one_line_error(capsys)
    # the tone has no speech: detection finds nothing, but mentions.csv was not parsed
    assert rc == 2 and "no landmark mention was detected" in err and "pancreas" not in err


# =========================================================================== 7. checkpoints
def _crafted(src: Path, dst: Path, change) -> Path:
    from EUSVoiceLabelLib.nn.torchfile import DIGEST_KEY
    from EUSVoiceLabelLib.train.checkpoints import checkpoint_digest

    data = torch.load(src, weights_only=True)
    change(data)
    data[DIGEST_KEY] = checkpoint_digest(data)  # a valid checksum: crafted, not damaged
    torch.save(data, dst)
    return dst


def _nan_weight(d):
    name = next(k for k, v in d["model"].items() if v.is_floating_point())
    d["model"][name][...] = float("nan")


@pytest.mark.parametrize("change, message", [
    (_nan_weight, "hold NaN or infinite values"),
    (lambda d: d["config"].update(width="wide"), "width must be a number"),
    (lambda d: d["preprocessing"].update(spectrogram={"scale": "cubic"}),
     "unknown spectrogram scale"),
    (lambda d: (d["config"].update(image_size=[100000, 100000]),
                d["preprocessing"].update(image_size=[100000, 100000])), "image_size must be"),
    (lambda d: d["preprocessing"].update(image_size=[100000, 100000]), "differs from"),
    (lambda d: d["config"].update(frames="25"), "frames must be a whole number"),
])
def test_crafted_checkpoints_are_refused_in_one_line(change, message, model, tmp_path,
                                                     capsys):
    from EUSVoiceLabelLib.train.checkpoints import load_checkpoint

    bad = _crafted(model, tmp_path / "bad.pt", change)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(bad)
    proc = mf.make_procedure(tmp_path / "p", seconds=3.0)
    assert cli(["label", str(proc), "--model", str(bad), "--out", str(tmp_path / "o"),
                *DEV]) == 2
    assert message.split()[0] in one_line_error(capsys)


# =========================================================================== 8. folds
def test_a_symlinked_duplicate_patient_is_refused_and_a_copy_is_reported(cohort, tmp_path,
                                                                         capsys, caplog):
    import shutil

    linked = tmp_path / "linked"
    linked.mkdir()
    for p in ("patient01", "patient02"):
        (linked / p).symlink_to(cohort / p)
    (linked / "patient03").symlink_to(cohort / "patient01")  # the same patient again
    assert cli(["evaluate", str(linked), "--out", str(tmp_path / "ev"), "--epochs", "1",
                *DEV]) == 2
    assert "patient03: is the same folder as patient01" in one_line_error(capsys)
    copied = tmp_path / "copied"
    shutil.copytree(cohort / "patient01", copied / "a")
    shutil.copytree(cohort / "patient01", copied / "b")
    with caplog.at_level(logging.WARNING):
        assert [p.name for p in find_patients(copied)] == ["a", "b"]
    assert "same recording, audio and mentions as a" in caplog.text


# =========================================================================== 9. one line
def _edited(out: Path, tmp_path: Path, name: str, edit) -> Path:
    import shutil

    copy = tmp_path / name
    shutil.copytree(out, copy)
    edit(copy)
    return copy


def _review_dotdot(folder: Path) -> None:
    """A reviewer's label '..' in the first window (it once wrote PNGs outside images/)."""
    rows = list(csv.reader((folder / "labels.csv").open()))
    rows[0].append("reviewed_label")
    for i, row in enumerate(rows[1:]):
        row.append(".." if i == 0 else "")
    (folder / "labels.csv").write_text(csv_text(rows[0], rows[1:]))


@pytest.mark.parametrize("name, edit, message", [
    ("bad_run", lambda d: (d / "run.json").write_text("{not json"), "run.json"),
    ("list_run", lambda d: (d / "run.json").write_text("[]"), "run.json"),
    ("no_column", lambda d: (d / "labels.csv").write_text(
        "\n".join(",".join(r[:4]) for r in csv.reader((d / "labels.csv").open())) + "\n"),
     "has no column 'predicted_label'"),
    ("bad_window", lambda d: (d / "frame_labels.csv").write_text(
        (d / "frame_labels.csv").read_text().replace(",0,", ",99,", 1)),
     "window 99 is not in labels.csv"),
    ("no_frames", lambda d: (d / "frame_labels.csv").unlink(), "has no frame_labels.csv"),
    ("dotdot", _review_dotdot, "unknown label '..'"),
])
def test_export_of_a_hand_edited_label_folder_gives_one_line(name, edit, message, labelled,
                                                              tmp_path, capsys):
    _, out = labelled
    folder = _edited(out, tmp_path, name, edit)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert cli(["export", str(folder), "--out", str(tmp_path / "ds"), *DEV]) == 2
    assert message in one_line_error(capsys)
    # nothing written beside the output (a reviewed label '..' once wrote outside images/)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(before + ["ds"])
    assert [p.name for p in (tmp_path / "ds").iterdir()] == [MARKER]


def test_other_one_line_errors(tmp_path, model, capsys):
    # A .seq.nrrd without frames.
    folder = tmp_path / "empty"
    folder.mkdir()
    (folder / "frames.seq.nrrd").write_bytes(
        b"NRRD0004\ntype: uint8\ndimension: 4\nsizes: 96 64 1 0\nencoding: raw\n\n")
    assert cli(["info", str(folder)]) == 2
    assert "holds no frames" in one_line_error(capsys)
    # A 2 GB "bomb": refused from its header at once, before anything is inflated.
    bomb = tmp_path / "bomb" / "frames.seq.nrrd"
    bomb.parent.mkdir()
    bomb.write_bytes(b"NRRD0004\ntype: uint8\ndimension: 4\nsizes: 1000 1000 1 2000\n"
                     b"kinds: domain domain domain list\nencoding: gzip\n\n" + b"\x1f\x8b" * 8)
    assert cli(["info", str(bomb.parent)]) == 2
    assert "would decode to 1.9 GiB of frames" in one_line_error(capsys)
    # --out naming an existing file where a folder is written.
    proc = mf.make_procedure(tmp_path / "p", seconds=3.0)
    a_file = tmp_path / "a file"
    a_file.write_text("x")
    for argv in (["label", str(proc), "--model", str(model), "--out", str(a_file)],
                 ["export", str(tmp_path / "p"), "--out", str(a_file)]):
        assert cli(argv + DEV) == 2
        assert "is a file, not a folder" in one_line_error(capsys)
    assert a_file.read_text() == "x"


@pytest.mark.parametrize("argv, message", [
    (["train", "C", "--out", "m.pt", "--seed", "99999999999999999999999"], "the seed must be"),
    (["train", "C", "--out", "m.pt", "--epochs", "0"], "at least 1"),
    (["synth", "C", "--snr-db", "nan"], "must be a finite number"),
    (["evaluate", "C", "--out", "o", "--batch-size", "-3"], "at least 1"),
])
def test_absurd_numbers_on_the_command_line_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        cli(argv)
    assert info.value.code == 2 and message in capsys.readouterr().err


def test_synth_refuses_a_non_finite_snr(tmp_path):
    from EUSVoiceLabelLib.synth import synth_cohort

    with pytest.raises(ConfigError, match="finite number of dB"):
        synth_cohort(tmp_path / "c", patients=1, snr_db=math.nan, progress=False)
    assert not (tmp_path / "c").exists()


# =========================================================================== 10. smaller
def test_a_resumed_parallel_evaluation_gives_the_same_predictions(tmp_path):
    from test_parallel import cfg, fake_window_set

    from EUSVoiceLabelLib.train import evaluation as ev

    ws = fake_window_set(per_patient=3)
    out = tmp_path / "ev"
    ev.evaluate_cohort(ws, cfg(epochs=1), out, device="cpu", progress=False, workers=2)
    whole = (out / "predictions.csv").read_text()
    (out / "folds" / "patient03.json").unlink()  # interrupted before the last fold ended
    ev.evaluate_cohort(ws, cfg(epochs=1), out, device="cpu", progress=False, workers=2)
    assert (out / "predictions.csv").read_text() == whole


def test_text_that_a_spreadsheet_would_run_is_escaped_and_reads_back(tmp_path):
    from EUSVoiceLabelLib.data.mentions import Mention, read_mentions_csv, write_mentions_csv
    from EUSVoiceLabelLib.data.vocabulary import LabelSet
    from EUSVoiceLabelLib.train.evaluation import write_predictions_csv

    texts = ["=HYPERLINK(\"http://x\")", "+cmd|' /C calc'!A0", "-2+3", "@SUM(A1)",
             "'=already quoted", "'tis the duct", "-1.5", "plain"]
    path = tmp_path / "m.csv"
    write_mentions_csv(path, [Mention(1.0 + i, "pancreas", text=t) for i, t in enumerate(texts)])
    cells = [r[3] for r in list(csv.reader(path.open()))[1:]]
    assert all(not c.startswith(("=", "+", "@")) for c in cells)
    assert cells[2] == "'-2+3" and cells[6] == "-1.5" and cells[5] == "'tis the duct"
    assert cells[4] == "''=already quoted"
    assert [m.text for m in read_mentions_csv(path)] == texts
    assert [unescape_cell(c) for c in cells] == texts
    assert csv_text(["a"], [["\tx"]]) == "a\n'\tx\n"
    ws = types.SimpleNamespace(patients=["=cmd()"], times=np.array([1.0]),
                               labels=np.array([0]), labelset=LabelSet.default())
    write_predictions_csv(tmp_path / "p.csv", ws, np.array([0]), np.full((1, 5), 0.2))
    assert (tmp_path / "p.csv").read_text().splitlines()[1].startswith("'=cmd()")
