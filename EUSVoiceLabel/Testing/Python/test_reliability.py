"""Reliability and security: untrusted checkpoints, interruptions, failing disks, locked and
atomic outputs, untouched inputs, determinism.

The fault table in docs/reliability.md points at the tests here (and at test_fuzz.py for the
fuzzing of every loader).
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import mediafactory as mf
import numpy as np
import pytest
import torch

from EUSVoiceLabelLib.cli import main as cli
from EUSVoiceLabelLib.core.errors import CheckpointError, OutputError, TrainingError

HERE = Path(__file__).resolve().parent
DEV = ["--device", "cpu", "--quiet"]
TINY = ["--image-size", "32x48", "--width", "0.125", *DEV]


# --------------------------------------------------------------------------- helpers
def tiny_checkpoint(path: Path, labelset=None, variant: str = "proposed",
                    frames: int = 3) -> Path:
    """A real (untrained) checkpoint of a tiny network, written by save_checkpoint."""
    from EUSVoiceLabelLib.nn.network import build_model
    from EUSVoiceLabelLib.train.config import TrainConfig
    from EUSVoiceLabelLib.train.loop import TrainResult
    from EUSVoiceLabelLib.train.checkpoints import save_checkpoint
    from EUSVoiceLabelLib.data.vocabulary import LabelSet

    labelset = labelset or LabelSet.default()
    cfg = TrainConfig(variant=variant, epochs=0, image_size=(32, 48), frames=frames,
                      width=0.125)
    model = build_model(variant, len(labelset), frames, width=0.125)
    result = TrainResult(model, cfg, [1.0] * len(labelset))
    save_checkpoint(path, result, labelset, {"image_size": [32, 48], "frames": frames})
    return path


def tree_digest(folder: Path) -> str:
    """Names, bytes and modification times of everything under ``folder``."""
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        st = p.stat()
        h.update(f"{p.relative_to(folder)}|{st.st_mtime_ns}".encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


class Windows:
    """Tiny in-memory windows (images, voices, labels) in the shape train_model expects."""

    def __init__(self, n: int = 8, frames: int = 3, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.labels = np.arange(n) % 3
        self.images = rng.integers(0, 255, (n, frames, 32, 48), dtype=np.uint8)
        self.images[:, :, :8, :8] = (self.labels * 100)[:, None, None, None]
        self.voices = rng.normal(size=(n, 1024, 66)).astype(np.float32)


def cfg(epochs: int = 3, **kw):
    from EUSVoiceLabelLib.train.config import TrainConfig
    return TrainConfig(epochs=epochs, image_size=(32, 48), frames=3, width=0.125,
                       batch_size=4, lr=1e-3, **kw)


def weights_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """Three tiny patients with two mentions each; the path has spaces and non-ASCII."""
    root = tmp_path_factory.mktemp("reliability") / "cohort ü"
    for i in range(3):
        mf.make_procedure(root / f"patient {i + 1}", seconds=3.0)
    return root


# =========================================================================== untrusted files
class Payload:
    """Unpickling this creates ``marker``: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _malicious_files(folder: Path, marker: Path) -> list[Path]:
    from EUSVoiceLabelLib.train.checkpoints import CHECKPOINT_FORMAT, FORMAT_VERSION

    zipped = folder / "evil zip.pt"  # torch's own zip format, a checkpoint-looking dict
    torch.save({"format": CHECKPOINT_FORMAT, "format_version": FORMAT_VERSION,
                "model": Payload(marker)}, zipped)
    legacy = folder / "evil legacy.pt"  # a plain pickle stream
    legacy.write_bytes(pickle.dumps({"format": CHECKPOINT_FORMAT, "x": Payload(marker)}))
    return [zipped, legacy]


def test_malicious_pickle_checkpoint_is_refused_without_running_it(tmp_path, cohort, capsys):
    from EUSVoiceLabelLib.train.checkpoints import load_checkpoint
    from EUSVoiceLabelLib.train.loop import train_model

    marker = tmp_path / "pwned"
    files = _malicious_files(tmp_path, marker)
    # The payload is real: plain unpickling runs it.
    pickle.loads(files[1].read_bytes())
    assert marker.exists()
    marker.unlink()
    from EUSVoiceLabelLib.nn.network import load_state_dict_file
    from EUSVoiceLabelLib.nn.keyword import read_keyword_checkpoint

    for f in files:
        with pytest.raises(CheckpointError, match="cannot read the checkpoint"):
            load_checkpoint(f)
        # the other weight files users hand in: ImageNet weights and keyword networks
        with pytest.raises(CheckpointError, match="cannot read"):
            load_state_dict_file(f, "VGG16")
        with pytest.raises(CheckpointError, match="cannot read"):
            read_keyword_checkpoint(f)
        assert not marker.exists()
        rc = cli(["label", str(cohort / "patient 1"), "--model", str(f), "--out",
                  str(tmp_path / "out"), "--no-cam", *DEV])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and "cannot read the checkpoint" in err[-1] and not marker.exists()
    # A malicious resume file is not applied either: training starts over.
    state = tmp_path / "run.resume.pt"
    state.write_bytes(files[0].read_bytes())
    res = train_model(Windows(), cfg(1), 3, device="cpu", progress=False, state_path=state)
    assert res.resumed_from_epoch == 0 and not marker.exists()


def test_damaged_checkpoint_is_refused(tmp_path):
    """One changed weight or one changed label in a checkpoint is caught by its checksum
    (torch's zip reader does not check CRCs: a flipped byte would load silently)."""
    from EUSVoiceLabelLib.train.checkpoints import load_checkpoint

    path = tiny_checkpoint(tmp_path / "model.pt")
    good = torch.load(path, weights_only=True)

    def relabel(data):
        data["labelset"]["labels"][0]["id"] = "spleen"
    _assert_damage_is_refused(path, "model", relabel, load_checkpoint)
    # a checkpoint written before checksums existed still loads
    good.pop("content_sha256")
    torch.save(good, tmp_path / "old.pt")
    assert load_checkpoint(tmp_path / "old.pt").config.variant == "proposed"


def test_damaged_keyword_checkpoint_is_refused(tmp_path):
    """The pretrained keyword network (voice_pretrained variant) carries the same checksum."""
    from EUSVoiceLabelLib.train.voice_pretrain import COMMAND_WORDS
    from EUSVoiceLabelLib.nn.keyword import KeywordNet, load_keyword_model, save_keyword_checkpoint

    path = tmp_path / "keyword.pt"
    torch.manual_seed(0)
    net = KeywordNet(len(COMMAND_WORDS))
    save_keyword_checkpoint(path, net, COMMAND_WORDS, {"epochs": 1})
    loaded = load_keyword_model(path)
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(),
                                                 loaded.state_dict().values()))

    def reword(data):
        data["words"][0] = "spleen"
    _assert_damage_is_refused(path, "state_dict", reword, load_keyword_model)


def _assert_damage_is_refused(path, weights_key, damage_metadata, load) -> None:
    """A changed weight, and a changed piece of metadata, make ``load`` refuse the file as
    damaged."""
    for damage in ("weight", "metadata"):
        data = torch.load(path, weights_only=True)
        if damage == "weight":
            name = next(k for k, v in data[weights_key].items() if v.is_floating_point())
            data[weights_key][name].view(-1)[0] += 1e-3
        else:
            damage_metadata(data)
        bad = path.with_name(f"bad {damage}.pt")
        torch.save(data, bad)
        with pytest.raises(CheckpointError, match="damaged"):
            load(bad)


# =========================================================================== training faults
def _interrupt_at(monkeypatch, calls: set[int], signals: int = 1) -> None:
    """Deliver a real SIGINT (``signals`` of them) during the given loss computations."""
    from EUSVoiceLabelLib.train import loop as training

    real = training.weighted_loss
    count = {"n": 0}

    def loss(*a, **kw):
        count["n"] += 1
        if count["n"] in calls:
            for _ in range(signals):
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.01)  # let the handler run before the next signal
        return real(*a, **kw)

    monkeypatch.setattr(training, "weighted_loss", loss)


def test_ctrl_c_saves_the_exact_position_and_resume_matches_an_uninterrupted_run(
        tmp_path, monkeypatch):
    from EUSVoiceLabelLib.train.loop import TrainingInterrupted, train_model

    data = Windows()
    full = train_model(data, cfg(), 3, device="cpu", progress=False)
    state = tmp_path / "run.resume.pt"
    # 8 windows in batches of 4: 2 batches per epoch.  First stop: after the last batch of
    # epoch 2 (the edge case of a finished epoch whose end was not reached).
    _interrupt_at(monkeypatch, {4})
    with pytest.raises(TrainingInterrupted, match="progress saved in .*run.resume.pt") as exc:
        train_model(data, cfg(), 3, device="cpu", progress=False, state_path=state)
    assert exc.value.state_path == state and state.is_file()
    monkeypatch.undo()
    _interrupt_at(monkeypatch, {1})  # resumed: epoch 3, batch 1, inside an epoch
    with pytest.raises(TrainingInterrupted):
        train_model(data, cfg(), 3, device="cpu", progress=False, state_path=state)
    monkeypatch.undo()
    resumed = train_model(data, cfg(), 3, device="cpu", progress=False, state_path=state)
    assert resumed.resumed_from_epoch == 2
    assert weights_equal(full.model, resumed.model)  # bit-identical on CPU
    assert [h["loss"] for h in full.history] == [h["loss"] for h in resumed.history]
    assert not state.exists()  # removed when training ends


def test_second_ctrl_c_stops_at_once_and_keeps_the_previous_resume_file(tmp_path, monkeypatch):
    from EUSVoiceLabelLib.train.loop import TrainingInterrupted, train_model

    data, state = Windows(), tmp_path / "run.resume.pt"
    _interrupt_at(monkeypatch, {2})
    with pytest.raises(TrainingInterrupted):
        train_model(data, cfg(), 3, device="cpu", progress=False, state_path=state)
    before = state.read_bytes()
    monkeypatch.undo()
    _interrupt_at(monkeypatch, {1}, signals=2)  # resumed run, hit twice
    with pytest.raises(KeyboardInterrupt) as exc:
        train_model(data, cfg(), 3, device="cpu", progress=False, state_path=state)
    assert not isinstance(exc.value, TrainingInterrupted)
    assert state.read_bytes() == before
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored


def test_ctrl_c_on_the_train_command_exits_130_and_the_rerun_resumes(tmp_path, cohort,
                                                                     monkeypatch, capsys,
                                                                     caplog):
    """A real SIGINT delivered to ``eusvoicelabel train`` (its main(), in this process)."""
    from EUSVoiceLabelLib.train.loop import _read_state

    out = tmp_path / "model.pt"
    state = tmp_path / "model.pt.resume.pt"
    args = ["train", str(cohort), "--out", str(out), "--epochs", "4", "--frames", "3",
            "--cache", str(tmp_path / "cache"), *TINY]
    _interrupt_at(monkeypatch, {2})  # 6 windows, batch 8: one batch per epoch -> epoch 2
    assert cli(args) == 130
    err = capsys.readouterr().err
    assert "eusvoicelabel train: interrupted" in err
    assert "progress saved in" in err and "run the same command again to resume" in err
    assert state.is_file() and not out.exists()
    saved = _read_state(state)
    assert (saved["epoch"], saved["batch"]) == (1, 1)
    monkeypatch.undo()
    with caplog.at_level(logging.INFO):
        assert cli(args) == 0  # the same command again resumes and finishes
    assert "resuming train from epoch 1" in caplog.text
    assert out.is_file() and not state.exists()


def _nan_loss_at(monkeypatch, call: int) -> None:
    from EUSVoiceLabelLib.train import loop as training

    real = training.weighted_loss
    count = {"n": 0}

    def loss(*a, **kw):
        count["n"] += 1
        value = real(*a, **kw)
        return value * float("nan") if count["n"] >= call else value

    monkeypatch.setattr(training, "weighted_loss", loss)


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_state(tmp_path,
                                                                           monkeypatch):
    from EUSVoiceLabelLib.train.loop import _read_state, train_model

    data, state = Windows(), tmp_path / "run.resume.pt"
    _nan_loss_at(monkeypatch, 6)  # epoch 3, after the state of epoch 2 was written
    with pytest.raises(TrainingError, match=r"loss became nan at epoch 3, batch 2.*last good "
                                            r"resume state is kept") as exc:
        train_model(data, cfg(), 3, device="cpu", progress=False, state_path=state,
                    checkpoint_every=1)
    assert "lower --lr" in str(exc.value)
    kept = _read_state(state)
    assert kept["epoch"] == 2 and kept["batch"] == 0
    assert all(torch.isfinite(v).all() for v in kept["model"].values() if v.is_floating_point())


def test_nan_in_the_inputs_stops_training(tmp_path):
    from EUSVoiceLabelLib.train.loop import train_model

    data = Windows()
    data.voices[3, 10, 10] = np.nan
    with pytest.raises(TrainingError, match="loss became nan"):
        train_model(data, cfg(1), 3, device="cpu", progress=False)


def _failing_torch_save(monkeypatch, when=lambda path: True, error=None):
    from EUSVoiceLabelLib.train import loop as training

    real = torch.save

    def save(obj, f, *a, **kw):
        if when(Path(f.name)):
            f.write(b"PK\x03\x04 partial")  # half a file, then the disk fails
            raise error or OSError(errno.EIO, "Input/output error")
        return real(obj, f, *a, **kw)

    monkeypatch.setattr(training.torch, "save", save)


def test_failing_resume_write_is_reported_and_training_goes_on(tmp_path, monkeypatch, caplog):
    from EUSVoiceLabelLib.train.loop import _read_state, train_model

    data, state = Windows(), tmp_path / "run.resume.pt"
    calls = {"n": 0}

    def second_and_later(path):
        calls["n"] += 1
        return calls["n"] >= 2

    # torch's zip writer reports a full disk as RuntimeError: that is covered too.
    _failing_torch_save(monkeypatch, second_and_later, RuntimeError("file write failed"))

    def stop_after_3(epoch, stats):
        if epoch == 3:
            raise RuntimeError("stop here")

    with caplog.at_level(logging.WARNING):
        with pytest.raises(RuntimeError, match="stop here"):
            train_model(data, cfg(4), 3, device="cpu", progress=False, state_path=state,
                        checkpoint_every=1, on_epoch_end=stop_after_3)
    assert "cannot save the resume state" in caplog.text and "previous resume file is kept" \
        in caplog.text
    assert _read_state(state)["epoch"] == 1  # the first save, intact
    assert [p.name for p in tmp_path.iterdir()] == ["run.resume.pt"]  # no temporary litter


def test_failing_checkpoint_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    from EUSVoiceLabelLib.train.checkpoints import load_checkpoint

    path = tiny_checkpoint(tmp_path / "model.pt")
    before = path.read_bytes()
    for error in (OSError(errno.ENOSPC, "No space left on device"), OSError(errno.EIO, "I/O"),
                  RuntimeError("PytorchStreamWriter failed writing file data/0")):
        monkeypatch.undo()
        _failing_torch_save(monkeypatch, error=error)
        with pytest.raises(OutputError, match="model.pt: cannot write"):
            tiny_checkpoint(path, variant="image_only")
        assert path.read_bytes() == before
        assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]
    monkeypatch.undo()
    assert load_checkpoint(path).config.variant == "proposed"


def test_train_command_with_a_failing_disk_loses_no_training(tmp_path, cohort, monkeypatch,
                                                             capsys):
    """The final checkpoint write fails: the weights stay in the resume file and the same
    command again writes the model without training again."""
    from EUSVoiceLabelLib.train import loop as training

    out = tmp_path / "model.pt"
    args = ["train", str(cohort), "--out", str(out), "--epochs", "2", "--frames", "3",
            "--cache", str(tmp_path / "cache"), *TINY]
    _failing_torch_save(monkeypatch, lambda p: p.name.startswith(".model.pt.") and
                        "resume" not in p.name)
    assert cli(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "model.pt: cannot write" in err[-1] and "trained weights are kept in" in err[-1]
    assert not out.exists() and (tmp_path / "model.pt.resume.pt").is_file()
    monkeypatch.undo()
    calls = {"epochs": 0}
    real_run = training._run_epoch
    monkeypatch.setattr(training, "_run_epoch",
                        lambda *a, **k: calls.__setitem__("epochs", calls["epochs"] + 1)
                        or real_run(*a, **k))
    assert cli(args) == 0
    assert calls["epochs"] == 0  # nothing retrained
    assert out.is_file() and not (tmp_path / "model.pt.resume.pt").exists()


_SLOW_WRITER = r"""
import sys, time, torch
sys.path.insert(0, sys.argv[2])
from test_reliability import tiny_checkpoint
real = torch.save
def slow(obj, f, *a, **k):
    f.write(b"PK\x03\x04 half a checkpoint"); f.flush()
    print("writing", flush=True)
    time.sleep(60)
torch.save = slow
tiny_checkpoint(__import__("pathlib").Path(sys.argv[1]), variant="image_only")
"""


def test_kill_during_checkpoint_write_leaves_the_previous_checkpoint(tmp_path):
    from EUSVoiceLabelLib.data.outputs import claim_output
    from EUSVoiceLabelLib.train.checkpoints import CHECKPOINT, load_checkpoint

    path = tiny_checkpoint(tmp_path / "model.pt")
    before = path.read_bytes()
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_WRITER, str(path), str(HERE)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    proc.kill()  # SIGKILL: no cleanup code runs
    proc.wait()
    assert path.read_bytes() == before
    assert load_checkpoint(path).config.variant == "proposed"
    litter = [p for p in tmp_path.iterdir() if p.name != "model.pt"]
    assert litter and all(p.name.startswith(".model.pt.") for p in litter)
    claim_output(path, CHECKPOINT)  # the next run on this output sweeps the leftovers
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


# =========================================================================== outputs
_HOLDER = r"""
import sys, time
from EUSVoiceLabelLib.core.outputlock import output_lock
with output_lock(sys.argv[1], "eusvoicelabel export"):
    print("locked", flush=True)
    time.sleep(120)
"""


def test_two_runs_on_one_output_folder_do_not_interleave(tmp_path, cohort, capsys):
    out = tmp_path / "export out"
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(out)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        rc = cli(["export", str(cohort), "--out", str(out), "--every", "25", "--quiet"])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1
        assert "is being written by another eusvoicelabel run" in err[0]
        assert f"pid {holder.pid}" in err[0] and "export out" in err[0]
        assert not out.exists()  # nothing written by the refused run
    finally:
        holder.kill()  # killed, not released: the OS drops the lock with the process
        holder.wait()
    assert cli(["export", str(cohort), "--out", str(out), "--every", "25", "--quiet"]) == 0
    assert (out / "labels.csv").is_file()
    assert not any(p.name.endswith(".lock") for p in tmp_path.iterdir())  # lock file removed
    assert not any(".part" in p.name for p in out.rglob("*"))  # only finished files


_BRIEF_HOLDER = r"""
import sys, time
from EUSVoiceLabelLib.core.outputlock import output_lock
with output_lock(sys.argv[1], "eusvoicelabel train"):
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def test_runs_sharing_the_window_cache_wait_for_each_others_claim(tmp_path, cohort):
    """Two runs on one cohort load its window cache at once: the second waits for the first's
    claim instead of failing, and keeps the entry the first is still writing."""
    import time

    from EUSVoiceLabelLib.data.dataset import build_window_set

    cache = tmp_path / "cache"
    build_window_set(cohort, image_size=(16, 24), cache_dir=cache, progress=False)
    in_progress = cache / ".p1-abc.npz.k2x9q7zt.part.npz"  # another run's write, by name
    in_progress.write_bytes(b"half an entry")
    killed = cache / ".p1-old.npz.a8b7c6d5.part.npz"  # a killed run's, two hours ago
    killed.write_bytes(b"left over")
    two_hours_ago = time.time() - 7200
    os.utime(killed, (two_hours_ago, two_hours_ago))
    holder = subprocess.Popen([sys.executable, "-c", _BRIEF_HOLDER, str(cache), "1.5"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        started = time.monotonic()
        ws = build_window_set(cohort, image_size=(16, 24), cache_dir=cache, progress=False)
        assert time.monotonic() - started > 0.5  # it waited for the holder's claim
    finally:
        holder.kill()
        holder.wait()
    assert len(ws) > 0
    assert in_progress.exists() and not killed.exists()


def test_output_lock_is_reentrant_and_lives_beside_the_output(tmp_path):
    from EUSVoiceLabelLib.core.outputlock import lock_path_for, output_lock

    out = tmp_path / "out"
    with output_lock(out, "a") as lock:
        assert lock == lock_path_for(out) == tmp_path / ".out.lock" and lock.is_file()
        with output_lock(out, "b"):  # the CLI and the library may both take it
            pass
        assert lock.is_file()
        code = "from EUSVoiceLabelLib.core.outputlock import output_lock as o\n" \
               f"with o({str(out)!r}, 'x'): pass"
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert r.returncode != 0 and "OutputError" in r.stderr
    assert not lock.exists()
    with output_lock(None):  # commands without an output
        pass


# =========================================================================== determinism
def test_same_command_and_seed_give_identical_outputs_and_inputs_are_untouched(tmp_path,
                                                                               cohort):
    """evaluate twice -> byte-identical metrics.json; train twice and label with each model ->
    identical weights and byte-identical labels.csv.  Meanwhile no input is opened for writing
    and the input tree (names, bytes, modification times) stays the same."""
    from EUSVoiceLabelLib.train.checkpoints import load_checkpoint

    writes: list[str] = []
    watched = {"root": str(cohort)}
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

    def audit(event, args):
        if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
            mode, flags = args[1], args[2]
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or \
                (isinstance(flags, int) and flags & write_flags)
            if writing and os.path.abspath(os.fsdecode(args[0])).startswith(watched["root"]):
                writes.append(os.fsdecode(args[0]))

    sys.addaudithook(audit)  # hooks cannot be removed: switched off through ``watched``
    before = tree_digest(cohort)
    common = ["--epochs", "1", "--frames", "3", "--seed", "7", "--cache",
              str(tmp_path / "cache"), *TINY]
    runs = []
    try:
        for k in range(2):
            ev, model, lab = tmp_path / f"ev{k}", tmp_path / f"m{k}.pt", tmp_path / f"lab{k}"
            assert cli(["evaluate", str(cohort), "--out", str(ev), *common]) == 0
            assert cli(["train", str(cohort), "--out", str(model), *common]) == 0
            assert cli(["label", str(cohort / "patient 3"), "--model", str(model), "--out",
                        str(lab), "--seed", "7", *DEV]) == 0
            runs.append((ev, model, lab))
        assert cli(["export", str(cohort), "--out", str(tmp_path / "ex"), "--every", "25",
                    "--quiet"]) == 0
    finally:
        watched["root"] = "\0"
    assert writes == []
    assert tree_digest(cohort) == before
    (ev0, m0, lab0), (ev1, m1, lab1) = runs
    assert (ev0 / "metrics.json").read_bytes() == (ev1 / "metrics.json").read_bytes()
    assert (ev0 / "predictions.csv").read_bytes() == (ev1 / "predictions.csv").read_bytes()
    assert weights_equal(load_checkpoint(m0).model, load_checkpoint(m1).model)
    assert (lab0 / "labels.csv").read_bytes() == (lab1 / "labels.csv").read_bytes()
    assert b"wall_time" not in (ev0 / "metrics.json").read_bytes()
    assert (ev0 / "timings.json").is_file()
