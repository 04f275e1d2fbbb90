"""Sample windows: contents, the on-disk cache, the torch Dataset and bounded memory on a
20-minute procedure."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import mediafactory as mf
import numpy as np
import pytest

from EUSVoiceLabelLib.data.dataset import WindowSettings, build_window_set, cache_key
from EUSVoiceLabelLib.data.vocabulary import LabelSet


@pytest.fixture
def cohort(tmp_path):
    root = tmp_path / "cohort"
    mf.make_procedure(root / "p1", mentions="time_s,label,end_s\n1.0,pancreas,1.5\n2.0,bile_duct,\n")
    mf.make_procedure(root / "p2", mentions="time_s,label\n0.5,portal_vein\n", offset=1.0,
                      audio="track")
    mf.make_procedure(root / "p3", mentions=None)  # no mentions: skipped with a warning
    return root


def test_windows_content(cohort, tmp_path):
    ws = build_window_set(cohort, image_size=(16, 24), cache_dir=tmp_path / "c", progress=False)
    assert ws.images.shape == (3, 25, 16, 24) and ws.images.dtype == np.uint8
    assert ws.voices.shape == (3, 1024, 66) and ws.voices.dtype == np.float32
    assert ws.patients == ["p1", "p1", "p2"]
    assert list(ws.labels) == [0, 4, 1]
    np.testing.assert_allclose(ws.times, [1.0, 2.0, 0.5])
    # Image = the 25 frames from the onset frame (flat frames keep their level when resized).
    assert [mf.frame_index_of(f.mean()) for f in ws.images[0]] == list(range(25, 50))
    assert ws.label_counts()["pancreas"] == 1
    sub = ws.subset(ws.indices_of(["p2"]))
    assert sub.patients == ["p2"] and sub.images.shape[0] == 1
    ds = ws.torch_dataset()
    image, voice, label = ds[2]
    assert image.shape == (25, 16, 24) and float(image.max()) <= 1.0
    assert voice.shape == (1024, 66) and int(label) == 1


def test_voice_window_uses_end_and_offset(cohort, tmp_path):
    from EUSVoiceLabelLib import load_procedure

    proc = load_procedure(cohort / "p1")
    v = proc.voice_window(proc.mentions[0])  # 1.0-1.5 s: half a second then silence
    assert np.abs(v[:23000]).min() >= 0 and np.abs(v[:24000]).max() > 0.03
    assert np.abs(v[24100:]).max() == 0
    proc2 = load_procedure(cohort / "p2")
    # Offset 1.0 (+ AAC priming handled by the container's start times): audio second 1.
    v2 = proc2.voice_window(proc2.mentions[0])
    assert np.abs(v2[:20000]).max() == pytest.approx(0.04, abs=0.006)


def test_cache_is_reused_and_invalidated(cohort, tmp_path):
    cache = tmp_path / "c"
    build_window_set(cohort, image_size=(16, 24), cache_dir=cache, progress=False)
    files = sorted(cache.glob("*.npz"))
    assert [f.name.split("-")[0] for f in files] == ["p1", "p2"]
    stamp = {f: f.stat().st_mtime_ns for f in files}
    # Second build: served from the cache without touching it.
    ws = build_window_set(cohort, image_size=(16, 24), cache_dir=cache, progress=False)
    assert {f: f.stat().st_mtime_ns for f in sorted(cache.glob("*.npz"))} == stamp
    assert len(ws) == 3
    # A changed input changes the key: the stale entry is replaced.
    (cohort / "p1" / "mentions.csv").write_text("time_s,label\n1.0,pancreas\n")
    ws = build_window_set(cohort, image_size=(16, 24), cache_dir=cache, progress=False)
    assert len(ws) == 2
    assert len(list(cache.glob("p1-*.npz"))) == 1
    # Other settings, other key.
    ls = LabelSet.default()
    assert cache_key(cohort / "p1", ls, WindowSettings((16, 24))) != \
        cache_key(cohort / "p1", ls, WindowSettings((16, 32)))


def test_default_cache_is_outside_the_cohort(cohort, tmp_path, monkeypatch):
    monkeypatch.setenv("EUSVOICELABEL_CACHE", str(tmp_path / "usercache"))
    before = sorted(p.name for p in cohort.rglob("*"))
    build_window_set(cohort, image_size=(16, 24), progress=False)
    assert sorted(p.name for p in cohort.rglob("*")) == before
    assert list((tmp_path / "usercache").rglob("*.npz"))


MEMORY_SCRIPT = textwrap.dedent("""
    import json, resource, sys, tracemalloc
    import av, torch  # libraries' fixed cost (the CUDA build of torch maps ~0.5 GB)
    from EUSVoiceLabelLib.data.dataset import extract_windows
    from EUSVoiceLabelLib import load_procedure
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    tracemalloc.start()
    proc = load_procedure(sys.argv[1])
    win = extract_windows(proc)
    _, peak = tracemalloc.get_traced_memory()
    print(json.dumps({"windows": len(win.labels), "frames": proc.n_frames,
                      "shape": list(win.images.shape), "tracemalloc_peak": peak,
                      "rss_peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                      "rss_libraries": base,
                      "first_levels": [float(f.mean()) for f in win.images[0][:3]]}))
""")


def test_windows_from_a_20_minute_video_in_bounded_memory(tmp_path):
    folder = tmp_path / "long"
    folder.mkdir()
    mf.write_long_video(folder / "video.mp4", 20 * 60, size=(720, 480))
    mf.write_wav(folder / "audio.wav", mf.tone(20 * 60, rate=16000, amp=0.1), 16000)
    times = np.linspace(5, 20 * 60 - 5, 30)
    labels = LabelSet.default().ids
    (folder / "mentions.csv").write_text(
        "time_s,label\n" + "".join(f"{t:.2f},{labels[i % 5]}\n" for i, t in enumerate(times)))
    out = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(folder)], check=True,
                         capture_output=True, text=True, timeout=300)
    stats = json.loads(out.stdout.strip().splitlines()[-1])
    assert stats["frames"] == 30000 and stats["windows"] == 30
    assert stats["shape"] == [30, 25, 350, 690]
    # The whole video as frames would be 30000 x 480 x 720 bytes = 10 GB; the 30 windows
    # themselves are 181 MB and the 20-min 16 kHz audio 77 MB.
    assert stats["rss_peak"] - stats["rss_libraries"] < 1024 ** 3, stats
    assert stats["tracemalloc_peak"] < 600 * 1024 ** 2, stats
