"""Synthetic EUS B-mode scenes: tissue, landmarks, speckle, attenuation, probe motion.

A *view* is a static 2-D scene in world pixel coordinates (a tissue echogenicity map with
landmarks drawn into it, multiplied by speckle and attenuated along the beams from the
transducer), stored in dB.  Frames are rendered from the view by a per-frame rigid+zoom
transform (slow probe drift, rotation, breathing-like zoom) with torch ``grid_sample``, then
screen-fixed effects are added (time-gain compensation, the bright near-field interface,
frame-to-frame speckle decorrelation, gain), log-compressed to 8 bits and masked to the fan.

Everything is sized relative to the 690x350 crop of a 720x480 frame, so smaller frame sizes
give the same scene at lower resolution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import av
import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

LANDMARKS = ("pancreas", "portal_vein", "pancreatic_duct", "portal_venous_confluence",
             "bile_duct")

# Which other landmarks tend to be in view when one is named (probabilities), from anatomy:
# the duct lies in the pancreas; confluence views often show pancreas and duct; the bile duct
# runs beside the pancreatic head near the portal vein.
_CO_VISIBLE = {
    "pancreas": {"pancreatic_duct": 0.45, "bile_duct": 0.2, "portal_vein": 0.15,
                 "portal_venous_confluence": 0.2},
    "pancreatic_duct": {"pancreas": 1.0, "portal_venous_confluence": 0.25, "bile_duct": 0.2,
                        "portal_vein": 0.1},
    "portal_vein": {"bile_duct": 0.4, "pancreas": 0.3, "pancreatic_duct": 0.5},
    "portal_venous_confluence": {"pancreas": 0.6, "pancreatic_duct": 0.65, "bile_duct": 0.1},
    "bile_duct": {"pancreas": 0.6, "pancreatic_duct": 0.4, "portal_vein": 0.35},
}


@dataclass(frozen=True)
class PatientLook:
    """Per-patient imaging settings (machine preset, body habitus)."""

    speckle_lat: float      # speckle grain size, lateral (px at 720x480)
    speckle_ax: float       # speckle grain size, axial
    speckle_contrast: float  # scales speckle dB spread
    dynamic_range_db: float
    atten_db: float          # round-trip attenuation over the full depth in tissue
    tgc_comp: float          # fraction of the mean attenuation the TGC gives back
    gain_db: float
    pancreas_db: float       # pancreas echogenicity vs. surrounding tissue (+ or -)
    pancreas_grain: float    # pancreas speckle grain scale vs. background
    half_angle_deg: float    # fan half-angle
    near_field_db: float

    @staticmethod
    def random(rng: np.random.Generator) -> "PatientLook":
        return PatientLook(
            speckle_lat=rng.uniform(2.2, 4.2), speckle_ax=rng.uniform(1.0, 1.8),
            speckle_contrast=rng.uniform(0.75, 1.15), dynamic_range_db=rng.uniform(42, 58),
            atten_db=rng.uniform(10, 22), tgc_comp=rng.uniform(0.5, 0.85),
            gain_db=rng.uniform(-3, 3),
            pancreas_db=float(rng.choice([-1, 1]) * rng.uniform(1.5, 5.0)),
            pancreas_grain=rng.uniform(0.7, 1.5), half_angle_deg=rng.uniform(58, 66),
            near_field_db=rng.uniform(8, 16))

    def to_json(self) -> dict:
        return {k: round(float(v), 4) for k, v in self.__dict__.items()}


@dataclass
class Geometry:
    """Scene geometry for one output crop size.

    Scenes are built and rendered at an internal size ``crop_w`` x ``crop_h`` (at most 360 px
    wide, for speed; speckle grains are several output pixels anyway) and upsampled to the
    output crop ``out_w`` x ``out_h``.  ``q`` = internal / output scale.
    """

    out_w: int
    out_h: int
    q: float = field(init=False)
    crop_w: int = field(init=False)
    crop_h: int = field(init=False)
    s: float = field(init=False)           # internal px per px of a 690x350 crop
    world_w: int = field(init=False)
    world_h: int = field(init=False)
    apex_s: tuple[float, float] = field(init=False)   # apex in (internal) screen px (x, y)
    apex_w: tuple[float, float] = field(init=False)   # apex in world px
    r0: float = field(init=False)
    r1: float = field(init=False)

    def __post_init__(self) -> None:
        self.q = min(1.0, 360.0 / self.out_w)
        self.crop_w = max(16, int(round(self.out_w * self.q)))
        self.crop_h = max(16, int(round(self.out_h * self.q)))
        self.s = self.crop_w / 690.0
        self.world_w = int(round(self.crop_w * 1.3))
        self.world_h = int(round(self.crop_h * 1.45))
        self.apex_s = (self.crop_w / 2.0, -0.12 * self.crop_h)
        mx = (self.world_w - self.crop_w) / 2.0
        my = 0.12 * self.crop_h
        self.apex_w = (self.apex_s[0] + mx, self.apex_s[1] + my)
        self.r0 = 0.19 * self.crop_h
        self.r1 = self.crop_h * 1.115

    def to_output(self, xy: np.ndarray) -> np.ndarray:
        """Internal screen px -> output crop px (pixel centres preserved)."""
        return (np.asarray(xy) + 0.5) * np.array([self.out_w / self.crop_w,
                                                  self.out_h / self.crop_h]) - 0.5


@dataclass
class Shape:
    """A landmark or other structure in world px: signed distance field (<0 inside)."""

    kind: str
    sdf: np.ndarray           # full world grid, float32
    fluid: bool
    points: np.ndarray        # (n, 2) world (x, y) samples inside the shape, for visibility


@dataclass
class View:
    """A static scene; ``db`` is the world image in dB (before screen effects)."""

    db: np.ndarray
    landmarks: dict[str, np.ndarray]      # label -> (n, 2) world points inside it
    named: str
    depth_scale: float
    gain_db: float
    motion: dict


# --------------------------------------------------------------------------- helpers
def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Zero-mean unit-std smooth random field (filtered white noise at low res, upsampled)."""
    f = max(1.0, sigma / 3.0)
    small = (int(math.ceil(shape[0] / f)) + 2, int(math.ceil(shape[1] / f)) + 2)
    n = gaussian_filter(rng.standard_normal(small), sigma / f, mode="wrap").astype(np.float32)
    if f > 1:
        big = (int(small[0] * f), int(small[1] * f))
        n = F.interpolate(torch.from_numpy(n)[None, None], size=big, mode="bilinear",
                          align_corners=False)[0, 0].numpy()
    n = n[:shape[0], :shape[1]]
    n = n - n.mean()
    return (n / (n.std() + 1e-9)).astype(np.float32)


def _speckle_db(rng: np.random.Generator, shape: tuple[int, int], lat: float,
                ax: float) -> np.ndarray:
    """Fully developed speckle in dB: 20 log10 |z| of a low-pass filtered complex Gaussian
    field (|z| is Rayleigh distributed), grain size ``lat`` x ``ax`` px."""
    z = rng.standard_normal((2,) + shape).astype(np.float32)
    z[0] = gaussian_filter(z[0], (ax, lat))
    z[1] = gaussian_filter(z[1], (ax, lat))
    inten = z[0] ** 2 + z[1] ** 2
    inten /= inten.mean() + 1e-12
    return (10.0 * np.log10(inten + 1e-4)).astype(np.float32)


def _seg_dist(X: np.ndarray, Y: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Distance from each (X, Y) to a polyline ``pts`` (n, 2)."""
    d = np.full(X.shape, np.inf, np.float32)
    for (x0, y0), (x1, y1) in zip(pts[:-1], pts[1:]):
        vx, vy = x1 - x0, y1 - y0
        L2 = vx * vx + vy * vy + 1e-9
        t = np.clip(((X - x0) * vx + (Y - y0) * vy) / L2, 0, 1)
        d = np.minimum(d, np.hypot(X - (x0 + t * vx), Y - (y0 + t * vy)))
    return d


def _curve(p0, p1, bend: float, n: int = 14) -> np.ndarray:
    """Quadratic Bezier from p0 to p1 bent sideways by ``bend`` (px)."""
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    mid = (p0 + p1) / 2
    d = p1 - p0
    nrm = np.array([-d[1], d[0]]) / (np.hypot(*d) + 1e-9)
    c = mid + bend * nrm
    t = np.linspace(0, 1, n)[:, None]
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * c + t ** 2 * p1


class _Canvas:
    """World grid coordinates shared by shape builders."""

    def __init__(self, g: Geometry):
        self.g = g
        self.Y, self.X = np.mgrid[0:g.world_h, 0:g.world_w].astype(np.float32)

    def tube(self, pts: np.ndarray, width: float) -> np.ndarray:
        # distances only inside the bounding box (+ margin); far away = large
        m = width / 2 + 12 * self.g.s + 2
        x0 = int(max(0, pts[:, 0].min() - m)); x1 = int(min(self.g.world_w, pts[:, 0].max() + m + 1))
        y0 = int(max(0, pts[:, 1].min() - m)); y1 = int(min(self.g.world_h, pts[:, 1].max() + m + 1))
        out = np.full(self.X.shape, 1e4, np.float32)
        if x1 > x0 and y1 > y0:
            out[y0:y1, x0:x1] = _seg_dist(self.X[y0:y1, x0:x1], self.Y[y0:y1, x0:x1], pts) - width / 2
        return out

    def ellipse(self, cx, cy, a, b, ang) -> np.ndarray:
        c, s = math.cos(ang), math.sin(ang)
        xr = (self.X - cx) * c + (self.Y - cy) * s
        yr = -(self.X - cx) * s + (self.Y - cy) * c
        return ((np.sqrt((xr / a) ** 2 + (yr / b) ** 2) - 1.0) * min(a, b)).astype(np.float32)

    def world_of_screen(self, x: float, y: float) -> tuple[float, float]:
        """World coordinates of a screen point at the identity pose."""
        g = self.g
        return x - g.apex_s[0] + g.apex_w[0], y - g.apex_s[1] + g.apex_w[1]


def _inside_points(rng: np.random.Generator, sdf: np.ndarray, n: int = 256) -> np.ndarray:
    ys, xs = np.nonzero(sdf < 0)
    if len(xs) == 0:
        return np.zeros((0, 2), np.float32)
    idx = rng.choice(len(xs), size=min(n, len(xs)), replace=False)
    return np.stack([xs[idx], ys[idx]], 1).astype(np.float32)


# --------------------------------------------------------------------------- scene building
def _place(rng: np.random.Generator, g: Geometry, central: bool) -> tuple[float, float]:
    """A screen point inside the fan: central for the named landmark, anywhere otherwise."""
    if central:
        r = rng.uniform(g.r0 + 0.30 * g.crop_h, g.r0 + 0.62 * g.crop_h)
        a = rng.uniform(-0.45, 0.45)
    else:
        r = rng.uniform(g.r0 + 0.15 * g.crop_h, g.r1 - 0.12 * g.crop_h)
        a = rng.uniform(-0.8, 0.8)
    return g.apex_s[0] + r * math.sin(a), g.apex_s[1] + r * math.cos(a)


def _build_shapes(rng: np.random.Generator, cv: _Canvas, named: str,
                  present: list[str]) -> list[Shape]:
    """Draw the landmarks (named one central) plus unlabelled look-alikes."""
    g, s = cv.g, cv.g.s
    shapes: list[Shape] = []
    panc_info = None
    order = sorted(present, key=lambda k: (k != "pancreas", k != named))

    def free(sdf: np.ndarray, allow: tuple[str, ...] = ()) -> bool:
        for sh in shapes:
            if sh.kind in allow:
                continue
            if np.any((sdf < 4 * s) & (sh.sdf < 4 * s)):
                return False
        return True

    for kind in order:
        for attempt in range(25):
            central = kind == named or (kind == "pancreas" and named == "pancreatic_duct")
            cx, cy = cv.world_of_screen(*_place(rng, g, central and attempt < 20))
            if kind == "pancreas":
                a, b = rng.uniform(120, 230) * s, rng.uniform(55, 95) * s
                ang = rng.uniform(-0.45, 0.45)
                sdf = cv.ellipse(cx, cy, a, b, ang)
                sdf += _smooth_noise(rng, sdf.shape, 25 * s) * 0.22 * b
                panc_info = (cx, cy, a, b, ang)
                allow: tuple[str, ...] = ()
            elif kind == "pancreatic_duct" and panc_info is not None:
                pcx, pcy, a, b, ang = panc_info
                L = rng.uniform(0.45, 0.8) * a
                off = rng.uniform(-0.25, 0.25) * b
                ca, sa = math.cos(ang), math.sin(ang)
                p0 = (pcx - L * ca - off * sa, pcy - L * sa + off * ca)
                p1 = (pcx + L * ca - off * sa, pcy + L * sa + off * ca)
                sdf = cv.tube(_curve(p0, p1, rng.uniform(-0.25, 0.25) * b),
                              rng.uniform(5, 11) * s)
                allow = ("pancreas",)
                if not np.all(shapes[0].sdf[sdf < 0] < 0) and attempt < 24:
                    continue   # the duct must lie inside the pancreas
            elif kind == "pancreatic_duct":
                continue
            elif kind == "portal_vein":
                a, b = rng.uniform(22, 42) * s, rng.uniform(16, 32) * s
                sdf = cv.ellipse(cx, cy, a, b, rng.uniform(0, math.pi))
                allow = ()
            elif kind == "portal_venous_confluence":
                w = rng.uniform(20, 34) * s
                base = rng.uniform(0, 2 * math.pi)
                sdf = None
                for k, dang in enumerate((0.0, rng.uniform(1.7, 2.4), -rng.uniform(1.7, 2.4))):
                    ln = rng.uniform(80, 150) * s
                    ang = base + dang
                    p1 = (cx + ln * math.cos(ang), cy + ln * math.sin(ang))
                    t = cv.tube(_curve((cx, cy), p1, rng.uniform(-20, 20) * s),
                                w * (1.15 if k == 0 else rng.uniform(0.7, 1.0)))
                    sdf = t if sdf is None else np.minimum(sdf, t)
                allow = ("pancreas",)
            elif kind == "bile_duct":
                ln = rng.uniform(110, 220) * s
                ang = rng.uniform(0.3, 1.3) * rng.choice([-1, 1])
                p0 = (cx - ln / 2 * math.cos(ang), cy - ln / 2 * math.sin(ang))
                p1 = (cx + ln / 2 * math.cos(ang), cy + ln / 2 * math.sin(ang))
                if panc_info is not None and attempt < 15:
                    # beside the pancreatic head: shift toward the pancreas edge
                    pcx, pcy, a, b, pang = panc_info
                    side = rng.choice([-1, 1])
                    sh = (pcx + side * (a + rng.uniform(5, 30) * s) * math.cos(pang) - cx,
                          pcy + side * (a + rng.uniform(5, 30) * s) * math.sin(pang) - cy)
                    p0 = (p0[0] + sh[0], p0[1] + sh[1])
                    p1 = (p1[0] + sh[0], p1[1] + sh[1])
                sdf = cv.tube(_curve(p0, p1, rng.uniform(-15, 15) * s), rng.uniform(9, 22) * s)
                allow = ("pancreas",)
            else:
                raise ValueError(kind)
            if attempt < 24 and not free(sdf, allow):
                continue
            shapes.append(Shape(kind, sdf.astype(np.float32), kind != "pancreas",
                                _inside_points(rng, sdf)))
            break
    # Unlabelled look-alikes: splenic vein / SMA / aorta / bowel, so "anechoic tube" or
    # "round vessel" alone does not give the label away.
    for _ in range(int(rng.integers(0, 3))):
        cx, cy = cv.world_of_screen(*_place(rng, g, False))
        if rng.random() < 0.5:
            ang = rng.uniform(-0.5, 0.5)
            ln = rng.uniform(100, 220) * s
            p0 = (cx - ln / 2 * math.cos(ang), cy - ln / 2 * math.sin(ang))
            p1 = (cx + ln / 2 * math.cos(ang), cy + ln / 2 * math.sin(ang))
            sdf = cv.tube(_curve(p0, p1, rng.uniform(-20, 20) * s), rng.uniform(10, 26) * s)
        else:
            r = rng.uniform(10, 30) * s
            sdf = cv.ellipse(cx, cy, r, r * rng.uniform(0.7, 1.0), rng.uniform(0, 3))
        if free(sdf, ("pancreas",)):
            shapes.append(Shape("other", sdf.astype(np.float32), True, np.zeros((0, 2))))
    return shapes


def choose_present(rng: np.random.Generator, named: str) -> list[str]:
    """The landmarks drawn in a view where ``named`` is named (it is always among them)."""
    present = [named]
    for other, p in _CO_VISIBLE[named].items():
        if other == "pancreatic_duct" and "pancreas" not in present and named != "pancreas":
            continue
        if rng.random() < p:
            present.append(other)
    if "pancreatic_duct" in present and "pancreas" not in present:
        present.append("pancreas")
    return present


def build_view(rng: np.random.Generator, g: Geometry, look: PatientLook, named: Optional[str],
               present: Optional[list[str]] = None) -> View:
    """Make one static scene with ``named`` (None: no landmark named) and co-visible ones."""
    s = g.s
    cv = _Canvas(g)
    if present is None:
        present = choose_present(rng, named) if named else \
            [k for k in LANDMARKS if rng.random() < 0.25 and k != "pancreatic_duct"]
    shapes = _build_shapes(rng, cv, named or "", present)
    shape = (g.world_h, g.world_w)

    # Tissue echogenicity (dB) and attenuation coefficient (relative; fluid attenuates little).
    tissue = 4.5 * _smooth_noise(rng, shape, 45 * s) + 2.0 * _smooth_noise(rng, shape, 12 * s)
    alpha = np.ones(shape, np.float32)
    # fascial planes / fat interfaces: bright wavy lines
    for _ in range(int(rng.integers(2, 6))):
        y0 = rng.uniform(0.2, 1.0) * g.world_h
        tilt = rng.uniform(-0.4, 0.4)
        amp, per, ph = rng.uniform(3, 20) * s, rng.uniform(150, 500) * s, rng.uniform(0, 6.3)
        yc = y0 + tilt * (cv.X - g.world_w / 2) + amp * np.sin(cv.X / per * 6.28 + ph)
        tissue += rng.uniform(5, 10) * np.exp(-((cv.Y - yc) / (rng.uniform(1.5, 3.5) * s)) ** 2)
    speck = _speckle_db(rng, shape, look.speckle_lat * s, look.speckle_ax * s)
    db = tissue + look.speckle_contrast * speck
    for sh in shapes:
        inside = np.clip(0.5 - sh.sdf / (4.0 * s), 0, 1)        # soft edge (blur)
        if sh.kind == "pancreas":
            sp2 = _speckle_db(rng, shape, look.speckle_lat * s * look.pancreas_grain,
                              look.speckle_ax * s * look.pancreas_grain)
            lob = 2.5 * _smooth_noise(rng, shape, 6 * s)       # lobular texture
            texture = look.pancreas_db + lob + tissue * 0.3 + look.speckle_contrast * sp2
            db = db * (1 - inside) + texture * inside
            # thin bright capsule on part of the boundary
            db += 4.0 * np.exp(-(sh.sdf / (2.0 * s)) ** 2) * (rng.random() < 0.6)
        else:
            wall = rng.uniform(5, 10) * np.exp(-((sh.sdf - 1.5 * s) / (2.2 * s)) ** 2)
            fluid_db = -rng.uniform(15, 22) + 0.4 * speck
            db = db * (1 - inside) + fluid_db * inside + wall * (1 - inside)
            alpha = alpha * (1 - 0.85 * inside)
    # Attenuation along beams (radial from the apex): integrate alpha in polar coordinates.
    db -= _beam_attenuation(alpha, g, look.atten_db)

    labelled = {}
    for sh in shapes:
        if sh.kind in LANDMARKS:
            labelled[sh.kind] = sh.points
    motion = {
        "drift": [float(rng.uniform(4, 16) * s), float(rng.uniform(2, 10) * s)],
        "drift_hz": [float(rng.uniform(0.05, 0.25)), float(rng.uniform(0.05, 0.25))],
        "rot_deg": float(rng.uniform(0.5, 3.0)), "rot_hz": float(rng.uniform(0.04, 0.2)),
        "zoom": float(rng.uniform(0.005, 0.03)), "zoom_hz": float(rng.uniform(0.1, 0.3)),
        "phase": [float(v) for v in rng.uniform(0, 2 * math.pi, 4)],
        "rot0_deg": float(rng.uniform(-4, 4)),
        "sweep": [float(v) for v in rng.uniform(-1, 1, 2) * 110 * s],
        "sweep_s": float(rng.uniform(0.25, 0.5)),
    }
    return View(db.astype(np.float32), labelled, named or "",
                depth_scale=float(rng.uniform(0.88, 1.15)),
                gain_db=float(look.gain_db + rng.uniform(-2.5, 2.5)), motion=motion)


def _beam_attenuation(alpha: np.ndarray, g: Geometry, total_db: float) -> np.ndarray:
    """Cumulative round-trip attenuation (dB) along rays from the apex, in world px."""
    nr, nt = 160, 96
    half = math.radians(80)
    r = np.linspace(0, g.r1 * 1.35, nr, dtype=np.float32)
    th = np.linspace(-half, half, nt, dtype=np.float32)
    R, TH = np.meshgrid(r, th, indexing="ij")
    xw = g.apex_w[0] + R * np.sin(TH)
    yw = g.apex_w[1] + R * np.cos(TH)
    grid = np.stack([(2 * xw + 1) / g.world_w - 1, (2 * yw + 1) / g.world_h - 1], -1)
    a = F.grid_sample(torch.from_numpy(alpha)[None, None], torch.from_numpy(grid)[None],
                      mode="bilinear", padding_mode="border", align_corners=False)[0, 0]
    cum = torch.cumsum(a, 0) * (total_db / g.r1) * float(r[1] - r[0])
    # back to the world grid
    Y, X = np.mgrid[0:g.world_h, 0:g.world_w].astype(np.float32)
    dx, dy = X - g.apex_w[0], Y - g.apex_w[1]
    rr = np.hypot(dx, dy)
    tt = np.arctan2(dx, np.maximum(dy, 1e-3))
    ti = (tt + half) / (2 * half) * (nt - 1)
    ri = rr / r[-1] * (nr - 1)
    back = np.stack([(2 * ti + 1) / nt - 1, (2 * ri + 1) / nr - 1], -1).astype(np.float32)
    out = F.grid_sample(cum[None, None], torch.from_numpy(back)[None], mode="bilinear",
                        padding_mode="border", align_corners=False)[0, 0]
    return out.numpy()


# --------------------------------------------------------------------------- frame rendering
class Renderer:
    """Renders frames (uint8, crop size) of views under probe motion; also reports where the
    landmarks are on screen (for truth)."""

    def __init__(self, g: Geometry, look: PatientLook, rng: np.random.Generator):
        self.g, self.look = g, look
        self.torch = torch
        h, w = g.crop_h, g.crop_w
        Y, X = np.mgrid[0:h, 0:w].astype(np.float32)
        r = np.hypot(X - g.apex_s[0], Y - g.apex_s[1])
        th = np.arctan2(X - g.apex_s[0], Y - g.apex_s[1])
        half = math.radians(look.half_angle_deg)
        self.half = half
        # Fan mask with a soft lateral edge; near-field interface (balloon / gut wall layers).
        edge = np.clip((half - np.abs(th)) / 0.03, 0, 1) * (r >= g.r0) * (r <= g.r1)
        depth = np.clip((r - g.r0) / (g.r1 - g.r0), 0, 1)
        s = g.s
        nf = look.near_field_db * (np.exp(-((r - g.r0 - 3 * s) / (4 * s)) ** 2)
                                   + 0.6 * np.exp(-((r - g.r0 - 14 * s) / (3 * s)) ** 2)) \
            - 6.0 * np.exp(-((r - g.r0 - 8 * s) / (3 * s)) ** 2)
        tgc = look.atten_db * look.tgc_comp * depth
        lateral = -4.0 * (np.abs(th) / half) ** 4                 # weaker beams at the edges
        self.screen_db = (nf + tgc + lateral).astype(np.float32)
        self.fan = edge.astype(np.float32)
        # homogeneous normalised screen coordinates, for grid = base @ theta^T
        xn = (2 * np.arange(w, dtype=np.float32) + 1) / w - 1
        yn = (2 * np.arange(h, dtype=np.float32) + 1) / h - 1
        YN, XN = np.meshgrid(yn, xn, indexing="ij")
        self.base = np.stack([XN.ravel(), YN.ravel(), np.ones(h * w, np.float32)], 1)
        self.noise_bank = [1.6 * _smooth_noise(rng, (h, w), 4 * g.s + 1) for _ in range(6)]
        self.phase = 0.0

    def pose(self, view: View, t: float) -> tuple[float, float, float, float]:
        """(theta rad, zoom, shift x, shift y) of the probe at ``t`` s into the view."""
        m = view.motion
        ph = m["phase"]
        th = math.radians(m["rot0_deg"] + m["rot_deg"] * math.sin(2 * math.pi * m["rot_hz"] * t
                                                                  + ph[0]))
        z = view.depth_scale * (1 + m["zoom"] * math.sin(2 * math.pi * m["zoom_hz"] * t + ph[1]))
        sx = m["drift"][0] * math.sin(2 * math.pi * m["drift_hz"][0] * t + ph[2])
        sy = m["drift"][1] * math.sin(2 * math.pi * m["drift_hz"][1] * t + ph[3])
        if t < m["sweep_s"]:  # the probe settling after moving to this view
            k = (1 - t / m["sweep_s"]) ** 2
            sx += k * m["sweep"][0]
            sy += k * m["sweep"][1]
        return th, z, sx, sy

    def screen_points(self, view: View, t: float, pts: np.ndarray) -> np.ndarray:
        """World points -> screen (crop px) at time ``t`` of the view."""
        th, z, sx, sy = self.pose(view, t)
        g = self.g
        c, s = math.cos(th), math.sin(th)
        wx = pts[:, 0] - g.apex_w[0] - sx
        wy = pts[:, 1] - g.apex_w[1] - sy
        # inverse of the screen->world map below
        x = z * (c * wx - s * wy) + g.apex_s[0]
        y = z * (s * wx + c * wy) + g.apex_s[1]
        return np.stack([x, y], 1)

    def in_fan(self, xy: np.ndarray) -> np.ndarray:
        g = self.g
        dx, dy = xy[:, 0] - g.apex_s[0], xy[:, 1] - g.apex_s[1]
        r = np.hypot(dx, dy)
        th = np.arctan2(dx, dy)
        return (r >= g.r0 + 2) & (r <= g.r1 - 2) & (np.abs(th) <= self.half - 0.02) & \
            (xy[:, 0] >= 0) & (xy[:, 0] < g.crop_w) & (xy[:, 1] >= 0) & (xy[:, 1] < g.crop_h)

    def _theta(self, pose: tuple[float, float, float, float]) -> np.ndarray:
        """2x3 affine (normalised screen -> normalised world coordinates) for ``affine_grid``."""
        g = self.g
        th, z, sx, sy = pose
        c, s = math.cos(th), math.sin(th)
        # screen px -> world px: rotate by -theta about the apex, divide by zoom, shift
        A = np.array([[c / z, s / z, 0.0], [-s / z, c / z, 0.0], [0, 0, 1]])
        A[0, 2] = g.apex_w[0] + sx - (A[0, 0] * g.apex_s[0] + A[0, 1] * g.apex_s[1])
        A[1, 2] = g.apex_w[1] + sy - (A[1, 0] * g.apex_s[0] + A[1, 1] * g.apex_s[1])
        # normalised (align_corners=False) <-> px
        sn_to_px = np.array([[g.crop_w / 2, 0, (g.crop_w - 1) / 2],
                             [0, g.crop_h / 2, (g.crop_h - 1) / 2], [0, 0, 1]])
        px_to_wn = np.array([[2 / g.world_w, 0, 1 / g.world_w - 1],
                             [0, 2 / g.world_h, 1 / g.world_h - 1], [0, 0, 1]])
        return (px_to_wn @ A @ sn_to_px)[:2]

    def render(self, view: View, times: np.ndarray, gains_db: np.ndarray) -> np.ndarray:
        """Frames of ``view`` at view-relative ``times``: uint8 (n, out_h, out_w)."""
        torch = self.torch
        g = self.g
        n = len(times)
        theta = np.stack([self._theta(self.pose(view, float(t))) for t in times])
        grid = (self.base @ theta.transpose(0, 2, 1).astype(np.float32)).reshape(
            n, g.crop_h, g.crop_w, 2)
        world = torch.from_numpy(view.db)[None, None]
        img = torch.nn.functional.grid_sample(
            world.expand(n, -1, -1, -1), torch.from_numpy(grid), mode="bilinear",
            padding_mode="border", align_corners=False)[:, 0].numpy()
        dr = self.look.dynamic_range_db
        out = np.empty((n, g.out_h, g.out_w), np.uint8)
        for i in range(n):
            # frame-to-frame speckle decorrelation: rotate between two smooth noise fields
            self.phase += 0.35
            k = int(self.phase // (2 * math.pi)) % (len(self.noise_bank) - 1)
            noise = math.cos(self.phase) * self.noise_bank[k] + \
                math.sin(self.phase) * self.noise_bank[k + 1]
            frame = img[i] + self.screen_db + noise + float(gains_db[i])
            # log-compressed display: 0 dB (mean tissue) maps to about 100 of 255
            frame = np.clip((frame + 0.4 * dr) * (255.0 / dr), 0, 255)
            frame *= self.fan
            small = (frame + 0.5).astype(np.uint8)
            out[i] = small if small.shape == out.shape[1:] else _resize_u8(small, g.out_w,
                                                                           g.out_h)
        return out


def _resize_u8(img: np.ndarray, w: int, h: int) -> np.ndarray:
    """Bilinear resize of a uint8 grey image (libswscale through PyAV: fast and exact)."""
    return av.VideoFrame.from_ndarray(img, format="gray").reformat(
        w, h, format="gray", interpolation="FAST_BILINEAR").to_ndarray()
