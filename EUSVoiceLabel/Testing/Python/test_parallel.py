"""Scale-out: LOPO folds in parallel processes give the sequential run's pooled predictions;
torchrun + DDP training (gloo, 2 CPU processes) runs, keeps the replicas identical and writes a
checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from EUSVoiceLabelLib.data.vocabulary import LabelSet
from EUSVoiceLabelLib.train import evaluation as ev
from EUSVoiceLabelLib.train.config import TrainConfig
from EUSVoiceLabelLib.train.distributed import DistContext
from EUSVoiceLabelLib.train.parallel import worker_plan

SIZE = (32, 64)
FRAMES = 5
PKG_ROOT = Path(__file__).resolve().parents[2]   # the folder holding EUSVoiceLabelLib


def fake_window_set(n_patients: int = 3, per_patient: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    n = n_patients * per_patient
    return types.SimpleNamespace(
        images=rng.integers(0, 255, size=(n, FRAMES, *SIZE)).astype(np.uint8),
        voices=rng.standard_normal((n, 1024, 66)).astype(np.float32),
        labels=((np.arange(n) * 2) % 5).astype(np.int64),
        patients=[f"patient{i // per_patient + 1:02d}" for i in range(n)],
        times=np.arange(n, dtype=float) * 2.5,
        labelset=LabelSet.default())


def cfg(**kw) -> TrainConfig:
    base = dict(variant="proposed", epochs=2, image_size=SIZE, frames=FRAMES, width=0.125,
                seed=3)
    base.update(kw)
    return TrainConfig(**base)


def test_worker_plan_on_cpu_splits_the_cores():
    devices, threads = worker_plan("cpu", 2)
    assert devices == ["cpu", "cpu"]
    cores = len(os.sched_getaffinity(0))
    assert threads == max(1, cores // 2)


def test_parallel_lopo_equals_sequential(tmp_path):
    ws = fake_window_set()
    before = torch.get_num_threads()
    torch.set_num_threads(1)   # the workers of a 2-core machine get 1 thread each
    try:
        seq = ev.evaluate_cohort(ws, cfg(), tmp_path / "seq", device="cpu", progress=False)
    finally:
        torch.set_num_threads(before)
    par = ev.evaluate_cohort(ws, cfg(), tmp_path / "par", device="cpu", progress=False,
                             workers=2)
    a = (tmp_path / "seq" / "predictions.csv").read_text()
    b = (tmp_path / "par" / "predictions.csv").read_text()
    assert a == b                                  # pooled predictions, to 6 decimals
    for k in ("accuracy", "precision", "recall", "f1", "confusion_matrix", "per_patient"):
        assert seq[k] == par[k]
    # the per-fold probabilities are bitwise equal (deterministic CPU training, same threads)
    for pid in ws.patients[::4]:
        fs = json.loads((tmp_path / "seq" / "folds" / f"{pid}.json").read_text())
        fp = json.loads((tmp_path / "par" / "folds" / f"{pid}.json").read_text())
        assert fs["probs"] == fp["probs"] and fs["indices"] == fp["indices"]
        assert fp["train_info"]["worker_device"] == "cpu"
    # finished folds are reused: no worker is started the second time
    def boom(*a, **k):
        raise AssertionError("folds were run again")

    orig, ev.run_folds = ev.run_folds, boom  # the name evaluate_cohort calls
    try:
        again = ev.evaluate_cohort(ws, cfg(), tmp_path / "par", device="cpu", progress=False,
                                   workers=2)
    finally:
        ev.run_folds = orig
    assert again["accuracy"] == par["accuracy"]


def test_shared_voice_weights_are_pretrained_once_before_the_workers(tmp_path, monkeypatch):
    """With a vocabulary-pretrained voice, the parent prepares (and caches) the weights once
    before starting workers; each worker would otherwise pretrain them again at once."""
    ws = fake_window_set()
    ws.settings = types.SimpleNamespace(spectrogram="spectrogram settings")
    calls = []

    def weights(labelset, width, spectrogram, **kw):
        calls.append(("weights", width, spectrogram))

    def folds(ws_, todo, cfg_, device, workers, states, finished, progress):
        calls.append(("workers", len(todo)))
        raise KeyboardInterrupt  # stop here: only the order matters

    monkeypatch.setattr(ev, "vocabulary_voice_weights", weights)
    monkeypatch.setattr(ev, "run_folds", folds)
    with pytest.raises(KeyboardInterrupt):
        ev.evaluate_cohort(ws, cfg(voice_init="vocabulary"), tmp_path / "voc", device="cpu",
                           progress=False, workers=2)
    assert calls == [("weights", 0.125, "spectrogram settings"), ("workers", 3)]
    calls.clear()
    with pytest.raises(KeyboardInterrupt):  # a voice from scratch needs nothing first
        ev.evaluate_cohort(ws, cfg(), tmp_path / "scratch", device="cpu", progress=False,
                           workers=2)
    assert calls == [("workers", 3)]


def test_a_failing_fold_raises_in_the_parent(tmp_path):
    ws = fake_window_set()
    ws.images = ws.images[:, :, :8, :8]   # too small for the image branch: ConfigError
    with pytest.raises(Exception) as info:
        ev.evaluate_cohort(ws, cfg(), tmp_path, device="cpu", progress=False, workers=2)
    assert "shape" in str(info.value) or "size" in str(info.value)


# --------------------------------------------------------------------------- DDP
def test_pool_workers_end_when_their_parent_is_killed(tmp_path):
    """A pool's parent killed outright (no shutdown) leaves no worker running on."""
    import signal
    import time

    pid_file = tmp_path / "worker.pid"
    script = textwrap.dedent(f"""
        import os, sys, time
        sys.path.insert(0, {str(PKG_ROOT)!r})
        from EUSVoiceLabelLib.core.pool import spawn_pool

        def task(path):
            open(path, "w").write(str(os.getpid()))
            time.sleep(120)

        if __name__ == "__main__":
            with spawn_pool(1) as pool:
                pool.submit(task, {str(pid_file)!r}).result()
    """)
    parent_py = tmp_path / "parent.py"  # a file: spawned workers import the task from it
    parent_py.write_text(script)
    parent = subprocess.Popen([sys.executable, str(parent_py)])
    try:
        deadline = time.time() + 60
        while not (pid_file.is_file() and pid_file.read_text()) and time.time() < deadline:
            time.sleep(0.1)
        worker = int(pid_file.read_text())
        os.kill(worker, 0)  # running
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        deadline = time.time() + 15
        while time.time() < deadline:
            try:
                os.kill(worker, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        else:
            os.kill(worker, signal.SIGKILL)
            pytest.fail("the worker outlived its killed parent by 15 s")
    finally:
        if parent.poll() is None:
            parent.kill()


def test_shard_and_loss_scale_rebuild_the_global_batch():
    batch = torch.arange(7)
    parts = [DistContext(r, 2, r, torch.device("cpu"), "gloo").shard(batch) for r in range(2)]
    assert sorted(torch.cat(parts).tolist()) == list(range(7))
    # mean of the per-process scaled losses = the global mean loss
    losses = torch.rand(7)
    ctx = [DistContext(r, 2, r, torch.device("cpu"), "gloo") for r in range(2)]
    scaled = [float(losses[p].mean()) * c.loss_scale(len(p), 7) for p, c in zip(parts, ctx)]
    assert np.mean(scaled) == pytest.approx(float(losses.mean()))
    # fewer windows than processes: padded so that every process gets one
    one = DistContext(2, 3, 2, torch.device("cpu"), "gloo").shard(torch.tensor([5, 9]))
    assert len(one) == 1


# Both torchrun scripts: random windows and a tiny configuration (``n`` is formatted in).
_DDP_PRELUDE = """
    import os, sys, types, numpy as np, torch
    sys.path.insert(0, {root!r})
    from EUSVoiceLabelLib.train import distributed, loop as training
    from EUSVoiceLabelLib.train.config import TrainConfig
    from EUSVoiceLabelLib.train.loop import train_model
    rng = np.random.default_rng(0)
    n = {n}
    data = types.SimpleNamespace(
        images=rng.integers(0, 255, size=(n, 5, 32, 64)).astype(np.uint8),
        voices=rng.standard_normal((n, 1024, 66)).astype(np.float32),
        labels=(np.arange(n) % 5).astype(np.int64))
    cfg = TrainConfig(variant="proposed", epochs=2, image_size=(32, 64), frames=5,
                      width=0.125, batch_size=4, seed=1)
"""

_DDP_SCRIPT = textwrap.dedent(_DDP_PRELUDE + """
    res = train_model(data, cfg, 5, device="cpu", progress=False)
    ctx = distributed.current()
    torch.save({{k: v.detach().clone() for k, v in res.model.state_dict().items()}},
               {out!r} + f"/rank{{ctx.rank}}.pt")
    with open({out!r} + f"/hist{{ctx.rank}}.txt", "w") as fh:
        fh.write(repr(res.history[-1]["loss"]))
    distributed.shutdown()
""")


def _torchrun(args: list[str], tmp_path: Path, timeout: int = 150) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(PKG_ROOT) + os.pathsep +
               os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node=2", *args], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=tmp_path)


@pytest.mark.slow
@pytest.mark.timeout(200)
def test_ddp_training_two_gloo_processes_keeps_replicas_identical(tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(_DDP_SCRIPT.format(root=str(PKG_ROOT), out=str(tmp_path), n=10))
    proc = _torchrun([str(script)], tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    a = torch.load(tmp_path / "rank0.pt", weights_only=True)
    b = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k      # DDP keeps the replicas in lockstep
    # both processes report the same (all-reduced) epoch loss
    assert (tmp_path / "hist0.txt").read_text() == (tmp_path / "hist1.txt").read_text()


_DDP_NAN_SCRIPT = textwrap.dedent(_DDP_PRELUDE + """
    from EUSVoiceLabelLib.core.errors import TrainingError
    rank = int(os.environ["RANK"])
    calls = [0]
    real_loss = training.weighted_loss
    def loss_nan_on_rank1(*args):
        calls[0] += 1
        loss = real_loss(*args)
        return loss * float("nan") if rank == 1 and calls[0] == 2 else loss
    training.weighted_loss = loss_nan_on_rank1
    try:
        train_model(data, cfg, 5, device="cpu", progress=False)
        outcome = "finished"
    except TrainingError as exc:
        outcome = str(exc)
    with open({out!r} + f"/outcome{{rank}}.txt", "w") as fh:
        fh.write(outcome)
    distributed.shutdown()
""")


@pytest.mark.slow
@pytest.mark.timeout(200)
def test_ddp_loss_nan_in_one_process_stops_all_of_them(tmp_path):
    """A non-finite loss in one process stops every process at the same batch with the same
    clear error.  Before, the others went on into the next gradient all-reduce: with gloo they
    crashed there ("Connection closed by peer") once the first had left; with NCCL they would
    wait for it."""
    script = tmp_path / "ddp_nan.py"
    script.write_text(_DDP_NAN_SCRIPT.format(root=str(PKG_ROOT), out=str(tmp_path), n=16))
    proc = _torchrun([str(script)], tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    mine = (tmp_path / "outcome1.txt").read_text()
    other = (tmp_path / "outcome0.txt").read_text()
    assert "the loss became nan at epoch 1, batch 2" in mine
    assert "in another process at epoch 1, batch 2" in other


@pytest.fixture(scope="module")
def tiny_cohort(tmp_path_factory):
    from EUSVoiceLabelLib.synth import synth_cohort

    out = tmp_path_factory.mktemp("cohort")
    synth_cohort(out, patients=2, seed=4, counts=2, frame_size=(128, 96), progress=False,
                 force=True, workers=1)
    return out


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_torchrun_train_command_writes_one_checkpoint(tiny_cohort, tmp_path):
    from EUSVoiceLabelLib.train.checkpoints import load_checkpoint

    model = tmp_path / "model.pt"
    proc = _torchrun(["-m", "EUSVoiceLabelLib", "train", str(tiny_cohort), "--out", str(model),
                      "--image-size", "32x64", "--frames", "5", "--width", "0.125",
                      "--epochs", "1", "--quiet", "--device", "cpu", "--cache",
                      str(tmp_path / "cache")], tmp_path, timeout=250)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    loaded = load_checkpoint(model, labelset=LabelSet.default(), variant="proposed")
    assert loaded.meta["extra"]["data_parallel_processes"] == 2
    assert proc.stdout.count("trained proposed") == 1      # only rank 0 reports and saves
    assert not any(p.name.endswith(".resume.pt") for p in tmp_path.iterdir())
