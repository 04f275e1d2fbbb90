"""The Slicer module's Slicer-free logic: review bookkeeping, editable tables, inputs, geometry,
synchronised-output timelines and background-training plumbing (EUSVoiceLabelLib.slicer.review and
EUSVoiceLabelLib.slicer.support)."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import mediafactory as mf
import numpy as np
import pytest
from test_reliability import tree_digest

from EUSVoiceLabelLib.core.errors import (ConfigError, MediaError, MentionsError, OutputError,
                                          ProcedureError)
from EUSVoiceLabelLib.data.mentions import Mention
from EUSVoiceLabelLib.data.vocabulary import LabelSet
from EUSVoiceLabelLib.slicer.review import (ACCEPTED, CORRECTED, MENTION_COLUMNS, PENDING,
                                            RESULT_COLUMNS, ReviewTable, mentions_from_rows,
                                            mentions_to_rows)
from EUSVoiceLabelLib.slicer.support import (CallbackFrameSource, apply_problems, cine_ijk_to_ras,
                                             crop_ijk_to_ras, master_item_at, overlay_timeline,
                                             parse_image_size, path_or_none,
                                             procedure_from_files, procedure_from_frames,
                                             recording_kind, sequence_times, split_log_lines,
                                             to_grey_uint8, train_arguments)

REPO = Path(__file__).resolve().parents[3]


def _windows():
    # index, time, end, spoken, predicted, confidence
    specs = [(0, 1.0, 2.0, "pancreas", "pancreas", 0.9),
             (1, 3.0, 4.0, "bile_duct", "portal_vein", 0.4),
             (2, 5.0, 6.0, "pancreatic_duct", "pancreatic_duct", 0.4),
             (3, 7.0, 8.0, None, "bile_duct", 0.7)]
    return [SimpleNamespace(index=i, time_s=t, end_s=e, spoken_label=s, predicted=p,
                            confidence=c) for i, t, e, s, p, c in specs]


# --------------------------------------------------------------------------- review
def test_review_accept_correct_and_labels_for_export_and_training():
    table = ReviewTable.from_windows(_windows(), LabelSet.default())
    assert table.counts() == {PENDING: 4, ACCEPTED: 0, CORRECTED: 0}
    table.accept(0)
    table.correct(1, "CBD")              # a synonym resolves to its id
    assert table.row(0).status == ACCEPTED and table.row(1).status == CORRECTED
    assert table.row(1).reviewed == "bile_duct"
    assert table.reviewed_labels() == {0: "pancreas", 1: "bile_duct"}
    # exports: reviewed label, else the prediction
    assert table.final_labels() == {0: "pancreas", 1: "bile_duct", 2: "pancreatic_duct",
                                    3: "bile_duct"}
    mentions = [Mention(1.0, "pancreas", 2.0), Mention(3.0, "bile_duct", 4.0),
                Mention(5.0, "pancreatic_duct"), Mention(7.0, "pancreas", source="auto")]
    table.correct(2, "portal_vein")
    train = table.training_mentions(mentions)
    # training: reviewed label, else the spoken one; corrections are marked as review; a
    # window nobody named and nobody reviewed (window 3) is left out
    assert [(m.time_s, m.label, m.source) for m in train] == [
        (1.0, "pancreas", "file"), (3.0, "bile_duct", "review"), (5.0, "portal_vein", "review")]
    table.accept(3)
    assert table.training_mentions(mentions)[-1].label == "bile_duct"
    table.clear(1)
    assert table.row(1).status == PENDING and 1 not in table.reviewed_labels()
    with pytest.raises(MentionsError, match="unknown label"):
        table.correct(0, "spleen")
    with pytest.raises(KeyError):
        table.accept(99)


def test_review_sort_by_confidence_keeps_windows_and_ties_in_time_order():
    table = ReviewTable.from_windows(_windows(), LabelSet.default())
    assert [r.window for r in table.sorted_rows("confidence")] == [1, 2, 3, 0]
    assert [r.window for r in table.sorted_rows("confidence", ascending=False)] == [0, 3, 1, 2]
    assert [r.window for r in table.sorted_rows("time")] == [0, 1, 2, 3]
    rows = table.to_rows("confidence")
    assert [int(r[0]) for r in rows] == [1, 2, 3, 0]
    assert all(len(r) == len(RESULT_COLUMNS) for r in rows)
    with pytest.raises(ValueError):
        table.sorted_rows("label")


def test_review_state_round_trips_through_table_rows_in_any_order():
    table = ReviewTable.from_windows(_windows(), LabelSet.default())
    table.accept(3)
    table.correct(0, "Portal vein")
    rows = table.to_rows("confidence", ascending=False)
    cols = list(RESULT_COLUMNS)
    # a saved scene may hold the columns in another order
    perm = cols[::-1]
    rows_perm = [[r[cols.index(c)] for c in perm] for r in rows]
    back = ReviewTable.from_rows(perm, rows_perm, LabelSet.default())
    assert back.reviewed_labels() == {0: "portal_vein", 3: "bile_duct"}
    assert back.row(3).status == ACCEPTED and back.row(0).status == CORRECTED
    assert back.row(3).spoken is None
    assert back.row(1).confidence == pytest.approx(0.4)
    with pytest.raises(MentionsError, match="results table"):
        ReviewTable.from_rows(["time_s", "label"], [["1", "pancreas"]])
    bad = [r[:] for r in rows]
    bad[0][cols.index("reviewed_label")] = "liver"
    with pytest.raises(MentionsError, match="row 1: unknown label 'liver'"):
        ReviewTable.from_rows(cols, bad)


# --------------------------------------------------------------------------- mentions table
def test_mentions_table_round_trip_and_row_errors():
    ms = [Mention(2.5, "bile_duct", None, "the CBD", 0.81234, "auto"),
          Mention(1.0, "pancreas", 1.6, "pancreas")]
    rows = mentions_to_rows(ms)
    assert rows[0][:3] == ["1.000", "pancreas", "1.600"]
    back = mentions_from_rows(MENTION_COLUMNS, rows)
    assert [(m.time_s, m.label, m.end_s, m.source) for m in back] == [
        (1.0, "pancreas", 1.6, "file"), (2.5, "bile_duct", None, "auto")]
    assert back[1].confidence == pytest.approx(0.8123)
    # the user edits: display name, blank row, reordered columns
    edited = mentions_from_rows(["label", "time"], [["Pancreatic duct", "4"], ["", ""]])
    assert edited == [Mention(4.0, "pancreatic_duct")]
    for rows_bad, msg in [([["x", "pancreas"]], "row 1: time_s 'x' is not a number"),
                          ([["1", "spleen"]], "row 1: unknown label 'spleen'"),
                          ([["1", "pancreas"], ["-2", "pancreas"]], "row 2: negative time"),
                          ([["3", "pancreas", "2"]], "row 1: end_s 2.0 is not after")]:
        with pytest.raises(MentionsError, match=msg):
            mentions_from_rows(["time_s", "label", "end_s"], rows_bad)
    with pytest.raises(MentionsError, match="no 'label' column"):
        mentions_from_rows(["time_s"], [["1"]])


# --------------------------------------------------------------------------- inputs
def test_path_or_none_treats_the_parameter_node_empty_path_as_unset():
    assert path_or_none(Path("")) is None and path_or_none(".") is None
    assert path_or_none(None) is None and path_or_none("  ") is None
    assert path_or_none("/a/b.pt") == Path("/a/b.pt")


def test_procedure_from_files_video_audio_offset_and_folder(tmp_path):
    proc_dir = mf.make_procedure(tmp_path / "p1", seconds=3.0, offset=0.5)
    assert recording_kind(proc_dir) == "procedure"
    assert recording_kind(proc_dir / "video.mp4") == "video"
    whole = procedure_from_files(proc_dir)
    assert whole.audio_offset_s == 0.5 and len(whole.mentions) == 2   # the folder's own files
    # separate files: the video + the audio + an offset given in the GUI
    proc = procedure_from_files(proc_dir / "video.mp4", audio=proc_dir / "audio.wav",
                                audio_offset_s=0.25, mentions=proc_dir / "mentions.csv")
    assert proc.audio_path == proc_dir / "audio.wav" and proc.audio_offset_s == 0.25
    assert [m.label for m in proc.mentions] == ["pancreas", "bile_duct"]
    assert proc.n_frames == 75 and proc.frame_size == (96, 64)
    frames = proc.frames(10, 12)
    assert [mf.frame_index_of(f.mean()) for f in frames] == [10, 11]
    assert proc.voice_window(proc.mentions[0]).shape == (48000,)
    # a frames folder at a given rate
    folder = mf.write_frames_folder(tmp_path / "frames", 10)
    assert recording_kind(folder) == "frames"
    fp = procedure_from_files(folder, audio=proc_dir / "audio.wav", fps=5)
    assert fp.duration_s == pytest.approx(2.0)
    with pytest.raises(ProcedureError, match="not found"):
        procedure_from_files(tmp_path / "missing.mp4")
    with pytest.raises(MediaError, match="audio file not found"):
        procedure_from_files(proc_dir / "video.mp4", audio=tmp_path / "none.wav")
    with pytest.raises(ConfigError, match="crop"):
        procedure_from_files(proc_dir / "video.mp4", crop=[0, 0, 500, 10])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ProcedureError, match="neither"):
        recording_kind(empty)


def test_procedure_from_frames_reads_lazily_and_crops(tmp_path):
    calls = []
    rgb = np.zeros((8, 1, 20, 30, 3), np.uint8)   # Slicer arrays: (slices, rows, cols, comp)
    for i in range(8):
        rgb[i] = mf.frame_level(i)

    def get(i):
        calls.append(i)
        return rgb[i]

    times = sequence_times([f"{i * 0.2:.3f}" for i in range(8)], "s")
    proc = procedure_from_frames(get, times, 30, 20, "cine", crop=[5, 2, 20, 10])
    assert calls == []                                   # nothing read up front
    assert proc.duration_s == pytest.approx(1.6) and proc.frame_size == (20, 10)
    win = proc.frames_window(0.4, 5)                     # 25 fps grid over 5 fps frames
    assert win.shape == (5, 10, 20)
    assert [mf.frame_index_of(f.mean()) for f in win] == [2, 2, 2, 3, 3]
    assert set(calls) == {2, 3}
    with pytest.raises(MediaError, match="no frames"):
        CallbackFrameSource(get, [], 30, 20)
    with pytest.raises(MediaError, match="not increasing"):
        CallbackFrameSource(get, [0.0, 0.2, 0.1], 30, 20)


def test_to_grey_uint8_handles_slicer_frame_layouts():
    assert to_grey_uint8(np.full((1, 4, 5), 7, np.uint8)).shape == (4, 5)
    rgb = np.zeros((1, 4, 5, 3), np.uint8)
    rgb[..., 1] = 200
    assert to_grey_uint8(rgb)[0, 0] == round(0.587 * 200)
    f = to_grey_uint8(np.linspace(-1, 1, 20, dtype=np.float32).reshape(4, 5))
    assert f.min() == 0 and f.max() == 255
    with pytest.raises(MediaError, match="first frame"):
        to_grey_uint8(np.zeros((4, 6), np.uint8), (4, 5))


def test_sequence_times_units_and_frame_numbers():
    assert sequence_times(["10.0", "10.5", "11.0"], "s") == pytest.approx([0, 0.5, 1.0])
    assert sequence_times(["0", "40", "80"], "ms") == pytest.approx([0, 0.04, 0.08])
    assert sequence_times(["0", "1", "2"], "", fps=10) == pytest.approx([0, 0.1, 0.2])
    assert sequence_times(["a", "b"], "s", fps=4) == pytest.approx([0, 0.25])


def test_apply_problems_lists_what_is_missing(tmp_path):
    model = tmp_path / "m.pt"
    assert len(apply_problems(False, False, None, 0)) == 4
    probs = apply_problems(True, True, model, 3)
    assert probs == [f"model checkpoint not found: {model}"]
    model.write_bytes(b"x")
    assert apply_problems(True, True, model, 3) == []


# --------------------------------------------------------------------------- geometry
def test_cine_geometry_and_crop_placement():
    m = cine_ijk_to_ras((0.5, 0.25))
    assert np.allclose(m, np.diag([-0.5, -0.25, 1, 1]))
    c = crop_ijk_to_ras(m, [15, 65, 690, 350])
    # pixel (0, 0) of the crop lies on pixel (15, 65) of the frame
    assert np.allclose(c @ [0, 0, 0, 1], m @ [15, 65, 0, 1])
    assert np.allclose(c @ [3, 4, 0, 1], m @ [18, 69, 0, 1])
    assert np.allclose(c[:3, :3], m[:3, :3])


# --------------------------------------------------------------------------- timelines
def test_overlay_timeline_shows_each_window_over_its_frames_only():
    times = np.arange(0, 10, 0.5)                       # 20 master items, 2 fps
    items = overlay_timeline([(1.0, 2.0), (5.0, 6.0)], times)
    assert [(i.item, i.window) for i in items] == [(0, None), (2, 0), (4, None), (10, 1),
                                                   (12, None)]

    # what the browser shows at each item: the closest previous sequence item
    def shown(k):
        return [i.window for i in items if i.item <= k][-1]

    assert [shown(k) for k in range(20)] == [None, None, 0, 0, None, None, None, None, None,
                                             None, 1, 1] + [None] * 8
    # overlapping windows: the later one wins, no blank item between them
    items = overlay_timeline([(0.0, 2.0), (1.5, 3.0)], times)
    assert [(i.item, i.window) for i in items] == [(0, 0), (3, 1), (6, None)]
    # a window running to the end needs no blank item; a window between frames gets one frame
    assert [(i.item, i.window) for i in overlay_timeline([(9.0, 12.0)], times)] == [
        (0, None), (18, 0)]
    assert [(i.item, i.window) for i in overlay_timeline([(1.1, 1.2)], times)] == [
        (0, None), (3, 0), (4, None)]
    assert overlay_timeline([(0, 1)], []) == []
    assert master_item_at(times, 1.0) == 2 and master_item_at(times, 99) == 19


# --------------------------------------------------------------------------- training
def test_train_arguments_and_validation(tmp_path):
    args = train_arguments(tmp_path, tmp_path / "m.pt", epochs=3, image_size="64x128",
                           device="cpu", batch_size=4)
    assert args[:4] == ["-m", "EUSVoiceLabelLib", "train", str(tmp_path)]
    assert args[args.index("--epochs") + 1] == "3"
    assert args[args.index("--image-size") + 1] == "64x128"
    assert args[args.index("--device") + 1] == "cpu"
    for kwargs, exc in [(dict(device="tpu"), ConfigError), (dict(epochs=0), ConfigError),
                        (dict(image_size="big"), ConfigError)]:
        with pytest.raises(exc):
            train_arguments(tmp_path, tmp_path / "m.pt", **kwargs)
    with pytest.raises(ConfigError, match="not a folder"):
        train_arguments(tmp_path, tmp_path)
    with pytest.raises(ProcedureError):
        train_arguments(tmp_path / "nope", tmp_path / "m.pt")
    assert parse_image_size(" 350 x 690") == (350, 690)


def test_train_arguments_are_accepted_by_the_real_command_line(tmp_path):
    """The background process runs `python -m EUSVoiceLabelLib train ...`: its parser must
    accept every argument the module builds."""
    args = train_arguments(tmp_path, tmp_path / "m.pt", epochs=2, image_size="32x64",
                           device="cpu", batch_size=2)
    from EUSVoiceLabelLib import cli

    parser = cli.build_parser() if hasattr(cli, "build_parser") else None
    if parser is None:
        out = subprocess.run([sys.executable] + args[:3] + ["--help"], capture_output=True,
                             text=True, cwd=REPO / "EUSVoiceLabel", timeout=60)
        assert out.returncode == 0, out.stderr
        for flag in [a for a in args if a.startswith("--")]:
            assert flag in out.stdout
    else:
        ns = parser.parse_args(args[2:])
        assert ns.epochs == 2 and ns.device == "cpu"


def test_split_log_lines_ends_lines_at_cr_and_lf():
    lines, rest = split_log_lines("a\rb\nc\r\nd")
    assert lines == ["a", "b", "c"] and rest == "d"


# --------------------------------------------------------------------------- whole pipeline
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """What the Slicer self-test does, without Slicer: tiny procedure -> tiny model ->
    labelling -> review."""
    import torch

    from EUSVoiceLabelLib.data.dataset import build_window_set
    from EUSVoiceLabelLib.labelling.run import LabelModel, label_procedure
    from EUSVoiceLabelLib.slicer.support import write_tiny_procedure
    from EUSVoiceLabelLib.train.config import TrainConfig
    from EUSVoiceLabelLib.train.checkpoints import preprocessing_settings, save_checkpoint
    from EUSVoiceLabelLib.train.loop import train_model

    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("tiny")
    write_tiny_procedure(root / "cohort" / "p1", seed=1)
    write_tiny_procedure(root / "cohort" / "p2", seed=2, labels=("bile_duct", "pancreas"))
    # 5 frames per window and a narrow network keep this a few seconds on 2 CPU cores
    ws = build_window_set(root / "cohort", image_size=(32, 48), frames=5, progress=False,
                          cache_dir=root / "cache")
    cfg = TrainConfig(epochs=1, batch_size=4, image_size=(32, 48), frames=5, width=0.0625,
                      lr=1e-3)
    res = train_model(ws, cfg, len(ws.labelset), device="cpu", progress=False)
    save_checkpoint(root / "model.pt", res, ws.labelset, preprocessing_settings(ws, cfg))
    model = LabelModel.load(root / "model.pt", device="cpu")
    proc = procedure_from_files(root / "cohort" / "p1")
    result = label_procedure(proc, model)
    return SimpleNamespace(root=root, proc=proc, model=model, result=result)


def test_tiny_procedure_pipeline_review_export_and_training_data(tiny_run):
    from EUSVoiceLabelLib.data.procedure import load_procedure
    from EUSVoiceLabelLib.slicer.export import export_reviewed
    from EUSVoiceLabelLib.slicer.support import write_training_procedure

    result, proc = tiny_run.result, tiny_run.proc
    assert len(result.windows) == 4 and proc.frame_size == (96, 64)
    assert all(w.cam is not None and w.cam.shape == (64, 96) for w in result.windows)
    table = ReviewTable.from_windows(result.windows, result.labelset)
    assert [r.spoken for r in table.rows] == ["pancreas", "bile_duct", "pancreas", "bile_duct"]
    # overlay items for the 25 fps master grid of the loaded procedure
    assert all(len(w.frame_indices) == 5 for w in result.windows)
    items = overlay_timeline([(w.time_s, w.time_s + 0.2) for w in result.windows],
                             proc.frame_times)
    assert [i.window for i in items if i.window is not None] == [0, 1, 2, 3]
    table.correct(1, "portal_vein")
    table.accept(0)
    out = tiny_run.root / "out"
    # what the module's exportResults does
    files = export_reviewed(result, table.reviewed_labels(), out, tiny_run.root / "dataset")
    assert {"labels.csv", "frames.seq.nrrd", "cam.seq.nrrd", "landmarks.mrk.json"} <= set(files)
    reviewed = [r["reviewed_label"] for r in csv.DictReader((out / "labels.csv").open())]
    assert reviewed == [table.row(0).predicted, "portal_vein", "", ""]
    text = files["dataset labels.csv"].read_text()
    assert "images/portal_vein/" in text          # the correction reached the export
    # corrections go into training: a cohort folder the train command reads
    mentions = [w.mention for w in result.windows]
    dest = write_training_procedure(proc, table.training_mentions(mentions),
                                    tiny_run.root / "train_cohort", "p1_reviewed")
    back = load_procedure(dest)
    assert [m.label for m in back.mentions] == [table.row(0).predicted, "portal_vein",
                                                "pancreas", "bile_duct"]
    assert back.mentions[1].source == "review"
    assert back.n_frames == proc.n_frames and back.frame_size == proc.frame_size
    assert np.array_equal(back.frames(10, 12), proc.frames(10, 12))
    assert np.allclose(back.voice_window(back.mentions[0]), proc.voice_window(mentions[0]),
                       atol=1e-6)
    with pytest.raises(ProcedureError, match="no labelled windows"):
        write_training_procedure(proc, [], tiny_run.root / "train_cohort")


def test_slicer_export_and_add_to_cohort_follow_the_output_rule(tiny_run, tmp_path):
    """The module's export and "add to cohort" refuse what the command line refuses (issue
    19), before anything is written, and replace only their own earlier output."""
    from EUSVoiceLabelLib.slicer.export import export_reviewed
    from EUSVoiceLabelLib.slicer.support import write_training_procedure

    result, proc = tiny_run.result, tiny_run.proc
    cohort = tiny_run.root / "cohort"
    before = tree_digest(cohort)
    out = tmp_path / "out"
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine")
    for labels, dataset, message in (
            (cohort / "p2", None, "is a procedure folder"),
            (cohort, None, "contains the input"),
            (cohort / "p1" / "labels", None, "lies inside the input"),
            (theirs, None, "is not empty"),
            (out, out, "is an input of this run"),            # the dataset over the labels
            (out, out / "dataset", "lies inside the input"),
            (out, cohort / "p1" / "dataset", "lies inside the input"),
            (out, theirs, "is not empty")):
        with pytest.raises(OutputError, match=message):
            export_reviewed(result, {0: "portal_vein"}, labels, dataset)
        assert not (out / "labels.csv").exists()  # refused before anything was written
    assert tree_digest(cohort) == before and (theirs / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in theirs.iterdir()) == ["notes.txt"]
    for _ in range(2):  # our own earlier export is replaced
        files = export_reviewed(result, {0: "portal_vein"}, out, tmp_path / "ds")
        assert "images/portal_vein/" in files["dataset labels.csv"].read_text()
    # add to cohort: never over a procedure it did not write, never inside the procedure
    mentions = [w.mention for w in result.windows]
    with pytest.raises(OutputError, match="is a procedure folder"):
        write_training_procedure(proc, mentions, cohort, "p2")
    with pytest.raises(OutputError, match="lies inside the input"):
        write_training_procedure(proc, mentions, cohort / "p1", "again")
    assert tree_digest(cohort) == before
    for _ in range(2):  # its own earlier procedure is replaced
        dest = write_training_procedure(proc, mentions, tmp_path / "cohort2", "p1")
    assert sorted(p.name for p in (tmp_path / "cohort2").iterdir()
                  if not p.name.startswith(".")) == ["p1"]
    assert dest.joinpath("mentions.csv").is_file()


def test_training_procedure_from_a_scene_sequence_streams_frames(tiny_run, tmp_path):
    from EUSVoiceLabelLib.data.procedure import load_procedure
    from EUSVoiceLabelLib.slicer.support import write_training_procedure

    src = tiny_run.proc
    frames = src.frames(0, src.n_frames)
    proc = procedure_from_frames(lambda i: frames[i][None], src.frame_times, 96, 64, "cine",
                                 audio=src.audio_path, audio_offset_s=0.0,
                                 mentions=src.mentions)
    dest = write_training_procedure(proc, proc.mentions, tmp_path, "from scene")
    assert dest.name == "from_scene"
    back = load_procedure(dest)
    assert back.n_frames == len(frames)
    assert np.array_equal(back.frames(20, 23), frames[20:23])


def test_requirements_file_is_checkable():
    from EUSVoiceLabelLib.slicer.support import missing_requirements, read_requirements

    reqs = read_requirements(REPO / "EUSVoiceLabel" / "Resources" / "requirements.txt")
    assert reqs and not any(r.split(">")[0].split("=")[0].strip() in ("torch", "torchvision")
                            for r in reqs), "torch comes from the PyTorch extension"
    # this test environment has the package's dependencies installed
    assert missing_requirements(reqs) == []
    assert missing_requirements(["surely-not-installed-pkg>=1"]) == ["surely-not-installed-pkg>=1"]
    assert missing_requirements(["numpy>=999"]) == ["numpy>=999"]
    # Platform-specific requirements count only where their marker applies.
    elsewhere = "surely-not-installed-pkg>=1; sys_platform == 'no-such-platform'"
    here = "surely-not-installed-pkg>=1; python_version >= '3'"
    assert missing_requirements([elsewhere, here]) == [here]


def test_labels_csv_with_review_adds_the_column():
    from EUSVoiceLabelLib.slicer.review import labels_csv_with_review

    text = "window,time_s,predicted_label\n0,1.0,pancreas\n1,2.0,bile_duct\n"
    out = labels_csv_with_review(text, {1: "portal_vein"})
    assert out.splitlines() == ["window,time_s,predicted_label,reviewed_label",
                                "0,1.0,pancreas,", "1,2.0,bile_duct,portal_vein"]
    assert labels_csv_with_review(out, {}).splitlines()[2] == "1,2.0,bile_duct,"


def test_run_review_reads_typed_labels_validates_and_names_each_run_once():
    from EUSVoiceLabelLib.labelling.runs import Run, runs_of
    from EUSVoiceLabelLib.slicer.review import RunReview

    rows = [{"frame_index": f, "label": lab, "source": src, "confidence": 0.5}
            for f, lab, src in [(0, "pancreas", "spoken window"), (1, "pancreas", "spoken window"),
                                (2, "none", "inferred"), (3, "bile_duct", "inferred"),
                                (4, "bile_duct", "inferred")]]
    runs = runs_of(rows)
    assert [(r.start_frame, r.end_frame, r.label) for r in runs] == [
        (0, 1, "pancreas"), (2, 2, "none"), (3, 4, "bile_duct")]
    labelset = LabelSet.default()
    review = RunReview(runs, 25.0, 1, tuple(labelset.ids))
    # A label typed into the table's reviewed_label column counts as a review.
    columns = ["run", "label", "reviewed_label"]
    typed = review.with_table(columns, [["0", "pancreas", ""], ["2", "bile_duct", "portal_vein"]])
    assert typed.reviewed == {2: "portal_vein"} and review.reviewed == {}
    typed.review([0])  # accept: the run keeps its own label
    typed.review([1], "none")
    assert typed.reviewed == {0: "pancreas", 1: "none", 2: "portal_vein"}
    status = [r[-1] for r in typed.table_rows()]
    assert status == ["accepted", "accepted", "corrected"]  # run 1 was labelled none already
    with pytest.raises(ValueError, match="unknown label"):
        typed.review([0], "liver")
    with pytest.raises(ValueError, match="no run 3"):
        typed.review([3])
    relabelled = typed.frame_rows(rows)
    assert [r["label"] for r in relabelled] == ["pancreas", "pancreas", "none", "portal_vein",
                                                "portal_vein"]
    assert all(r["source"] == "reviewed" for r in relabelled) and rows[3]["label"] == "bile_duct"
    # The runs start at 0, 0.08 and 0.12 s: on items at those times each has its own item; on
    # items at 0, 0.04 and 0.12 s run 1 (shown from the first item at or after its start)
    # shares item 2 with run 2 and is left out; one item shows only the first run's label.
    items = typed.text_items([0.0, 0.08, 0.12], labelset)
    assert [i for i, _ in items] == [0, 1, 2]
    assert [i for i, _ in typed.text_items([0.0, 0.04, 0.12], labelset)] == [0, 2]
    assert items[0][1] == "Pancreas 0.50 (reviewed)" and items[1][1].startswith("none")
    assert typed.text_items([0.0], labelset) == [(0, "Pancreas 0.50 (reviewed)")]
    assert review.text_items([0.0], labelset) == [(0, "Pancreas 0.50 (spoken window)")]
    assert isinstance(runs[0], Run) and typed.start_s(2) == pytest.approx(0.12)


def test_anchors_take_a_corrected_label_as_certain():
    from EUSVoiceLabelLib.labelling.whole import anchors_from_windows

    ids = LabelSet.default().ids

    def window(index, label):
        probs = np.full(len(ids), 0.1)
        probs[ids.index(label)] = 0.6
        return SimpleNamespace(index=index, frame_indices=[index], label=label,
                               label_confidence=0.6, fused=None, probabilities=probs,
                               spoken_label=label, predicted=label, confidence=0.6,
                               needs_review=False)

    anchors = anchors_from_windows([window(0, ids[0]), window(1, ids[1])],
                                   {0: ids[0], 1: ids[2]}, ids)
    assert anchors[0].label == ids[0] and anchors[0].confidence == pytest.approx(0.6)
    assert anchors[1].label == ids[2] and anchors[1].confidence == 1.0
    assert anchors[1].probabilities.tolist() == [float(i == ids[2]) for i in ids]
