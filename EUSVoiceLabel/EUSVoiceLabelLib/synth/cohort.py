"""Write a synthetic cohort: per patient video.mp4, audio.wav, mentions.csv, procedure.json,
truth.json (the cohort layout of docs/contracts.md).

Timeline of one procedure: a lead-in view with no landmark named, then one view per mention.
Each view starts with the probe settling (a fast decaying sweep), may carry a distractor
sentence (no landmark name), then the mention phrase; the view is held until the 1 s window
after the landmark words' onset is over plus a short gap.  Speech is placed on the video clock
and written to the audio clock (``audio time = video time + audio_offset_s``).

Randomness: every patient draws from its own generator seeded by (seed, patient index), so the
files do not depend on worker scheduling; x264 runs single-threaded so the same seed gives
byte-identical files.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Optional, Sequence, Union

import av
import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from scipy.io import wavfile

from ..core.csvtext import csv_text
from ..core.errors import ConfigError
from ..core.fileio import atomic_path, atomic_write_text
from ..core import paper
from ..core.paper import CROP_SIZE, TABLE_I, VIDEO_SIZE, WINDOW_S
from ..core.pool import process_cores, run_tasks, spawn_context, spawn_pool
from ..core.progress import CounterProgress, ProgressLike, ProgressTask, as_progress
from ..data.outputs import OutputKind, claim_output
from ..data.vocabulary import LabelSet
from . import images as im, speech as sp


FPS = int(paper.FPS)  # the video's frame rate (a whole number for the encoder)
SAMPLE_RATE = sp.SAMPLE_RATE
LABELS = im.LANDMARKS  # = LabelSet.default().ids

# Carrier phrases around the landmark words ("" = the name alone).
PREFIXES = ("and this is the", "here is the", "you can see the", "there's the", "now we see the",
            "this is the", "looking at the", "so that's the", "okay, the", "I can see the",
            "we are on the", "nice view of the", "and the", "that is the", "", "", "right,")
SUFFIXES = ("", "", "", "here", "clearly", "on the left", "just there", "now", "nicely",
            "which looks normal", "at the bottom", "in the middle", "there", "okay")
# Distractor speech: clinical chatter without any landmark name (checked by the tests).
DISTRACTORS = (
    "okay, let's advance the scope a little", "gain up a bit please", "can you give me some air",
    "hold it there", "I'm withdrawing slowly now", "let me rotate clockwise",
    "no obvious mass here", "that looks normal", "suction please", "we're in the stomach now",
    "let's go down to the duodenum", "measure that for me please", "a bit more water in the "
    "balloon", "freeze the image", "let me adjust the depth", "any lymph nodes there",
    "nothing suspicious", "take a picture please", "good, moving on", "we'll come back to that",
    "the scope is in a good position", "Doppler on please", "okay", "right", "lovely",
    "let me just find it again", "turn clockwise a little", "patient is comfortable",
    "can you press on the abdomen", "a bit of sedation please", "that's a bit better",
)
# Synonyms spoken for each label with relative frequency (all resolve via LabelSet.default()).
SYNONYMS: dict[str, tuple[tuple[str, float], ...]] = {
    "pancreas": (("pancreas", 3), ("head of the pancreas", 2), ("pancreatic head", 1),
                 ("body of the pancreas", 1.5), ("pancreatic body", 0.7),
                 ("tail of the pancreas", 1), ("pancreatic parenchyma", 0.5),
                 ("uncinate process", 0.4)),
    "portal_vein": (("portal vein", 4), ("PV", 1.2), ("main portal vein", 1)),
    "pancreatic_duct": (("pancreatic duct", 3), ("PD", 2.5), ("main pancreatic duct", 1),
                        ("duct of Wirsung", 0.8), ("Wirsung duct", 0.4), ("the duct", 1),
                        ("MPD", 0.5)),
    "portal_venous_confluence": (("portal venous confluence", 2), ("confluence", 3),
                                 ("PVC", 2), ("portal confluence", 1),
                                 ("splenoportal confluence", 0.6)),
    "bile_duct": (("bile duct", 3), ("common bile duct", 2.5), ("CBD", 2),
                  ("common duct", 0.8), ("choledochus", 0.4)),
}


# --------------------------------------------------------------------------- count plans
def count_plan(counts: Union[str, int] = "paper", patients: int = 12,
               seed: int = 0) -> list[dict[str, int]]:
    """Mentions per label for each patient.

    ``"paper"``: Table I (patient i gets column i mod 12, so 12 patients give exactly the
    paper's 143); ``"small"``: about a third of each patient's counts, at least one mention
    per patient; an int N: N mentions per patient spread over the labels.
    """
    if patients < 1:
        raise ConfigError(f"patients must be at least 1, not {patients}")
    if isinstance(counts, str) and counts.strip().isdigit():
        counts = int(counts)
    plan: list[dict[str, int]] = []
    if counts == "paper":
        for p in range(patients):
            plan.append({lab: TABLE_I[lab][p % 12] for lab in LABELS})
    elif counts == "small":
        for p in range(patients):
            col = {lab: TABLE_I[lab][p % 12] for lab in LABELS}
            total = sum(col.values())
            want = max(1, int(round(total / 3)))
            # largest remainder over labels, keeping each label's share
            exact = {lab: c * want / total for lab, c in col.items()}
            small = {lab: int(math.floor(v)) for lab, v in exact.items()}
            rest = sorted(LABELS, key=lambda lab: (-(exact[lab] - small[lab]), LABELS.index(lab)))
            for lab in rest[:want - sum(small.values())]:
                small[lab] += 1
            plan.append(small)
    elif isinstance(counts, int) and not isinstance(counts, bool):
        if counts < 1:
            raise ConfigError(f"counts must be at least 1 mention per patient, not {counts}")
        rng = np.random.default_rng([seed, 7919])
        for p in range(patients):
            start = int(rng.integers(0, len(LABELS)))
            c = {lab: 0 for lab in LABELS}
            for k in range(counts):
                c[LABELS[(start + k) % len(LABELS)]] += 1
            plan.append(c)
    else:
        raise ConfigError(f"counts must be 'paper', 'small' or a whole number, not {counts!r}")
    return plan


# --------------------------------------------------------------------------- patient plan
@dataclass
class PatientSpec:
    """Everything a worker needs to make one patient."""

    index: int
    name: str
    folder: str
    seed: int
    counts: dict[str, int]
    frame_size: tuple[int, int]
    snr_db: float
    audio_mode: str          # "wav" | "embedded"
    audio_offset_s: float
    lead_in_s: float
    gap_s: float
    distractor_prob: float


def _choose(rng: np.random.Generator, items: Sequence[tuple[str, float]]) -> str:
    w = np.array([x[1] for x in items], float)
    return items[int(rng.choice(len(items), p=w / w.sum()))][0]


def _crop_box(w: int, h: int) -> tuple[int, int, int, int]:
    cw = int(round(CROP_SIZE[0] * w / VIDEO_SIZE[0]))
    ch = int(round(CROP_SIZE[1] * h / VIDEO_SIZE[1]))
    return ((w - cw) // 2, (h - ch) // 2, cw, ch)


# --------------------------------------------------------------------------- burnt-in overlay
class _Overlay:
    """Burnt-in text and markers, all outside the crop (they must not matter)."""

    def __init__(self, rng: np.random.Generator, w: int, h: int,
                 crop: tuple[int, int, int, int], name: str):
        self.Image, self.ImageDraw = Image, ImageDraw
        self.w, self.h, self.crop = w, h, crop
        size = max(6, int(round(11 * h / 480)))
        try:
            self.font = ImageFont.load_default(size=size)
        except TypeError:  # Pillow < 10.1
            self.font = ImageFont.load_default()
        self.clock0 = int(rng.integers(8 * 3600, 17 * 3600))
        self.date = f"{int(rng.integers(1, 29)):02d}/{int(rng.integers(1, 13)):02d}/20" \
                    f"{int(rng.integers(15, 24))}"
        self.hosp = ["EUS  7.5MHz  LIN", "EG-3870UTK  EUS", "PENTAX  EUS  7.5"][int(rng.integers(3))]
        self.name = name
        self.cache: dict[tuple, np.ndarray] = {}

    def base(self, t: float, gain_db: float, depth: float) -> np.ndarray:
        key = (int(t), round(gain_db), round(depth, 1))
        img = self.cache.get(key)
        if img is None:
            if len(self.cache) > 64:
                self.cache.clear()
            pil = self.Image.new("L", (self.w, self.h), 0)
            d = self.ImageDraw.Draw(pil)  # PIL, not Slicer  # slicer-api: ignore
            x, y, cw, ch = self.crop
            sec = self.clock0 + int(t)
            clock = f"{sec // 3600:02d}:{sec // 60 % 60:02d}:{sec % 60:02d}"
            top = [f"{self.hosp}   ID {self.name.upper()}", f"{self.date}  {clock}"]
            lh = max(6, int(round(13 * self.h / 480)))
            for i, line in enumerate(top):
                if (i + 1) * lh <= y:
                    d.text((x + 4, i * lh + 1), line, fill=200, font=self.font)
            bottom = f"G {gain_db + 20:4.0f}   DR 60   D {depth * 8:3.1f}cm   25Hz"
            if self.h - (y + ch) >= lh:
                d.text((x + 4, y + ch + 2), bottom, fill=190, font=self.font)
            img = np.asarray(pil, np.uint8).copy()
            # depth ticks in the right margin and an orientation mark in the left margin
            if self.w - (x + cw) >= 3:
                for k in range(0, ch, max(4, int(ch / (8 * depth)))):
                    img[y + k, x + cw + 1: x + cw + 1 + max(2, (self.w - x - cw) // 3)] = 230
            if x >= 3:
                img[y + 2: y + 2 + max(2, x), 1: x - 1] = 255
            self.cache[key] = img
        return img


# --------------------------------------------------------------------------- one patient
def _phrase_parts(rng: np.random.Generator, label: str) -> tuple[str, str, str]:
    words = _choose(rng, SYNONYMS[label])
    prefix = str(PREFIXES[int(rng.integers(len(PREFIXES)))])
    suffix = str(SUFFIXES[int(rng.integers(len(SUFFIXES)))])
    if words.startswith("the "):
        # "the duct": the article belongs to the landmark words
        if prefix.endswith(" the"):
            prefix = prefix[:-4]
        elif prefix in ("okay, the",):
            prefix = "okay,"
    elif prefix and not prefix.endswith(" the") and prefix not in ("right,",):
        prefix = prefix + " the"
    if words.isupper() and prefix.endswith(" the") and rng.random() < 0.4:
        prefix = prefix[:-4]  # "there's PD", "this is CBD"
    return prefix, words, suffix


@dataclass
class _Timeline:
    """The video-clock plan of one patient: speech events (start_s, audio, kind, text,
    speaker), views (start_s, view), mentions, and the length."""

    events: list[dict]
    views: list[dict]
    mentions: list[dict]
    duration: float
    n_frames: int

    @property
    def view_starts(self) -> list[float]:
        """Start of every view, and one past the end."""
        return [v["start_s"] for v in self.views] + [self.duration + 1]


@dataclass
class _Scene:
    """How a patient's frames are drawn: the renderer, the burnt-in overlay, the crop box and
    the occasional gain changes within a view ``(view, time_s, dB)``."""

    renderer: im.Renderer
    overlay: "_Overlay"
    crop: tuple[int, int, int, int]
    gain_steps: list[tuple[int, float, float]]


def make_patient(spec: PatientSpec, progress: ProgressLike = None) -> dict:
    """Render and write one patient folder; returns a short summary.

    ``progress`` counts the mentions whose views are rendered (see :mod:`..core.progress`).
    Every random draw comes from the patient's own generator, in a fixed order.
    """
    torch.set_num_threads(1)
    rng = np.random.default_rng([spec.seed, spec.index, 1])
    folder = Path(spec.folder)
    folder.mkdir(parents=True, exist_ok=True)
    W, H = spec.frame_size
    crop = _crop_box(W, H)
    geom = im.Geometry(crop[2], crop[3])
    look = im.PatientLook.random(rng)
    voices = _choose_voices(rng)
    plans, intro = _plan_speech(spec, rng, voices)
    renderer, tl = _plan_timeline(spec, rng, geom, look, voices, plans, intro)
    pcm, snr, beeps = _mix_audio(spec, rng, tl)
    overlay = _Overlay(rng, W, H, crop, spec.name)
    scene = _Scene(renderer, overlay, crop, _gain_steps(rng, tl))
    with as_progress(progress).task(spec.name, total=len(tl.mentions), unit="mention") as task:
        truth_windows = _write_video(folder / "video.mp4", spec, scene, tl,
                                     pcm if spec.audio_mode == "embedded" else None, task)
    if spec.audio_mode == "wav":
        with atomic_path(folder / "audio.wav") as tmp:
            wavfile.write(tmp, SAMPLE_RATE, pcm)
    _write_patient_files(folder, spec, crop, tl, truth_windows, {
        "snr_db": round(snr, 2), "speakers": [v.to_json() for v in voices],
        "look": look.to_json(), "beeps_audio_s": beeps})
    return {"name": spec.name, "mentions": len(tl.mentions), "frames": tl.n_frames,
            "duration_s": tl.duration}


def _choose_voices(rng: np.random.Generator) -> list:
    """One lead voice, sometimes a second (e.g. a trainee)."""
    speakers = sp.list_speakers()
    lead = int(rng.choice(len(speakers), p=sp.speaker_weights()))
    voices = [speakers[lead]]
    if rng.random() < 0.4:
        w = sp.speaker_weights().copy()
        w[lead] = 0
        voices.append(speakers[int(rng.choice(len(speakers), p=w / w.sum()))])
    return voices


def _plan_speech(spec: PatientSpec, rng: np.random.Generator, voices: list
                 ) -> tuple[list, Optional[str]]:
    """Per mention (label, voice, phrase parts, distractor or None), and the lead-in
    sentence; all speech is synthesised here, so each TTS engine runs once per voice."""
    labels = [lab for lab in LABELS for _ in range(spec.counts.get(lab, 0))]
    rng.shuffle(labels)
    plans = []
    for lab in labels:
        v = voices[0] if len(voices) == 1 or rng.random() < 0.7 else voices[1]
        d = str(DISTRACTORS[int(rng.integers(len(DISTRACTORS)))]) \
            if rng.random() < spec.distractor_prob else None
        plans.append((lab, v, _phrase_parts(rng, lab), d))
    intro = str(DISTRACTORS[int(rng.integers(len(DISTRACTORS)))]) if spec.lead_in_s >= 2 else None
    sp.synthesize_many([(t, v) for _, v, parts, d in plans for t in (*parts, d) if t] +
                       ([(intro, voices[0])] if intro else []))
    return plans, intro


def _plan_timeline(spec: PatientSpec, rng: np.random.Generator, geom: im.Geometry,
                   look: im.PatientLook, voices: list, plans: list, intro: Optional[str]
                   ) -> tuple[im.Renderer, _Timeline]:
    """Views and speech on the video clock: a lead-in view, then one view per mention whose
    named landmark stays in the fan for the whole window."""
    events: list[dict] = []
    views: list[dict] = []
    mentions: list[dict] = []
    first_speech = max(0.6, -spec.audio_offset_s + 0.3)
    views.append({"start_s": 0.0, "view": im.build_view(rng, geom, look, None)})
    if intro:
        a = sp.speak(intro, voices[0])
        if first_speech + len(a) / SAMPLE_RATE < spec.lead_in_s - 0.2:
            events.append({"start_s": first_speech, "audio": a, "kind": "distractor",
                           "text": intro, "speaker": voices[0].name})
    cursor = max(spec.lead_in_s, first_speech + 0.2)
    renderer = im.Renderer(geom, look, rng)
    for lab, v, (pre, words, suf), d in plans:
        t = cursor + rng.uniform(0.15, 0.5)
        if d:
            a = sp.speak(d, v)
            events.append({"start_s": t, "audio": a, "kind": "distractor", "text": d,
                           "speaker": v.name})
            t += len(a) / SAMPLE_RATE + rng.uniform(0.2, 0.5)
        phrase = sp.speak_phrase(pre, words, suf, v, rng)
        for attempt in range(8):
            # the named landmark must stay in the fan for the whole window: else a new view
            view = im.build_view(rng, geom, look, lab)
            settle = cursor + view.motion["sweep_s"] + 0.12   # probe steady by the onset
            start = max(t, settle - phrase.words_start_s)
            onset = start + phrase.words_start_s
            if lab in view.landmarks and _min_visible(
                    renderer, view, view.landmarks[lab],
                    np.arange(-1, 27) / FPS + (round(onset * FPS) / FPS - cursor)) >= 0.7:
                break
        views.append({"start_s": cursor, "view": view})
        end = start + phrase.words_end_s
        events.append({"start_s": start, "audio": phrase.audio, "kind": "mention",
                       "text": phrase.text, "speaker": v.name})
        mentions.append({"label": lab, "time_s": onset, "end_s": end, "words": words,
                         "phrase": phrase.text, "phrase_start_s": start,
                         "phrase_end_s": start + len(phrase.audio) / SAMPLE_RATE,
                         "speaker": v.name, "view": len(views) - 1})
        cursor = max(onset + WINDOW_S + 0.08, start + len(phrase.audio) / SAMPLE_RATE) + \
            spec.gap_s * rng.uniform(0.6, 1.4)
    n_frames = int(math.ceil((cursor + 0.3) * FPS))
    return renderer, _Timeline(events, views, mentions, n_frames / FPS, n_frames)


def _mix_audio(spec: PatientSpec, rng: np.random.Generator, tl: _Timeline
               ) -> tuple[np.ndarray, float, list]:
    """The audio track (int16, on the audio clock): speech with level changes and reverb,
    room noise at the patient's SNR; also the SNR and the beeps' times."""
    n = int(round(tl.duration * SAMPLE_RATE))
    speech = np.zeros(n, np.float32)
    active = np.zeros(n, bool)
    for ev in tl.events:
        i0 = int(round(ev["start_s"] * SAMPLE_RATE))
        a = ev["audio"] * np.float32(10 ** (rng.uniform(-2.5, 2.5) / 20))
        a = a[: max(0, n - i0)]
        speech[i0:i0 + len(a)] += a
        active[i0:i0 + len(a)] = True
    speech = sp.room_reverb(speech, rng, rt60_s=rng.uniform(0.15, 0.4), wet=rng.uniform(0.08, 0.25))
    off = spec.audio_offset_s
    n_audio = int(round((tl.duration + off) * SAMPLE_RATE))
    shift = int(round(off * SAMPLE_RATE))           # audio sample = video sample + shift
    track = np.zeros(n_audio, np.float32)
    act = np.zeros(n_audio, bool)
    lo, hi = max(0, -shift), min(n, n_audio - shift)
    track[lo + shift:hi + shift] = speech[lo:hi]
    act[lo + shift:hi + shift] = active[lo:hi]
    noise, beeps = sp.room_noise(n_audio, rng, mains_hz=float(rng.choice([50.0, 60.0])),
                                 beeps=rng.random() < 0.7)
    snr = spec.snr_db + rng.uniform(-3, 3)
    mixed = sp.mix_at_snr(track, noise, snr, act)
    mixed *= np.float32(0.5 / (np.abs(mixed).max() + 1e-9))
    return np.clip(np.round(mixed * 32767), -32768, 32767).astype(np.int16), snr, beeps


def _gain_steps(rng: np.random.Generator, tl: _Timeline) -> list[tuple[int, float, float]]:
    """Occasional gain changes within a view: (view, time_s, dB)."""
    starts = tl.view_starts
    steps = []
    for k, v in enumerate(tl.views):
        if rng.random() < 0.25:
            steps.append((k, rng.uniform(v["start_s"], starts[k + 1]), rng.uniform(-4, 4)))
    return steps


def _write_patient_files(folder: Path, spec: PatientSpec, crop: tuple[int, int, int, int],
                         tl: _Timeline, truth_windows: list[dict], extra: dict) -> None:
    """mentions.csv, procedure.json and truth.json (``extra``: its SNR, speakers, look and
    beeps)."""
    atomic_write_text(folder / "mentions.csv", csv_text(
        ["time_s", "label", "end_s", "text"],
        [[f"{m['time_s']:.3f}", m["label"], f"{m['end_s']:.3f}", m["words"]]
         for m in sorted(tl.mentions, key=lambda m: m["time_s"])]))
    off = spec.audio_offset_s
    proc = {"audio_offset_s": round(off, 3), "crop": list(crop)}
    atomic_write_text(folder / "procedure.json", json.dumps(proc, indent=2) + "\n")
    W, H = spec.frame_size
    starts, duration, views = tl.view_starts, tl.duration, tl.views
    truth = {
        "generator": "eusvoicelabel synth", "patient": spec.name, "seed": spec.seed,
        "frame_size": [W, H], "crop": list(crop), "fps": FPS, "n_frames": tl.n_frames,
        "duration_s": round(duration, 3), "sample_rate": SAMPLE_RATE,
        "audio": "video.mp4 audio track" if spec.audio_mode == "embedded" else "audio.wav",
        "audio_offset_s": round(off, 3), "snr_db": extra["snr_db"],
        "speakers": extra["speakers"], "look": extra["look"],
        "mentions": [dict({k: (round(v, 4) if isinstance(v, float) else v)
                           for k, v in m.items()}, window=w)
                     for m, w in zip(tl.mentions, truth_windows)],
        "distractors": [{"start_s": round(e["start_s"], 4),
                         "end_s": round(e["start_s"] + len(e["audio"]) / SAMPLE_RATE, 4),
                         "text": e["text"], "speaker": e["speaker"]}
                        for e in tl.events if e["kind"] == "distractor"],
        "views": [{"start_s": round(v["start_s"], 4), "end_s": round(starts[k + 1], 4)
                   if k + 1 < len(views) else round(duration, 4),
                   "named": v["view"].named or None, "landmarks": sorted(v["view"].landmarks),
                   "depth_scale": round(v["view"].depth_scale, 4),
                   "gain_db": round(v["view"].gain_db, 3)} for k, v in enumerate(views)],
        "beeps_audio_s": extra["beeps_audio_s"],
    }
    atomic_write_text(folder / "truth.json", json.dumps(truth, indent=1) + "\n")


def _min_visible(renderer: im.Renderer, view: im.View, pts: np.ndarray,
                 t_rel: np.ndarray) -> float:
    """Smallest fraction of a landmark's points inside the fan over view times ``t_rel``."""
    if len(pts) == 0:
        return 0.0
    return min(float(renderer.in_fan(renderer.screen_points(view, float(t), pts)).mean())
               for t in t_rel)


def _landmark_window(renderer: im.Renderer, view: im.View, t_rel: np.ndarray,
                     geom: im.Geometry) -> dict:
    """Visibility and boxes (output crop px) of every landmark of a view over a window."""
    out = {}
    mid = len(t_rel) // 2
    for lab, pts in view.landmarks.items():
        if len(pts) == 0:
            continue
        fracs, boxes = [], []
        for t in t_rel:
            xy = renderer.screen_points(view, float(t), pts)
            inside = renderer.in_fan(xy)
            fracs.append(float(inside.mean()))
            if inside.any():
                q = geom.to_output(xy[inside])
                boxes.append((q[:, 0].min(), q[:, 1].min(), q[:, 0].max(), q[:, 1].max()))
            else:
                boxes.append(None)
        good = [b for b in boxes if b is not None]
        if not good:
            out[lab] = {"visible": False, "min_fraction": 0.0, "mean_fraction": 0.0,
                        "bbox": None, "bbox_union": None}
            continue
        b = boxes[mid] or good[0]
        u = (min(x[0] for x in good), min(x[1] for x in good),
             max(x[2] for x in good), max(x[3] for x in good))

        def xywh(bb):
            return [int(math.floor(bb[0])), int(math.floor(bb[1])),
                    int(math.ceil(bb[2] - bb[0])) + 1, int(math.ceil(bb[3] - bb[1])) + 1]

        out[lab] = {"visible": min(fracs) >= 0.5, "min_fraction": round(min(fracs), 3),
                    "mean_fraction": round(float(np.mean(fracs)), 3),
                    "bbox": xywh(b), "bbox_union": xywh(u)}
    return out


def _write_video(path: Path, spec: PatientSpec, scene: _Scene, tl: _Timeline,
                 pcm: Optional[np.ndarray], task: ProgressTask) -> list[dict]:
    """Render all frames and encode them (H.264, optional AAC track; ``task`` advances as each
    mention's view is done); returns the truth windows."""
    W, H = spec.frame_size
    x, y, cw, ch = scene.crop
    renderer, overlay, gain_steps = scene.renderer, scene.overlay, scene.gain_steps
    views, view_starts, n_frames = tl.views, tl.view_starts, tl.n_frames
    windows: list[dict] = []
    with atomic_path(path) as tmp:
        container = av.open(str(tmp), mode="w", format="mp4")
        vs = container.add_stream("libx264", rate=FPS)
        vs.width, vs.height, vs.pix_fmt = W, H, "yuv420p"
        vs.codec_context.thread_count = 1
        vs.options = {"preset": "superfast", "crf": "25", "threads": "1", "g": "50",
                      "x264-params": "threads=1:lookahead_threads=1"}
        astream = None
        if pcm is not None:
            astream = container.add_stream("aac", rate=SAMPLE_RATE)
            astream.layout = "mono"
            astream.bit_rate = 96000
            astream.codec_context.thread_count = 1
        apos = 0
        yuv = np.full((H * 3 // 2, W), 128, np.uint8)   # grey: chroma planes stay 128

        def mux_audio(until_s: float) -> None:
            nonlocal apos
            if astream is None:
                return
            stop = min(len(pcm), int(round(until_s * SAMPLE_RATE)))
            while apos < stop:
                chunk = pcm[apos:min(stop, apos + 1024)]
                fr = av.AudioFrame.from_ndarray(chunk[None, :], format="s16", layout="mono")
                fr.sample_rate = SAMPLE_RATE
                fr.pts = apos
                fr.time_base = Fraction(1, SAMPLE_RATE)
                for pkt in astream.encode(fr):
                    container.mux(pkt)
                apos += len(chunk)

        for k, v in enumerate(views):
            view: im.View = v["view"]
            f0 = int(math.ceil(v["start_s"] * FPS - 1e-9))
            f1 = min(n_frames, int(math.ceil(view_starts[k + 1] * FPS - 1e-9)))
            for c0 in range(f0, f1, FPS):
                idx = np.arange(c0, min(f1, c0 + FPS))
                t_abs = idx / FPS
                gains = np.full(len(idx), view.gain_db)
                for (vk, ts, g) in gain_steps:
                    if vk == k:
                        gains = gains + np.where(t_abs >= ts, g, 0.0)
                frames = renderer.render(view, t_abs - v["start_s"], gains)
                for j, fi in enumerate(idx):
                    yuv[:H] = overlay.base(t_abs[j], float(gains[j]), view.depth_scale)
                    yuv[y:y + ch, x:x + cw] = frames[j]
                    vf = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
                    vf.pts = int(fi)
                    for pkt in vs.encode(vf):
                        container.mux(pkt)
                mux_audio((idx[-1] + 1) / FPS)
            if k > 0:
                task.advance()   # view k shows mention k-1
        for pkt in vs.encode():
            container.mux(pkt)
        if astream is not None:
            mux_audio(len(pcm) / SAMPLE_RATE + 1)
            for pkt in astream.encode():
                container.mux(pkt)
        container.close()
    # truth windows (pure geometry; no pixels needed)
    for m in tl.mentions:
        k = m["view"]
        view = views[k]["view"]
        f0 = int(round(round(m["time_s"], 3) * FPS))   # as read back from mentions.csv
        fr = np.arange(f0, min(n_frames, f0 + FPS))
        vis = _landmark_window(renderer, view, fr / FPS - views[k]["start_s"], renderer.g)
        named = vis.get(m["label"], {"visible": False, "bbox": None})
        windows.append({"start_frame": int(f0), "frames": int(len(fr)),
                        "named_visible": bool(named["visible"]), "named_bbox": named["bbox"],
                        "landmarks": vis,
                        "visible": sorted(k2 for k2, v2 in vis.items() if v2["visible"])})
    return windows


# --------------------------------------------------------------------------- the cohort
def _earlier_synthetic_cohort(folder: Path) -> bool:
    """A synthetic cohort written before the output marker existed: every patient folder has
    the generator's truth.json."""
    patients = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return bool(patients) and all((p / "truth.json").is_file() for p in patients)


#: ``synth OUT``: an empty or new folder, or (with ``--force``) an earlier synthetic cohort.
SYNTH_COHORT = OutputKind("synth", "a synthetic cohort of 'eusvoicelabel synth'", folder=True,
                          signature=_earlier_synthetic_cohort)


@dataclass(frozen=True)
class CohortPlan:
    """What a synthetic cohort is made of (see :func:`synth_cohort` for each field)."""

    patients: int = 12
    seed: int = 0
    counts: Union[str, int] = "paper"
    snr_db: float = 15.0
    frame_size: tuple[int, int] = VIDEO_SIZE
    lead_in_s: float = 2.5
    gap_s: float = 0.5
    distractor_prob: float = 0.5
    embedded_audio: bool = True
    offset_fraction: float = 0.35

    def patient_specs(self, out: Path) -> list[PatientSpec]:
        """One :class:`PatientSpec` per patient (which one has its audio in the video, whose
        audio file has an offset), drawn from the cohort's own generator."""
        W, H = (int(v) for v in self.frame_size)
        if W < 64 or H < 48 or W % 2 or H % 2:
            raise ConfigError(f"frame_size {self.frame_size} must be even and at least 64x48")
        plan = count_plan(self.counts, self.patients, self.seed)
        rng = np.random.default_rng([self.seed, 104729])
        emb = int(rng.integers(self.patients)) if self.embedded_audio else -1
        specs = []
        width = max(2, len(str(self.patients)))
        for i in range(self.patients):
            name = f"patient{i + 1:0{width}d}"
            mode = "embedded" if i == emb else "wav"
            off = 0.0
            if mode == "wav" and rng.random() < self.offset_fraction:
                off = float(np.round(rng.choice([-1, 1, 1]) * rng.uniform(0.15, 1.5), 3))
                off = max(off, -0.4)
            specs.append(PatientSpec(i, name, str(out / name), self.seed, plan[i], (W, H),
                                     float(self.snr_db), mode, off, float(self.lead_in_s),
                                     float(self.gap_s), float(self.distractor_prob)))
        return specs


def synth_cohort(out: Union[str, os.PathLike], patients: int = 12, seed: int = 0,
                 counts: Union[str, int] = "paper", snr_db: float = 15.0,
                 progress: ProgressLike = True, frame_size: tuple[int, int] = VIDEO_SIZE,
                 lead_in_s: float = 2.5, gap_s: float = 0.5, distractor_prob: float = 0.5,
                 workers: Optional[int] = None, force: bool = False,
                 embedded_audio: bool = True, offset_fraction: float = 0.35) -> Path:
    """Write a synthetic EUS + speech cohort to ``out`` and return its path
    (:func:`write_cohort` with these settings as a :class:`CohortPlan`).

    Args:
        out: cohort folder (created; must be empty unless ``force``).
        patients: number of patients (``patient01`` ...).
        seed: same seed gives byte-identical files.
        counts: "paper" (Table I), "small" (~1/3) or mentions per patient (int).
        snr_db: speech-to-room-noise ratio (each patient varies by +-3 dB).
        progress: reporter of the mentions rendered (see :mod:`..core.progress`).
        frame_size: (W, H) of the video; the crop is the central 690x350 scaled alike and is
            written to procedure.json.  Use e.g. (240, 160) for fast tests.
        lead_in_s, gap_s, distractor_prob: timeline lead-in, extra hold after each window,
            probability of a distractor sentence before a mention.
        workers: processes (default: the cores of this process, at most the number of
            patients).
        force: replace an earlier synthetic cohort in ``out`` (a folder holding anything else
            is never written into: :func:`..data.outputs.claim_output`).
        embedded_audio: one patient gets its speech as the mp4's AAC track and no audio file.
        offset_fraction: fraction of the other patients whose audio file has an offset.
    """
    plan = CohortPlan(patients, seed, counts, snr_db, tuple(frame_size), lead_in_s, gap_s,
                      distractor_prob, embedded_audio, offset_fraction)
    return write_cohort(out, plan, progress, workers, force)


def write_cohort(out: Union[str, os.PathLike], plan: CohortPlan, progress: ProgressLike = True,
                 workers: Optional[int] = None, force: bool = False) -> Path:
    """Write the cohort of ``plan`` to ``out`` (see :func:`synth_cohort`), its patients in
    ``workers`` processes, the largest first."""
    out = Path(out)
    specs = plan.patient_specs(out)
    if not math.isfinite(plan.snr_db):
        raise ConfigError(f"the speech-to-noise ratio must be a finite number of dB, not "
                          f"{plan.snr_db}")
    if plan.patients < 1:
        raise ConfigError(f"a cohort needs at least 1 patient, not {plan.patients}")
    claim_output(out, SYNTH_COHORT, replace=force)
    sp.check_engines()
    labelset = LabelSet.default()
    for lab in LABELS:
        if labelset.resolve(lab) != lab:
            raise ConfigError(f"label {lab!r} is not in the default vocabulary")
    out.mkdir(parents=True, exist_ok=True)
    workers = max(1, min(workers or process_cores(), len(specs)))
    total = sum(sum(s.counts.values()) for s in specs)
    # largest patients first so the pool stays busy
    order = sorted(specs, key=lambda s: -sum(s.counts.values()))
    with as_progress(progress).task("synth", total=total, unit="mention",
                                    transient=True) as task:
        if workers == 1:
            reporter = CounterProgress(task.advance)
            for s in order:
                make_patient(s, reporter)
            return out
        done = spawn_context().Value("i", 0)
        with spawn_pool(workers, _init_worker, (done,)) as pool:
            run_tasks(pool, _make_patient_in_worker, [(s,) for s in order], poll_s=0.5,
                      on_poll=lambda: task.update(done.value))
        task.update(total)
    return out


_DONE = None  # shared mention counter of a worker process (for the parent's progress)


def _init_worker(counter) -> None:
    global _DONE
    _DONE = counter


def _count_done(n: float) -> None:
    with _DONE.get_lock():
        _DONE.value += int(n)


def _make_patient_in_worker(spec: PatientSpec) -> dict:
    return make_patient(spec, CounterProgress(_count_done))
