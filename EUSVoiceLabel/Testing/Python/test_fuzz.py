"""Fuzzing every loader: the only allowed outcomes are a correct load or the project's own error.

Two kinds of fuzzing:

- **Corrupted real files** (video, audio, frames folder, ``.seq.nrrd``, whole procedure folders,
  the text formats and model checkpoints): small valid files made by :mod:`mediafactory` are
  truncated at random points, have bytes flipped, are replaced by random bytes under a valid
  extension, emptied, renamed to a wrong extension, or have their headers patched to absurd
  sample rates, sizes and counts; procedure folders get absurd audio offsets, crops and frame
  rates, and mentions at negative or huge times.  Every path has spaces and non-ASCII letters.
  Each case runs in a worker process under a memory limit (``RLIMIT_AS``) and a time limit; a
  case is *ok* (loaded), *error* (an :class:`EUSVoiceLabelError`) or *crash* (any other
  exception, a timeout, a killed worker).  Crashes fail the test with the list of cases.
- **Hypothesis** for the text formats in-process (mentions CSV, SRT / WebVTT, labels.json,
  procedure.json), with a bounded number of examples and a deadline, plus round-trip properties.

Sizes: ``EUSVOICELABEL_FUZZ_CASES`` corrupted media/text cases (default 240),
``EUSVOICELABEL_FUZZ_CHECKPOINT_CASES`` corrupted checkpoints (default 40),
``EUSVOICELABEL_FUZZ_EXAMPLES`` hypothesis examples per format (default 150),
``EUSVOICELABEL_FUZZ_SEED`` the corruption seed (default 0).  The counts of cases run are
printed (``pytest -s``) and written to ``$EUSVOICELABEL_FUZZ_REPORT`` (JSON) when it is set.
"""

from __future__ import annotations

import atexit
import collections
import json
import math
import os
import queue
import random
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import traceback
import zlib
from pathlib import Path
from typing import Callable, Optional

import mediafactory as mf
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

N_CASES = int(os.environ.get("EUSVOICELABEL_FUZZ_CASES", "240"))
N_CHECKPOINT_CASES = int(os.environ.get("EUSVOICELABEL_FUZZ_CHECKPOINT_CASES", "40"))
N_EXAMPLES = int(os.environ.get("EUSVOICELABEL_FUZZ_EXAMPLES", "150"))
SEED = int(os.environ.get("EUSVOICELABEL_FUZZ_SEED", "0"))
CASE_TIMEOUT_S = float(os.environ.get("EUSVOICELABEL_FUZZ_TIMEOUT", "30"))
MEDIA_MEMORY = 2 << 30    # address space of a media worker (PyAV + numpy need ~0.3 GiB)
TORCH_MEMORY = 8 << 30    # torch alone maps ~3.5 GiB of address space
ODD_DIR = "fuzz ünïcødé 空 白"  # spaces and non-ASCII letters in every path
HERE = Path(__file__).resolve().parent
MARK = "@@FUZZ "
# Times asked of every frame source: inside, before and far after the recording, and absurd.
PROBE_TIMES = [0.0, 0.37, 0.5, -5.0, 3.0, 1e9, -1e12]
FUZZ_REPORT: dict[str, dict] = {}


# =========================================================================== the worker side
def _exercise(kind: str, path: str) -> None:
    """Load ``path`` as ``kind`` and use what was loaded (runs in the worker process)."""
    if kind == "video":
        from EUSVoiceLabelLib.data.media import VideoFileSource
        src = VideoFileSource(path)
        out = src.read(PROBE_TIMES)
        assert out.shape == (len(PROBE_TIMES), src.height, src.width)
    elif kind in ("frames", "nrrd"):
        from EUSVoiceLabelLib.data.media import open_frames
        src = open_frames(path)
        out = src.read(PROBE_TIMES)
        assert out.shape == (len(PROBE_TIMES), src.height, src.width) and out.dtype == np.uint8
    elif kind == "audio":
        from EUSVoiceLabelLib.data.media import load_audio
        samples, rate = load_audio(path)
        assert samples.ndim == 1 and samples.dtype == np.float32 and len(samples) > 0
        assert np.all(np.isfinite(samples)) and 4000 <= rate <= 768000
    elif kind == "procedure":
        from EUSVoiceLabelLib.data.procedure import load_procedure
        proc = load_procedure(path)
        proc.validate()
        for m in proc.mentions[:2]:
            w = proc.frames_window(m.time_s, 3)
            assert w.shape == (3, proc.crop[3], proc.crop[2])
            assert proc.voice_window(m).shape == (48000,)
        assert proc.frames_window(-1e6, 2).shape[0] == 2
        assert proc.frames_window(1e7, 2).shape[0] == 2
        if proc.has_audio:
            assert proc.audio_segment(-1e6, -1e6 + 0.25).shape == (12000,)
            assert proc.audio_segment(1e7, 1e7 + 0.25).shape == (12000,)
    elif kind == "mentions":
        from EUSVoiceLabelLib.data.mentions import read_mentions
        for m in read_mentions(path):
            assert math.isfinite(m.time_s)
    elif kind == "labels":
        from EUSVoiceLabelLib.data.vocabulary import LabelSet
        assert len(LabelSet.load(path)) > 0
    elif kind == "settings":
        from EUSVoiceLabelLib.data.procedure import ProcedureSettings
        s = ProcedureSettings.load(Path(path))
        assert math.isfinite(s.audio_offset_s)
    elif kind == "checkpoint":
        from EUSVoiceLabelLib.train.checkpoints import load_checkpoint
        loaded = load_checkpoint(path)
        assert loaded.model is not None
    else:
        raise ValueError(f"unknown kind {kind}")


def worker_main(memory_limit: int) -> None:
    """Read cases (JSON lines) on stdin, answer one MARK line per case on stdout."""
    import resource

    from EUSVoiceLabelLib.core.errors import EUSVoiceLabelError

    resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))
    for line in sys.stdin:
        case = json.loads(line)
        try:
            _exercise(case["kind"], case["path"])
            outcome, detail = "ok", ""
        except EUSVoiceLabelError as exc:
            outcome, detail = "error", f"{type(exc).__name__}: {exc}"
        except BaseException as exc:  # noqa: BLE001 - anything else is what we hunt
            tb = traceback.extract_tb(exc.__traceback__)
            where = f" at {tb[-1].filename.split('/')[-1]}:{tb[-1].lineno}" if tb else ""
            outcome, detail = "crash", f"{type(exc).__name__}: {exc}"[:300] + where
        sys.stdout.write(MARK + json.dumps({"outcome": outcome, "detail": detail[:400]}) + "\n")
        sys.stdout.flush()


# =========================================================================== the parent side
class Worker:
    """The loader process: cases go in one at a time; after a timeout (killed) or a death
    the next case starts a fresh one."""

    def __init__(self, memory_limit: int, log_path: Path, preload: str = ""):
        self.memory_limit = memory_limit
        self.log_path = log_path
        self.preload = preload
        self.proc: Optional[subprocess.Popen] = None

    def _start(self) -> None:
        code = (f"import sys; sys.path.insert(0, {str(HERE)!r}); {self.preload}"
                f"import test_fuzz; test_fuzz.worker_main({self.memory_limit})")
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._log, env=env,
                                     text=True, encoding="utf-8")
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._pump, args=(self.proc, self.lines), daemon=True).start()

    @staticmethod
    def _pump(proc: subprocess.Popen, lines: queue.Queue) -> None:
        for line in proc.stdout:
            if line.startswith(MARK):
                lines.put(json.loads(line[len(MARK):]))
        lines.put(None)

    def run(self, kind: str, path: Path, timeout: float) -> tuple[str, str]:
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        try:
            self.proc.stdin.write(json.dumps({"kind": kind, "path": str(path)}) + "\n")
            self.proc.stdin.flush()
            answer = self.lines.get(timeout=timeout)
        except queue.Empty:
            self.stop()
            return "crash", f"timeout: no answer within {timeout:.0f} s"
        except (BrokenPipeError, OSError):
            answer = None
        if answer is None:
            rc = self.proc.wait()
            self.proc = None
            return "crash", f"worker died (exit code {rc}: a signal if negative)"
        return answer["outcome"], answer["detail"]

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


# --------------------------------------------------------------------------- corruptions
def truncate(data: bytes, rng: random.Random) -> bytes:
    return data[:rng.randrange(0, max(1, len(data)))]


def flip_bytes(data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data)
    for _ in range(rng.choice([1, 2, 4, 16, 64])):
        i = rng.randrange(len(b))
        b[i] = rng.randrange(256) if rng.random() < 0.5 else b[i] ^ (1 << rng.randrange(8))
    return bytes(b)


def random_bytes(data: bytes, rng: random.Random) -> bytes:
    return rng.randbytes(rng.choice([1, 7, 64, 1000, max(1, len(data))]))


def zero_length(data: bytes, rng: random.Random) -> bytes:
    return b""


def duplicate_chunk(data: bytes, rng: random.Random) -> bytes:
    i = rng.randrange(len(data))
    j = min(len(data), i + rng.randrange(1, 4096))
    return data[:j] + data[i:j] * rng.randint(1, 8) + data[j:]


def header_zone(data: bytes, rng: random.Random) -> bytes:
    """Flip bytes in the first 256 bytes, where headers and sizes live."""
    b = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        i = rng.randrange(min(256, len(b)))
        b[i] = rng.randrange(256)
    return bytes(b)


GENERIC = [truncate, flip_bytes, random_bytes, zero_length, duplicate_chunk, header_zone]
ABSURD_U32 = [0, 1, 3, 2 ** 31 - 1, 2 ** 31, 2 ** 32 - 1, 100_000_000]


def patch_wav(data: bytes, rng: random.Random) -> bytes:
    """Absurd sample rate, channel count, bit depth, block size or data size in a WAV header."""
    b = bytearray(data)
    field = rng.choice(["rate", "channels", "bits", "align", "data"])
    if field == "rate":
        struct.pack_into("<I", b, 24, rng.choice(ABSURD_U32 + [3999, 768_001, 4000]))
    elif field == "channels":
        struct.pack_into("<H", b, 22, rng.choice([0, 3, 255, 65535]))
    elif field == "bits":
        struct.pack_into("<H", b, 34, rng.choice([0, 1, 7, 13, 64, 65535]))
    elif field == "align":
        struct.pack_into("<H", b, 32, rng.choice([0, 1, 3, 65535]))
    else:
        struct.pack_into("<I", b, 40, rng.choice(ABSURD_U32))
    return bytes(b)


def patch_png(data: bytes, rng: random.Random) -> bytes:
    """Absurd width/height/bit depth/colour type in the IHDR chunk, with a valid CRC."""
    b = bytearray(data)
    field = rng.choice(["width", "height", "depth", "colour", "both"])
    big = [0, 1, 9000, 70000, 2 ** 31 - 1]
    if field in ("width", "both"):
        struct.pack_into(">I", b, 16, rng.choice(big))
    if field in ("height", "both"):
        struct.pack_into(">I", b, 20, rng.choice(big))
    if field == "depth":
        b[24] = rng.choice([0, 3, 99])
    if field == "colour":
        b[25] = rng.choice([1, 5, 7, 255])
    struct.pack_into(">I", b, 29, zlib.crc32(bytes(b[12:29])))
    return bytes(b)


_NRRD_EDITS = [
    (r"sizes: [^\n]*", ["sizes: 48 32 1 2000000000", "sizes: 0 0 0 0", "sizes: -1 32 1 5",
                        "sizes: 48 32", "sizes: 1e9 1 1 1", "sizes: 65536 65536 1 5"]),
    (r"type: [^\n]*", ["type: double", "type: float", "type: int64", "type: banana"]),
    (r"dimension: \d+", ["dimension: 100", "dimension: 0", "dimension: 2", "dimension: -3"]),
    (r"encoding: [^\n]*", ["encoding: raw", "encoding: bzip2", "encoding: ascii",
                           "encoding: hex"]),
    (r"kinds: [^\n]*", ["kinds: list list list list", "kinds: vector domain domain list",
                        "kinds: ??? ?"]),
    (r"axis 3 index values:=[^\n]*", ["axis 3 index values:=nan inf -inf 1 2",
                                      "axis 3 index values:=5 4 3 2 1",
                                      "axis 3 index values:=" + "1e308 " * 5,
                                      "axis 3 index values:=x"]),
    (r"space directions: [^\n]*", ["space directions: (nan,0,0) (0,0,0) (0,0,0)",
                                   "space directions: none"]),
]


def patch_nrrd(data: bytes, rng: random.Random) -> bytes:
    """Absurd sizes, types, dimensions, encodings, kinds or time values in a NRRD header."""
    end = data.find(b"\n\n")
    head, body = data[:end].decode("latin-1"), data[end:]
    pattern, options = rng.choice(_NRRD_EDITS)
    head = re.sub(pattern, rng.choice(options), head, count=1)
    return head.encode("latin-1") + body


# Text formats: odd values written into otherwise valid files.
def odd_mentions(data: bytes, rng: random.Random) -> bytes:
    rows = rng.choice([
        "time_s,label\n-1,pancreas\n", "time_s,label\n1e308,pancreas\n",
        "time_s,label\nnan,pancreas\n", "time_s,label\ninf,pancreas\n",
        "time_s,label,end_s\n1.0,pancreas,0.5\n", "time_s,label\n1,\n",
        "time_s,label\n1,Pancreas\n", "time_s,label\n" + "1.0,pancreas\n" * 5000,
        "time_s;label\n1.0;pancreas\n", "\ufefftime_s,label\n1.0,pancreas\n",
        "time_s,label\n1.0,\"pan\ncreas\"\n", "label,time_s\npancreas,1\n",
        "time_s,label\n" + "9" * 400 + ",pancreas\n", "time_s,label\n\x00\x01,\x02\n",
        "1.0,pancreas\n2.0,bile_duct\n", "time_s,label\n1.0,pancreas,1.5,a,notanumber\n",
    ])
    return rows.encode("utf-8")


def odd_transcript(data: bytes, rng: random.Random) -> bytes:
    return rng.choice([
        "WEBVTT\n\n00:01.000 --> 00:00.500\npancreas\n",
        "1\n99:99:99,999 --> 100:00:00,000\nthe pancreas\n",
        "WEBVTT\n\n00:01.000 --> 00:02.000\n<00:05.000>pancreas <99:00.000>bile duct\n",
        "1\n00:00:01,000 --> 00:00:01,000\npancreas\n",
        "1\n--> \npancreas\n", "WEBVTT\n\n" + "00:01.000 --> 00:02.000\npancreas\n\n" * 3000,
        "1\n00:00:01,000 --> garbage\npancreas\n", "\x00" * 100,
        "1\n00:00:01,000 --> 00:00:02,000\n" + "pancreas " * 20000 + "\n",
    ]).encode("utf-8")


def odd_labels(data: bytes, rng: random.Random) -> bytes:
    return rng.choice([
        "[" * 50000 + "]" * 50000, '{"labels": []}', '{"labels": [{"id": "a"}, {"id": "a"}]}',
        '{"labels": [{"id": "a", "color": [NaN, 0, 0]}]}',
        '{"labels": [{"id": "a", "color": "red"}]}', '{"labels": [{"id": "a b"}]}',
        '{"labels": [{"id": "a", "weight": Infinity}]}', '{"labels": [{"id": "a", '
        '"synonyms": ["x"]}, {"id": "b", "synonyms": ["x"]}]}', "null", "1e999",
        '{"labels": [{"id": "a", "thresholds": {"x": 2}}]}',
        '{"labels": [{"id": "' + "a" * 100000 + '"}]}',
    ]).encode("utf-8")


def odd_settings(data: bytes, rng: random.Random) -> bytes:
    value = rng.choice([
        {"audio_offset_s": -1e9}, {"audio_offset_s": 1e308}, {"audio_offset_s": "1"},
        {"audio_offset_s": True}, {"crop": [0, 0, 0, 0]}, {"crop": [-5, -5, 10, 10]},
        {"crop": [0, 0, 2 ** 40, 2 ** 40]}, {"crop": [1.5, 0, 10, 10]}, {"fps": 0},
        {"fps": 1e-9}, {"fps": -25}, {"fps": 1e6}, {"pixel_spacing_mm": [0, 1]},
        {"pixel_spacing_mm": [float("inf"), 1]}, [], "text", {"audio_offset_s": 86399.0},
    ])
    text = json.dumps(value)
    if rng.random() < 0.3:
        text = rng.choice(["[" * 50000, '{"audio_offset_s": NaN}',
                           '{"audio_offset_s": Infinity}', '{"fps": -Infinity}'])
    return text.encode("utf-8")


# --------------------------------------------------------------------------- seed files
def make_seeds(root: Path) -> dict[str, list[tuple[Path, list[Callable]]]]:
    """Small valid files of every format (with their format-aware corruptions), by kind."""
    from EUSVoiceLabelLib.slicer.files import write_frame_sequence

    root.mkdir(parents=True, exist_ok=True)
    size = (48, 32)
    tone16 = mf.tone(1.0, rate=16000)
    seeds: dict[str, list] = collections.defaultdict(list)
    seeds["video"].append((mf.write_video(root / "clip.mp4", 25, size=size), []))
    seeds["video"].append((mf.write_video(root / "clip with track.mkv", 20, size=size,
                                          audio=mf.tone(1.0), audio_rate=48000), []))
    seeds["video"].append((mf.write_video(root / "clip.avi", 15, size=size, codec="mpeg4"), []))
    seeds["audio"].append((mf.write_wav(root / "voice.wav", tone16, 16000), [patch_wav]))
    seeds["audio"].append((mf.write_wav(root / "stereo.wav", mf.tone(0.5, 44100, channels=2),
                                        44100), [patch_wav]))
    for ext, codec in ((".flac", "flac"), (".mp3", "mp3"), (".m4a", "aac")):
        seeds["audio"].append((mf.write_audio(root / f"voice{ext}", tone16, 16000, codec), []))
    for ext in (".png", ".jpg"):
        folder = mf.write_frames_folder(root / f"frames{ext}", 4, size=size, ext=ext)
        seeds["frames"].append((folder, [patch_png] if ext == ".png" else []))
    frames = np.stack([np.full(size[::-1], mf.frame_level(i), np.uint8) for i in range(5)])
    seeds["nrrd"].append((write_frame_sequence(root / "frames.seq.nrrd", frames,
                                               np.arange(5) * 0.04, compression_level=0),
                          [patch_nrrd]))
    seeds["nrrd"].append((write_frame_sequence(root / "gz.seq.nrrd", frames, np.arange(5) * 0.1),
                          [patch_nrrd]))
    text = root / "text"
    text.mkdir()
    (text / "mentions.csv").write_text("time_s,label,end_s,text\n1.0,pancreas,1.6,the pancreas\n"
                                       "2.0,bile_duct,,bile duct\n", encoding="utf-8")
    (text / "talk.srt").write_text("1\n00:00:01,000 --> 00:00:02,500\nhere is the pancreas\n\n"
                                   "2\n00:00:03,000 --> 00:00:04,000\nbile duct\n",
                                   encoding="utf-8")
    (text / "talk.vtt").write_text("WEBVTT\n\n00:01.000 --> 00:02.500\nhere <00:01.500>is the "
                                   "<00:02.000>pancreas\n", encoding="utf-8")
    (text / "labels.json").write_text(json.dumps({"labels": [
        {"id": "pancreas", "synonyms": ["pancreatic body"]}, {"id": "bile_duct"}]}),
        encoding="utf-8")
    (text / "procedure.json").write_text(json.dumps({"audio_offset_s": 0.5, "crop": [0, 0, 48, 32],
                                                     "fps": 25}), encoding="utf-8")
    seeds["mentions"] += [(text / "mentions.csv", [odd_mentions]),
                          (text / "talk.srt", [odd_transcript]),
                          (text / "talk.vtt", [odd_transcript])]
    seeds["labels"].append((text / "labels.json", [odd_labels]))
    seeds["settings"].append((text / "procedure.json", [odd_settings]))
    proc = mf.make_procedure(root / "procedure", seconds=2.0, size=size,
                             mentions="time_s,label,end_s\n0.5,pancreas,0.9\n1.2,bile_duct,\n")
    seeds["procedure"].append((proc, []))
    return seeds


WRONG_EXTENSION = {".mp4": ".wav", ".mkv": ".flac", ".avi": ".png", ".wav": ".mp4",
                   ".flac": ".mkv", ".mp3": ".avi", ".m4a": ".nrrd", ".png": ".jpg",
                   ".jpg": ".png", ".nrrd": ".mp4"}
# How often each kind is drawn (video and procedures are the slowest and the richest).
KIND_WEIGHTS = {"video": 5, "audio": 5, "frames": 3, "nrrd": 4, "procedure": 5, "mentions": 3,
                "labels": 1, "settings": 1}
PROCEDURE_FILES = ["video.mp4", "audio.wav", "mentions.csv", "procedure.json"]


def make_case(i: int, seeds: dict, cases_dir: Path, rng: random.Random
              ) -> tuple[str, Path, str]:
    """Write corrupted case ``i``; returns (kind, path to load, description)."""
    kind = rng.choices(list(KIND_WEIGHTS), weights=list(KIND_WEIGHTS.values()))[0]
    seed, special = rng.choice(seeds[kind])
    case_dir = cases_dir / f"case {i:04d} ü"
    if kind in ("frames", "procedure"):
        target_dir = case_dir / seed.name
        shutil.copytree(seed, target_dir)
        if kind == "frames":
            victim = rng.choice(sorted(p for p in target_dir.iterdir()))
        else:
            victim = target_dir / rng.choice(PROCEDURE_FILES)
            special = {"audio.wav": [patch_wav], "mentions.csv": [odd_mentions],
                       "procedure.json": [odd_settings]}.get(victim.name, [])
            if not victim.exists():
                victim.write_text("{}")
        path = target_dir
    else:
        case_dir.mkdir(parents=True)
        victim = case_dir / seed.name
        shutil.copy(seed, victim)
        path = victim
    data = victim.read_bytes()
    how = rng.choice(GENERIC + special * 3 + ([None] if victim.suffix in WRONG_EXTENSION
                                              and kind not in ("procedure",) else []))
    if how is None:  # wrong extension: the same bytes under another format's name
        wrong = victim.with_name(victim.stem + "_renamed" + WRONG_EXTENSION[victim.suffix])
        victim.rename(wrong)
        if path == victim:
            path = wrong
        return kind, path, f"{victim.name} renamed to {wrong.name}"
    victim.write_bytes(how(data, rng))
    return kind, path, f"{how.__name__}({victim.name})"


def _summarise(name: str, results: list[tuple[str, str, str, str]]) -> dict:
    table: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for kind, _, outcome, _ in results:
        table[kind][outcome] += 1
    summary = {"cases": len(results),
               "by_kind": {k: dict(v) for k, v in sorted(table.items())},
               "outcomes": dict(collections.Counter(r[2] for r in results))}
    FUZZ_REPORT[name] = summary
    print(f"\n{name}: {len(results)} cases run")
    for kind, counts in sorted(table.items()):
        print(f"  {kind:<10} " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    report = os.environ.get("EUSVOICELABEL_FUZZ_REPORT")
    if report:
        Path(report).write_text(json.dumps(FUZZ_REPORT, indent=2), encoding="utf-8")
    return summary


def _run_cases(cases: list[tuple[str, Path, str]], worker: Worker) -> list:
    results = []
    try:
        for kind, path, desc in cases:
            outcome, detail = worker.run(kind, path, CASE_TIMEOUT_S)
            results.append((kind, desc, outcome, detail))
    finally:
        worker.stop()
    return results


def test_corrupted_media_and_text_files(tmp_path):
    """Every corrupted file loads correctly or raises the project's error, in time and memory."""
    root = tmp_path / ODD_DIR
    seeds = make_seeds(root / "seeds")
    rng = random.Random(SEED)
    cases = []
    # The uncorrupted seeds first: they must load ("ok"), which proves the probes are real.
    for kind, items in seeds.items():
        for seed, _ in items:
            cases.append((kind, seed, "valid seed"))
    n_valid = len(cases)
    for i in range(N_CASES):
        cases.append(make_case(i, seeds, root / "cases", rng))
    results = _run_cases(cases, Worker(MEDIA_MEMORY, tmp_path / "worker.log"))
    summary = _summarise("media and text files", results)
    bad_seeds = [r for r in results[:n_valid] if r[2] != "ok"]
    assert not bad_seeds, f"valid seed files do not load: {bad_seeds}"
    crashes = [r for r in results if r[2] == "crash"]
    assert not crashes, "loaders crashed:\n" + "\n".join(map(str, crashes))
    assert summary["outcomes"].get("error", 0) > 0.3 * N_CASES  # the corruptions do bite


# --------------------------------------------------------------------------- checkpoints
def test_corrupted_checkpoints(tmp_path):
    """Truncated, flipped, random and emptied checkpoints are refused with CheckpointError."""
    from test_reliability import tiny_checkpoint

    root = tmp_path / ODD_DIR
    root.mkdir()
    seed = tiny_checkpoint(root / "model.pt")
    data = seed.read_bytes()
    rng = random.Random(SEED + 1)
    cases = [("checkpoint", seed, "valid seed")]
    for i in range(N_CHECKPOINT_CASES):
        how = rng.choice(GENERIC)
        p = root / f"case {i:03d} ü.pt"
        p.write_bytes(how(data, rng))
        cases.append(("checkpoint", p, how.__name__))
    worker = Worker(TORCH_MEMORY, tmp_path / "worker.log", preload="import torch; ")
    results = _run_cases(cases, worker)
    _summarise("checkpoints", results)
    assert results[0][2] == "ok", results[0]
    crashes = [r for r in results if r[2] == "crash"]
    assert not crashes, "checkpoint loading crashed:\n" + "\n".join(map(str, crashes))


# =========================================================================== hypothesis
HYP = settings(max_examples=N_EXAMPLES, deadline=2000, derandomize=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
_TMP = Path(tempfile.mkdtemp(prefix="eusvoicelabel fuzz ü "))
atexit.register(shutil.rmtree, _TMP, True)


def _write(name: str, content: str | bytes) -> Path:
    path = _TMP / name
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8", newline="")
    else:
        path.write_bytes(content)
    return path


LABEL_WORDS = st.sampled_from(["pancreas", "bile_duct", "Bile duct", "portal vein",
                               "portal_vein", "spleen", "", " ", "CBD", "aorta", "confluence"])
NUMBERS = st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr),
                    st.integers(-10 ** 30, 10 ** 30).map(str),
                    st.sampled_from(["", "nan", "inf", "-0", "1e400", "0x10", "1,5", "١٢"]),
                    st.text(max_size=8))
CELL = st.one_of(NUMBERS, LABEL_WORDS, st.text(max_size=20))
ROW = st.lists(CELL, min_size=0, max_size=7)
HEADER = st.sampled_from(["time_s,label", "time_s,label,end_s,text,confidence,source",
                          "time,label", "#time_s,label", "label,time_s", "", "time_s,end_s"])


def _csv_line(cells: list[str]) -> str:
    import csv
    import io
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(cells)
    return buf.getvalue()


@HYP
@given(header=HEADER, rows=st.lists(ROW, max_size=8), raw=st.none() | st.binary(max_size=200))
def test_hypothesis_mentions_csv(header, rows, raw):
    from EUSVoiceLabelLib.core.errors import MentionsError
    from EUSVoiceLabelLib.data.mentions import read_mentions_csv
    from EUSVoiceLabelLib.data.vocabulary import LabelSet

    labels = LabelSet.default()
    content = raw if raw is not None else (header + "\n" if header else "") + \
        "".join(_csv_line(r) for r in rows)
    path = _write("mentions ü.csv", content)
    try:
        mentions = read_mentions_csv(path, labels)
    except MentionsError as exc:
        assert exc.path == str(path)
        return
    assert mentions, "an empty result must be an error"
    times = [m.time_s for m in mentions]
    assert times == sorted(times)
    for m in mentions:
        assert math.isfinite(m.time_s) and m.time_s >= 0 and m.label in labels.ids
        assert m.end_s is None or (math.isfinite(m.end_s) and m.end_s > m.time_s)


SAFE_TEXT = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")), max_size=30)


@HYP
@given(st.lists(st.tuples(st.floats(0, 1e5), st.sampled_from(["pancreas", "bile_duct",
                                                               "portal_vein"]),
                          st.none() | st.floats(0.001, 10), SAFE_TEXT,
                          st.none() | st.floats(0, 1)), min_size=1, max_size=6))
def test_hypothesis_mentions_round_trip(items):
    """What write_mentions_csv writes, read_mentions_csv reads back (3 decimals)."""
    from EUSVoiceLabelLib.data.mentions import Mention, read_mentions_csv, write_mentions_csv

    mentions = [Mention(t, lab, None if d is None else t + d, text, conf, "auto")
                for t, lab, d, text, conf in items]
    path = _TMP / "round trip ü.csv"
    write_mentions_csv(path, mentions)
    back = read_mentions_csv(path)
    assert len(back) == len(mentions)
    for a, b in zip(sorted(mentions, key=lambda m: m.time_s), back):
        assert b.label == a.label and b.text == a.text.strip() and b.source == "auto"
        assert abs(b.time_s - a.time_s) <= 5e-4
        assert (a.end_s is None) == (b.end_s is None) or (a.end_s - a.time_s < 2e-3)


TIMESTAMP = st.one_of(
    st.builds(lambda h, m, s, ms, sep: f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}",
              st.integers(0, 120), st.integers(0, 99), st.integers(0, 99), st.integers(0, 999),
              st.sampled_from([",", "."])),
    st.builds(lambda m, s, ms: f"{m:02d}:{s:02d}.{ms:03d}", st.integers(0, 99),
              st.integers(0, 99), st.integers(0, 999)),
    st.text(max_size=12))
CUE_TEXT = st.lists(st.one_of(st.sampled_from(["the", "pancreas", "bile", "duct", "portal",
                                               "vein", "<b>", "</b>", "<00:01.500>",
                                               "<99:99.999>", "-->"]),
                              st.text(max_size=10)), max_size=10).map(" ".join)


@HYP
@given(vtt=st.booleans(), cues=st.lists(st.tuples(TIMESTAMP, TIMESTAMP, CUE_TEXT), max_size=5),
       raw=st.none() | st.binary(max_size=200), ext=st.sampled_from([".srt", ".vtt"]))
def test_hypothesis_transcripts(vtt, cues, raw, ext):
    from EUSVoiceLabelLib.core.errors import MentionsError
    from EUSVoiceLabelLib.data.mentions import mentions_from_transcript, parse_transcript

    if raw is not None:
        content: str | bytes = raw
    else:
        blocks = [f"{i + 1}\n{a} --> {b}\n{text}\n" for i, (a, b, text) in enumerate(cues)]
        content = ("WEBVTT\n\n" if vtt else "") + "\n".join(blocks)
    path = _write("talk ü" + ext, content)
    try:
        parsed = parse_transcript(path)
        mentions = mentions_from_transcript(path)
    except MentionsError as exc:
        assert exc.path == str(path)
        return
    assert parsed and all(c.end >= c.start >= 0 for c in parsed)
    for m in mentions:
        assert math.isfinite(m.time_s)
        assert m.end_s is None or m.end_s > m.time_s


JSON = st.recursive(st.none() | st.booleans() | st.floats() | st.integers(-10 ** 20, 10 ** 20)
                    | st.text(max_size=10),
                    lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
LABEL_ITEM = st.fixed_dictionaries({}, optional={
    "id": st.one_of(st.sampled_from(["pancreas", "bile_duct", "a-b", "x y", "", "é"]), JSON),
    "name": st.one_of(st.text(max_size=12), JSON),
    "synonyms": st.one_of(st.lists(st.sampled_from(["cbd", "pancreas", "duct", "", " "]),
                                   max_size=3), JSON),
    "color": st.one_of(st.lists(st.floats(), max_size=4), st.lists(st.integers(-1, 300),
                                                                  min_size=3, max_size=3), JSON),
    "weight": st.one_of(st.floats(), JSON),
    "thresholds": st.one_of(st.dictionaries(st.text(max_size=6), st.floats(), max_size=2), JSON),
})


@HYP
@given(doc=st.one_of(JSON, st.lists(LABEL_ITEM, max_size=4),
                     st.fixed_dictionaries({"labels": st.lists(LABEL_ITEM, max_size=4)})),
       raw=st.none() | st.binary(max_size=100))
def test_hypothesis_labels_json(doc, raw):
    from EUSVoiceLabelLib.core.errors import VocabularyError
    from EUSVoiceLabelLib.data.vocabulary import LabelSet

    path = _write("labels ü.json", raw if raw is not None else json.dumps(doc))
    try:
        labels = LabelSet.load(path)
    except VocabularyError as exc:
        assert exc.path == str(path)
        return
    assert len(labels) > 0 and len(set(labels.ids)) == len(labels.ids)
    again = LabelSet.from_json(json.loads(json.dumps(labels.to_json())))
    assert again.ids == labels.ids  # what loads also saves and loads back


@HYP
@given(doc=st.one_of(JSON, st.fixed_dictionaries({}, optional={
    "audio_offset_s": st.one_of(st.floats(), st.integers(-10 ** 20, 10 ** 20), JSON),
    "crop": st.one_of(st.lists(st.integers(-10 ** 12, 10 ** 12), min_size=4, max_size=4), JSON),
    "fps": st.one_of(st.floats(), st.integers(-5, 10 ** 9), JSON),
    "pixel_spacing_mm": st.one_of(st.lists(st.floats(), min_size=2, max_size=2), JSON)})),
    raw=st.none() | st.binary(max_size=100))
def test_hypothesis_procedure_json(doc, raw):
    from EUSVoiceLabelLib.core.errors import ProcedureError
    from EUSVoiceLabelLib.data.procedure import ProcedureSettings

    path = _write("procedure ü.json", raw if raw is not None else json.dumps(doc))
    try:
        s = ProcedureSettings.load(path)
    except ProcedureError as exc:
        assert exc.path == str(path)
        return
    assert math.isfinite(s.audio_offset_s) and abs(s.audio_offset_s) <= 24 * 3600
    assert s.fps is None or 0 < s.fps <= 1000
    assert s.crop is None or len(s.crop) == 4
    assert s.pixel_spacing_mm is None or all(math.isfinite(v) and v > 0
                                             for v in s.pixel_spacing_mm)


@pytest.mark.parametrize("loader", ["labels", "procedure"])
def test_deeply_nested_json_is_refused(tmp_path, loader):
    """A JSON bomb of nested brackets is a project error, not a RecursionError."""
    from EUSVoiceLabelLib.core.errors import EUSVoiceLabelError
    from EUSVoiceLabelLib.data.procedure import ProcedureSettings
    from EUSVoiceLabelLib.data.vocabulary import LabelSet

    path = tmp_path / "deep.json"
    path.write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(EUSVoiceLabelError):
        (LabelSet.load if loader == "labels" else ProcedureSettings.load)(path)
