"""Render what 3D Slicer shows of a labelled procedure: ``scene.mrml`` of an ``eusvoicelabel
label`` output folder opened in Slicer's own MRML (slicer-core, as in the tests), the Red slice
view drawn offscreen by Slicer's slice logic and displayable managers (EGL), at the first
frame of a few windows, side by side in one PNG.

    python3 scripts/render_slicer_views.py LABEL_DIR --out docs/images/eusvoicelabel-outputs.png

Needs the test set-up (``bash scripts/install.sh --test``: slicer-core and Mesa's EGL).
Each panel is captioned with the window's time, predicted landmark and confidence, and what was
said; the frame, heat map (foreground), evidence region (label layer) and the window's peak
point with its label are Slicer's rendering, nothing is drawn on top.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]
# The application-like scene and the offscreen slice view live with the tests.
sys.path.insert(0, str(REPO / "EUSVoiceLabel" / "Testing" / "Python"))
import mrmlscene  # noqa: E402  (after the path above)


CAPTION_PX = 36  # two lines under each view


def _name(label_id: str) -> str:
    return label_id.replace("_", " ") or "-"


def caption_lines(win: dict) -> list[tuple[str, str]]:
    """What a reviewer needs beside the view: the window's label (what the point shows), the
    network's own and what was said (with the detector's confidence), and the review flag
    in red (labels.csv's columns)."""
    label = win.get("label") or win["predicted_label"]
    confidence = float(win.get("label_confidence") or win["confidence"])
    first = (f"t = {float(win['time_s']):.2f} s   label: {_name(label)} ({confidence:.2f})"
             f"   network: {_name(win['predicted_label'])} ({float(win['confidence']):.2f})")
    heard = win.get("mention_confidence") or ""
    second = f"said: {_name(win['spoken_label'])}" + (f" (heard at {float(heard):.2f})"
                                                       if heard else "")
    if win.get("needs_review") == "1":
        return [(first, "black"), (f"{second}   REVIEW: {win.get('review_reason', '')}", "red")]
    return [(first, "black"), (second, "black")]


def pick_windows(rows: list[dict], count: int) -> list[dict]:
    """Up to ``count`` windows, different landmarks first, in time order."""
    chosen, seen = [], set()
    for r in rows:
        label = r.get("label") or r["predicted_label"]
        if label not in seen and len(chosen) < count:
            chosen.append(r)
            seen.add(label)
    for r in rows:
        if len(chosen) >= count:
            break
        if r not in chosen:
            chosen.append(r)
    return sorted(chosen, key=lambda r: float(r["time_s"]))


def render(label_dir: Path, out: Path, count: int = 4, width: int = 690, columns: int = 2
           ) -> Path:
    """Render ``count`` windows of ``label_dir``'s scene into ``out`` (PNG); returns ``out``."""
    if mrmlscene.SKIP_REASON:
        raise SystemExit(mrmlscene.SKIP_REASON)
    windows = list(csv.DictReader(open(label_dir / "labels.csv", encoding="utf-8")))
    frames = list(csv.DictReader(open(label_dir / "frame_labels.csv", encoding="utf-8")))
    first_item = {}
    for item, row in enumerate(frames):
        first_item.setdefault(row["window"], item)
    windows = [w for w in windows if w["window"] in first_item]
    app = mrmlscene.AppScene()
    mrmlscene.load_module(app)
    app.import_scene(label_dir / "scene.mrml")
    browser = app.scene.GetFirstNodeByClass("vtkMRMLSequenceBrowserNode")
    frame = browser.GetProxyNode(browser.GetMasterSequenceNode())
    w, h = frame.GetImageData().GetDimensions()[:2]
    height = int(round(width * h / w))
    view = mrmlscene.SliceView(app, "Red", (width, height))
    panels = []
    try:
        for win in pick_windows(windows, count):
            browser.SetSelectedItemNumber(first_item[win["window"]])
            view.fit()
            # a margin, so that the label of a point near the edge stays in view
            node = view.logic.GetSliceNode()
            fov = node.GetFieldOfView()
            node.SetFieldOfView(fov[0] * 1.3, fov[1] * 1.3, fov[2])
            image = Image.fromarray(view.render())
            panel = Image.new("RGB", (width, height + CAPTION_PX), "white")
            panel.paste(image, (0, 0))
            draw = ImageDraw.Draw(panel)
            for k, (line, colour) in enumerate(caption_lines(win)):
                draw.text((6, height + 5 + 15 * k), line, fill=colour)
            panels.append(panel)
    finally:
        view.close()
    rows = (len(panels) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * width + (columns - 1) * 6,
                              rows * (height + CAPTION_PX) + (rows - 1) * 6), "white")
    for k, panel in enumerate(panels):
        sheet.paste(panel, ((k % columns) * (width + 6),
                            (k // columns) * (height + CAPTION_PX + 6)))
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("label_dir", type=Path, help="output folder of 'eusvoicelabel label'")
    p.add_argument("--out", type=Path, required=True, help="PNG to write")
    p.add_argument("--windows", type=int, default=4, help="how many windows (default 4)")
    p.add_argument("--width", type=int, default=690, help="width of each panel in pixels")
    args = p.parse_args()
    print(render(args.label_dir, args.out, args.windows, args.width))
    return 0


if __name__ == "__main__":
    sys.exit(main())
