#!/usr/bin/env python3
"""Try the command line as a careless or hostile user would and count what is handled cleanly.

Each scenario runs ``python -m EUSVoiceLabelLib ...`` in a child process (so a crash is seen as
a signal, not as the end of this script) on small files made here, and is *clean* when:

- a scenario that must be refused exits with code 2, prints one error line (argparse: its
  usage and one error line; log warnings aside) and no traceback, and leaves every input it names as it was (names, bytes and
  modification times of everything under them);
- a scenario that must work exits with code 0 and its outputs pass the scenario's check.

Anything else is reported by what happened: ``crash`` (a signal such as a segmentation fault),
``traceback``, ``harm`` (an input changed), ``wrong`` (an exit 0 where a refusal was due, or a
wrong result), ``timeout``.  The table of docs/reliability.md lists the figures.

Usage (from the repository root; PYTHONPATH chooses the package measured)::

    python3 scripts/fault_scenarios.py [--json FILE] [--only WORD] [--keep DIR]

Needs the test extras (``scripts/install.sh``): the media come from
``EUSVoiceLabel/Testing/Python/mediafactory.py``.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent / "EUSVoiceLabel" / "Testing" / "Python"
sys.path.insert(0, str(TESTS))

import mediafactory as mf  # noqa: E402  (the test media factory, found through TESTS)
import numpy as np  # noqa: E402

TINY = ["--image-size", "32x48", "--width", "0.125", "--frames", "3", "--epochs", "1",
        "--device", "cpu", "--quiet"]
DEV = ["--device", "cpu", "--quiet"]


# --------------------------------------------------------------------------- fixtures
def digest(path: Path, itself: bool = True) -> str:
    """Names, bytes and modification times of everything under ``path`` (and of ``path``
    itself unless ``itself`` is False: a failed run may touch the folder it was to write)."""
    h = hashlib.sha256()
    if not path.exists():
        return "absent"
    items = ([path] if itself or not path.is_dir() else []) + \
        (sorted(path.rglob("*")) if path.is_dir() else [])
    for p in items:
        st = p.lstat()
        h.update(f"{p.relative_to(path.parent)}|{st.st_mtime_ns}".encode())
        if p.is_file() and not p.is_symlink():
            h.update(p.read_bytes())
    return h.hexdigest()


def tiny_model(path: Path, labels: Optional[list[str]] = None) -> Path:
    """An untrained tiny checkpoint written by the package's own save_checkpoint."""
    code = textwrap.dedent(f"""
        import sys; sys.path.insert(0, {str(TESTS)!r})
        from pathlib import Path
        from test_reliability import tiny_checkpoint
        from EUSVoiceLabelLib.data.vocabulary import Label, LabelSet
        ids = {labels!r}
        ls = LabelSet(tuple(Label(i, i.capitalize()) for i in ids)) if ids else None
        tiny_checkpoint(Path({str(path)!r}), labelset=ls)
    """)
    subprocess.run([sys.executable, "-c", code], check=True)
    return path


def crafted(src: Path, dst: Path, change: str) -> Path:
    """A copy of checkpoint ``src`` with ``change`` (Python on ``d``) and a valid checksum."""
    code = textwrap.dedent(f"""
        import torch
        from EUSVoiceLabelLib.nn.torchfile import DIGEST_KEY
        from EUSVoiceLabelLib.train.checkpoints import checkpoint_digest
        d = torch.load({str(src)!r}, weights_only=True)
        {change}
        d[DIGEST_KEY] = checkpoint_digest(d)
        torch.save(d, {str(dst)!r})
    """)
    subprocess.run([sys.executable, "-c", code], check=True)
    return dst


def multichannel(path: Path, codec: str, channels: int = 8) -> Path:
    import av

    rate, layout = 48000, "7.1" if channels == 8 else f"{channels}c"
    x = (0.2 * np.sin(np.arange(5 * rate)[:, None] * 2 * np.pi * 440 / rate)
         * np.ones(channels)).astype(np.float32)
    with av.open(str(path), "w") as out:
        st = out.add_stream(codec, rate=rate, layout=layout)
        frame = av.AudioFrame.from_ndarray(x.reshape(1, -1), format="flt", layout=layout)
        frame.sample_rate = rate
        fmt = st.codec_context.format.name
        for f in av.AudioResampler(format=fmt, layout=layout, rate=rate).resample(frame):
            for p in st.encode(f):
                out.mux(p)
        for p in st.encode(None):
            out.mux(p)
    return path


@dataclass
class World:
    """The files every scenario starts from (a fresh copy per scenario)."""

    root: Path

    @property
    def cohort(self) -> Path:
        return self.root / "cohort"

    @property
    def model(self) -> Path:
        return self.root / "model.pt"

    @property
    def labelled(self) -> Path:
        return self.root / "labelled"

    def build(self) -> None:
        for i in range(3):  # three different patients
            mf.make_procedure(self.cohort / f"patient0{i + 1}", seconds=3.0 + 0.2 * i)
        tiny_model(self.model)
        rc = run(["label", str(self.cohort / "patient01"), "--model", str(self.model),
                  "--out", str(self.labelled), "--no-cam", *DEV], self.root)
        assert rc.returncode == 0, rc.stderr


# --------------------------------------------------------------------------- running
def run(argv: list[str], cwd: Path, timeout: float = 300, wrapper: Optional[str] = None
        ) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", wrapper, *argv] if wrapper else \
        [sys.executable, "-m", "EUSVoiceLabelLib", *argv]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)


FULL_DISK = textwrap.dedent(f"""
    import sys; sys.path.insert(0, {str(TESTS)!r})
    from faults import full_disk
    from EUSVoiceLabelLib.cli import main
    root, budget = sys.argv[1], int(sys.argv[2])
    with full_disk(__import__("pathlib").Path(root), budget):
        code = main(sys.argv[3:])
    sys.exit(code)
""")


@dataclass
class Scenario:
    group: str
    name: str
    argv: Callable[[World], list[str]]
    refuse: bool = True
    protect: Callable[[World], list[Path]] = lambda w: [w.cohort]
    keep: Callable[[World], list[Path]] = lambda w: []  # earlier outputs: content unchanged
    setup: Optional[Callable[[World], None]] = None
    check: Optional[Callable[[World, subprocess.CompletedProcess], bool]] = None
    wrapper: Optional[str] = None
    timeout: float = 300


@dataclass
class Outcome:
    scenario: Scenario
    result: str
    detail: str = ""
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)


def judge(s: Scenario, w: World) -> Outcome:
    if s.setup is not None:
        s.setup(w)
    protected = {p: digest(p) for p in s.protect(w)}
    protected.update({p: digest(p, itself=False) for p in s.keep(w)})
    t0 = time.time()
    try:
        r = run(s.argv(w), w.root, s.timeout, s.wrapper)
    except subprocess.TimeoutExpired:
        r = None
    dt = time.time() - t0
    kept = set(s.keep(w))
    changed = [str(p.relative_to(w.root)) for p, d in protected.items()
               if digest(p, itself=p not in kept) != d]
    if r is None:
        return Outcome(s, "harm" if changed else "timeout", f"> {s.timeout:.0f} s"
                       + (", changed: " + ", ".join(changed) if changed else ""), dt)
    # Log warnings may come before the error line.
    err = [line for line in r.stderr.strip().splitlines()
           if line.strip() and not line.startswith("WARNING:")]
    last = err[-1][:160] if err else ""
    if r.returncode < 0:
        return Outcome(s, "crash", f"signal {-r.returncode}", dt)
    if "Traceback" in r.stderr:
        return Outcome(s, "traceback", last, dt)
    if changed:
        return Outcome(s, "harm", "changed: " + ", ".join(changed), dt)
    if s.refuse:
        usage = bool(err) and err[0].startswith("usage:")
        if r.returncode == 2 and (len(err) == 1 or usage):
            if s.check is None or s.check(w, r):
                return Outcome(s, "clean", last, dt)
            return Outcome(s, "wrong", "refused, but " + last, dt)
        return Outcome(s, "wrong", f"exit {r.returncode}: {last or r.stdout[-120:]}", dt)
    if r.returncode == 0 and (s.check is None or s.check(w, r)):
        return Outcome(s, "clean", r.stdout.strip().splitlines()[-1][:160] if r.stdout.strip()
                       else "", dt)
    return Outcome(s, "wrong", f"exit {r.returncode}: {last}", dt)


# --------------------------------------------------------------------------- scenarios
def _home(w: World) -> Path:
    home = w.root / "home"
    (home / "photos").mkdir(parents=True, exist_ok=True)
    (home / "photos" / ".holiday.jpg.abcd1234.part").write_bytes(b"someone's download")
    (home / ".bashrc").write_text("alias ll='ls -l'\n")
    shutil.copytree(w.cohort / "patient01", home / "cohort" / "patient01", dirs_exist_ok=True)
    return home


def _csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _wav(channels: int):
    def setup(w: World) -> None:
        mf.write_wav(w.cohort / "patient01" / "audio.wav", mf.tone(4.0, channels=channels),
                     48000)
    return setup


def _audio_file(suffix: str, codec: str):
    def setup(w: World) -> None:
        (w.cohort / "patient01" / "audio.wav").unlink()
        multichannel(w.cohort / "patient01" / f"audio{suffix}", codec)
    return setup


def _edit_label(edit: Callable[[Path], None]):
    def setup(w: World) -> None:
        edit(w.labelled)
    return setup


def _edit_csv(name: str, fn: Callable[[list[list[str]]], list[list[str]]]):
    def edit(folder: Path) -> None:
        with open(folder / name, newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
        with open(folder / name, "w", newline="", encoding="utf-8") as fh:
            csv.writer(fh, lineterminator="\n").writerows(fn(rows))
    return edit


def _review(label: str):
    def fn(rows):
        return [rows[0] + ["reviewed_label"]] + [r + [label if i == 0 else ""]
                                                 for i, r in enumerate(rows[1:])]
    return fn


def _nothing_outside(w: World, r) -> bool:
    """A refused export of the label folder wrote no image anywhere."""
    return not any(w.root.rglob("*.png"))


def _labels_json(w: World) -> None:
    (w.root / "labels.json").write_text(json.dumps(
        {"labels": [{"id": "a", "name": "Bile\nduct"}, {"id": "b", "name": "Pancreas"}]}))


def _nrrd(w: World, header: bytes) -> None:
    """A procedure folder whose frames.seq.nrrd is ``header`` (and no data)."""
    folder = w.root / "seq"
    folder.mkdir()
    (folder / "frames.seq.nrrd").write_bytes(header)


def _big_model(w: World) -> None:
    """A 300-label model whose classifier always says the last label (value 300)."""
    tiny_model(w.root / "big0.pt", [f"l{i}" for i in range(300)])
    (w.root / "m300.csv").write_text("time_s,label\n0.5,l0\n1.5,l1\n")
    crafted(w.root / "big0.pt", w.root / "big.pt",
            "k = [k for k, v in d['model'].items() if tuple(v.shape) == (300,)][-1]; "
            "d['model'][k][:] = 0; d['model'][k][299] = 50")


def _labelmap_says_300(w: World, r) -> bool:
    import nrrd

    data, _ = nrrd.read(str(w.root / "out" / "landmarks.seq.nrrd"))
    predicted = {row["predicted_label"] for row in _csv(w.root / "out" / "labels.csv")}
    values = set(np.unique(data).tolist())
    return predicted == {"l299"} and 300 in values and values <= {0, 300}


def _bomb(w: World) -> None:
    """A 2 MB gzip NRRD that inflates to 2 GB of zeros."""
    import zlib

    folder = w.root / "seq"
    folder.mkdir()
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = bytes(1 << 24)
    with open(folder / "frames.seq.nrrd", "wb") as fh:
        fh.write(b"NRRD0004\ntype: uint8\ndimension: 4\nsizes: 1000 1000 1 2000\n"
                 b"kinds: domain domain domain list\nencoding: gzip\n\n")
        left = 2_000_000_000
        while left:
            n = min(left, len(block))
            fh.write(z.compress(block[:n]))
            left -= n
        fh.write(z.flush())


def _ab_mentions(w: World) -> None:
    tiny_model(w.root / "ab.pt", ["alpha", "beta"])
    (w.root / "ab.csv").write_text("time_s,label\n0.5,alpha\n1.5,beta\n")


def _formula_mentions(w: World) -> None:
    (w.root / "m.csv").write_text('time_s,label,end_s,text\n0.5,pancreas,,"=HYPERLINK(""x"")"\n'
                                  "1.5,bile_duct,,@SUM(A1)\n")


def _no_formula(w: World, r) -> bool:
    text = [row["text"] for row in _csv(w.root / "out" / "labels.csv")]
    return all(not t.startswith(("=", "+", "@")) for t in text) and len(text) == 2


def _duplicate_patient(w: World) -> None:
    (w.cohort / "patient04").symlink_to(w.cohort / "patient01")


def _resume(w: World) -> None:
    rc = run(["evaluate", str(w.cohort), "--out", str(w.root / "ev"), "--workers", "2",
              "--cache", str(w.root / "cache"), *TINY], w.root, 600)
    assert rc.returncode == 0, rc.stderr[-300:]
    (w.root / "whole.csv").write_bytes((w.root / "ev" / "predictions.csv").read_bytes())
    (w.root / "ev" / "folds" / "patient03.json").unlink()


def _same_predictions(w: World, r) -> bool:
    return (w.root / "ev" / "predictions.csv").read_bytes() == \
        (w.root / "whole.csv").read_bytes()


def _dataset(w: World) -> None:
    r = run(["export", str(w.labelled), "--out", str(w.root / "ds"), *DEV], w.root)
    assert r.returncode == 0, r.stderr


def _says_disk_full(w: World, r) -> bool:
    return "disk is full" in r.stderr or "No space left" in r.stderr


def scenarios() -> list[Scenario]:
    c = lambda w, *p: str(w.cohort.joinpath(*p))  # noqa: E731
    S = Scenario
    return [
        # 1. outputs over inputs
        S("1 inputs", "train --out COHORT/patient01/video.mp4",
          lambda w: ["train", c(w), "--out", c(w, "patient01", "video.mp4"), *TINY]),
        S("1 inputs", "detect PROC --out PROC/mentions.csv",
          lambda w: ["detect", c(w, "patient01"), "--out", c(w, "patient01", "mentions.csv"),
                     *DEV]),
        S("1 inputs", "label patient01 --out COHORT/patient02",
          lambda w: ["label", c(w, "patient01"), "--model", str(w.model), "--out",
                     c(w, "patient02"), *DEV]),
        S("1 inputs", "label patient01 --out COHORT",
          lambda w: ["label", c(w, "patient01"), "--model", str(w.model), "--out", c(w), *DEV]),
        S("1 inputs", "evaluate COHORT --out COHORT",
          lambda w: ["evaluate", c(w), "--out", c(w), *TINY]),
        S("1 inputs", "evaluate COHORT --out COHORT/results",
          lambda w: ["evaluate", c(w), "--out", c(w, "results"), *TINY]),
        S("1 inputs", "export COHORT --out COHORT/patient02/../patient03",
          lambda w: ["export", c(w), "--out", c(w, "patient02", "..", "patient03"), *DEV]),
        S("1 inputs", "train --cache COHORT/patient01",
          lambda w: ["train", c(w), "--out", str(w.root / "m.pt"), "--cache", c(w, "patient01"),
                     *TINY]),
        S("1 inputs", "train --out LINK/model.pt (LINK -> patient01)",
          lambda w: ["train", c(w), "--out", str(w.root / "link" / "m.pt"), *TINY],
          setup=lambda w: (w.root / "link").symlink_to(w.cohort / "patient01")),
        S("1 inputs", "train --out an existing file that is not a checkpoint",
          lambda w: ["train", c(w), "--out", str(w.root / "thesis.pdf"), *TINY],
          setup=lambda w: (w.root / "thesis.pdf").write_bytes(b"%PDF my thesis"),
          protect=lambda w: [w.cohort, w.root / "thesis.pdf"]),
        S("1 inputs", "detect --out a hand-made mentions CSV elsewhere",
          lambda w: ["detect", c(w, "patient01"), "--out", str(w.root / "hand.csv"), *DEV],
          setup=lambda w: (w.root / "hand.csv").write_text("time_s,label\n1.0,pancreas\n"),
          protect=lambda w: [w.cohort, w.root / "hand.csv"]),
        S("1 inputs", "synth --out a non-empty folder --force",
          lambda w: ["synth", str(w.root / "home"), "--force", "--patients", "1", "--counts",
                     "1", "--frame-size", "64x48", "--workers", "1", "--quiet"],
          setup=_home, protect=lambda w: [w.root / "home"], timeout=180),
        S("1 inputs", "demo --out a non-empty folder --force",
          lambda w: ["demo", "--out", str(w.root / "home"), "--force", "--patients", "2",
                     "--epochs", "1", *DEV],
          setup=_home, protect=lambda w: [w.root / "home"], timeout=180),
        S("1 inputs", "label into our own earlier label folder",
          lambda w: ["label", c(w, "patient01"), "--model", str(w.model), "--out",
                     str(w.labelled), "--no-cam", *DEV], refuse=False,
          check=lambda w, r: len(_csv(w.labelled / "labels.csv")) == 2),
        # 2. the sweep
        S("2 sweep", "export COHORT --out COHORT with a hidden .part file inside",
          lambda w: ["export", c(w), "--out", c(w), *DEV],
          setup=lambda w: (w.cohort / "patient01" / ".video.mp4.abcd1234.part.mp4")
          .write_bytes(b"someone's")),
        S("2 sweep", "export --out HOME (not empty, .part files deeper)",
          lambda w: ["export", c(w), "--out", str(w.root / "home"), *DEV],
          setup=_home, protect=lambda w: [w.cohort, w.root / "home"]),
        # 3. channels
        *[S("3 media", f"info, {n}-channel WAV", lambda w: ["info", c(w, "patient01")],
            refuse=False, setup=_wav(n), protect=lambda w: [])
          for n in (2, 8, 16)],
        S("3 media", "info, 7.1 FLAC", lambda w: ["info", c(w, "patient01")], refuse=False,
          setup=_audio_file(".flac", "flac"), protect=lambda w: []),
        S("3 media", "info, 7.1 AAC (.m4a)", lambda w: ["info", c(w, "patient01")],
          refuse=False, setup=_audio_file(".m4a", "aac"), protect=lambda w: []),
        S("3 media", "label with 8-channel audio",
          lambda w: ["label", c(w, "patient01"), "--model", str(w.model), "--out",
                     str(w.root / "out"), "--no-cam", *DEV], refuse=False, setup=_wav(8)),
        S("3 media", "train with 8-channel audio",
          lambda w: ["train", c(w), "--out", str(w.root / "m.pt"), "--cache",
                     str(w.root / "cache"), *TINY], refuse=False, setup=_wav(8)),
        # 4. labels
        S("4 labels", "label with a 300-label model (labelmap values)",
          lambda w: ["label", c(w, "patient01"), "--model", str(w.root / "big.pt"), "--mentions",
                     str(w.root / "m300.csv"), "--out", str(w.root / "out"), *DEV],
          refuse=False, setup=_big_model,
          check=_labelmap_says_300),
        S("4 labels", "a line break in a label name",
          lambda w: ["info", c(w, "patient01"), "--labels", str(w.root / "labels.json")],
          setup=_labels_json),
        # 5. full disk
        S("5 disk", "label on a full disk (previous output kept)",
          lambda w: [str(w.labelled), "3000", "label", c(w, "patient01"), "--model",
                     str(w.model), "--out", str(w.labelled), "--no-cam", *DEV],
          wrapper=FULL_DISK, keep=lambda w: [w.labelled], check=_says_disk_full),
        S("5 disk", "export on a full disk (previous dataset kept)",
          lambda w: [str(w.root / "ds"), "400", "export", str(w.labelled), "--out",
                     str(w.root / "ds"), *DEV], setup=_dataset,
          wrapper=FULL_DISK, keep=lambda w: [w.root / "ds"], check=_says_disk_full),
        S("5 disk", "train on a full disk (checkpoint write)",
          lambda w: [str(w.root / "outdir"), "2000", "train", c(w), "--out",
                     str(w.root / "outdir" / "out.pt"), "--cache", str(w.root / "cache"),
                     *TINY], setup=lambda w: (w.root / "outdir").mkdir(),
          wrapper=FULL_DISK, check=_says_disk_full),
        # 6. label sets
        S("6 label set", "model of another label set, --mentions FILE",
          lambda w: ["label", c(w, "patient01"), "--model", str(w.root / "ab.pt"),
                     "--mentions", str(w.root / "ab.csv"), "--out", str(w.root / "out"),
                     "--no-cam", *DEV], refuse=False, setup=_ab_mentions,
          check=lambda w, r: [x["spoken_label"] for x in _csv(w.root / "out" / "labels.csv")]
          == ["alpha", "beta"]),
        S("6 label set", "model of another label set, --mentions auto",
          lambda w: ["label", c(w, "patient01"), "--model", str(w.root / "ab.pt"),
                     "--mentions", "auto", "--out", str(w.root / "out"), "--no-cam", *DEV],
          setup=_ab_mentions, check=lambda w, r: "mentions.csv" not in r.stderr),
        # 7. checkpoints
        *[S("7 checkpoint", f"crafted checkpoint: {what}",
            lambda w, ch=change: ["label", c(w, "patient01"), "--model",
                                  str(crafted(w.model, w.root / "bad.pt", ch)), "--out",
                                  str(w.root / "out"), *DEV])
          for what, change in (
              ("NaN weights", "k = next(k for k, v in d['model'].items() if "
                              "v.is_floating_point()); d['model'][k][...] = float('nan')"),
              ("width as text", "d['config']['width'] = 'wide'"),
              ("unknown spectrogram scale",
               "d['preprocessing']['spectrogram'] = {'scale': 'cubic'}"),
              ("image size 1e5 x 1e5", "d['config']['image_size'] = [100000, 100000]; "
                                       "d['preprocessing']['image_size'] = [100000, 100000]"),
              ("frames as text", "d['config']['frames'] = '25'"))],
        # 8. folds
        S("8 folds", "evaluate with a symlinked duplicate patient",
          lambda w: ["evaluate", c(w), "--out", str(w.root / "ev"), "--cache",
                     str(w.root / "cache"), *TINY], setup=_duplicate_patient),
        # 9. one-line errors
        *[S("9 errors", f"export of a label folder: {what}",
            lambda w: ["export", str(w.labelled), "--out", str(w.root / "out"), *DEV],
            setup=_edit_label(edit), protect=lambda w: [w.cohort], check=_nothing_outside)
          for what, edit in (
              ("bad run.json", lambda d: (d / "run.json").write_text("{not json")),
              ("missing column", _edit_csv("labels.csv", lambda rows: [r[:4] for r in rows])),
              ("unknown window id", _edit_csv("frame_labels.csv", lambda rows: [rows[0]] + [
                  r[:4] + ["99"] + r[5:] for r in rows[1:]])),
              ("missing frame_labels.csv", lambda d: (d / "frame_labels.csv").unlink()),
              ("reviewed_label '..'", _edit_csv("labels.csv", _review(".."))))],
        S("9 errors", "a 0-frame .seq.nrrd", lambda w: ["info", str(w.root / "seq")],
          setup=lambda w: _nrrd(w, b"NRRD0004\ntype: uint8\ndimension: 4\nsizes: 96 64 1 0\n"
                                   b"encoding: raw\n\n"), protect=lambda w: []),
        S("9 errors", "a 2 GB gzip bomb .seq.nrrd", lambda w: ["info", str(w.root / "seq")],
          setup=_bomb, protect=lambda w: [], timeout=120),
        S("9 errors", "label --out naming an existing file",
          lambda w: ["label", c(w, "patient01"), "--model", str(w.model), "--out",
                     str(w.root / "a file"), *DEV],
          setup=lambda w: (w.root / "a file").write_text("x"),
          protect=lambda w: [w.cohort, w.root / "a file"]),
        S("9 errors", "--seed 99999999999999999999999",
          lambda w: ["train", c(w), "--out", str(w.root / "m.pt"), "--seed",
                     "99999999999999999999999", *TINY]),
        # 10. smaller
        S("10 smaller", "synth --snr-db nan",
          lambda w: ["synth", str(w.root / "s"), "--snr-db", "nan", "--patients", "1",
                     "--counts", "1", "--frame-size", "64x48", "--quiet"],
          check=lambda w, r: not (w.root / "s").exists()),
        S("10 smaller", "train --epochs 0",
          lambda w: ["train", c(w), "--out", str(w.root / "m.pt"), "--image-size", "32x48",
                     "--width", "0.125", "--frames", "3", "--epochs", "0", *DEV],
          check=lambda w, r: not (w.root / "m.pt").exists()),
        S("10 smaller", "resumed evaluate --workers 2 = uninterrupted",
          lambda w: ["evaluate", c(w), "--out", str(w.root / "ev"), "--workers", "2",
                     "--cache", str(w.root / "cache"), *TINY], refuse=False, setup=_resume,
          check=_same_predictions, timeout=600),
        S("10 smaller", "mention text '=HYPERLINK(...)' in labels.csv",
          lambda w: ["label", c(w, "patient01"), "--model", str(w.model), "--mentions",
                     str(w.root / "m.csv"), "--out", str(w.root / "out"), "--no-cam", *DEV],
          refuse=False, setup=_formula_mentions, check=_no_formula),
    ]


# --------------------------------------------------------------------------- main
def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", type=Path, help="write the outcomes as JSON")
    p.add_argument("--only", help="run the scenarios whose name or group contains this")
    p.add_argument("--keep", type=Path, help="work in this folder and keep it")
    args = p.parse_args()
    base = Path(tempfile.mkdtemp(prefix="eusvl_faults_")) if args.keep is None else args.keep
    world = World(base / "world")
    shutil.rmtree(world.root, ignore_errors=True)
    world.build()
    todo = [s for s in scenarios()
            if args.only is None or args.only in s.name or args.only in s.group]
    outcomes: list[Outcome] = []
    for i, s in enumerate(todo):
        w = World(base / f"s{i:02d}")
        shutil.rmtree(w.root, ignore_errors=True)
        shutil.copytree(world.root, w.root, symlinks=True)
        o = judge(s, w)
        outcomes.append(o)
        print(f"{o.result:>9}  {o.seconds:6.1f} s  [{s.group}] {s.name}: {o.detail}",
              flush=True)
    clean = sum(o.result == "clean" for o in outcomes)
    print(f"\n{clean} of {len(outcomes)} scenarios handled cleanly")
    groups: dict[str, list[int]] = {}
    for o in outcomes:
        g = groups.setdefault(o.scenario.group, [0, 0])
        g[0] += 1
        g[1] += o.result == "clean"
    print("| group | scenarios | clean |\n|---|---|---|")
    for g, (n, k) in groups.items():
        print(f"| {g} | {n} | {k} |")
    if args.json:
        args.json.write_text(json.dumps({
            "package": subprocess.run([sys.executable, "-c", "import EUSVoiceLabelLib as e;"
                                       "print(e.__file__)"], capture_output=True,
                                      text=True).stdout.strip(),
            "clean": clean, "total": len(outcomes),
            "outcomes": [{"group": o.scenario.group, "name": o.scenario.name,
                          "result": o.result, "detail": o.detail,
                          "seconds": round(o.seconds, 1)} for o in outcomes]}, indent=2))
    if args.keep is None:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
