"""The heat map's display map and evidence region (nn/evidence.py) and the localisation scores
against landmark boxes (labelling/localisation.py)."""

from types import SimpleNamespace

import numpy as np
import pytest

from EUSVoiceLabelLib.labelling.localisation import box_mask, summarise, window_scores
from EUSVoiceLabelLib.nn.evidence import (DISPLAY_THRESHOLD, REGION_MAX_FRACTION,
                                          REGION_THRESHOLD, display_map, evidence_region,
                                          peak_of)


def blob(shape, col, row, sigma):
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    return np.exp(-((xx - col) ** 2 + (yy - row) ** 2) / (2.0 * sigma ** 2))


def test_display_map_stretches_each_window_to_its_own_range():
    cam = 0.6 + 0.4 * blob((40, 60), 45, 10, 5)  # a high floor everywhere, as trained maps have
    m = display_map(cam)
    assert m.dtype == np.float32 and m.min() == 0.0 and m.max() == pytest.approx(1.0)
    assert peak_of(m) == peak_of(cam) == (45, 10)
    # Without the stretch nothing would be transparent; with it most of the frame is.
    assert (cam < DISPLAY_THRESHOLD).mean() == 0.0
    assert (m < DISPLAY_THRESHOLD).mean() > 0.8
    assert not display_map(np.full((4, 4), 0.3)).any()  # a flat map shows nothing


def test_evidence_region_is_the_blob_around_the_peak_only():
    shape = (60, 90)
    cam = blob(shape, 20, 30, 4) + 0.9 * blob(shape, 70, 30, 4)  # two separate bumps
    region = evidence_region(cam)
    assert region[30, 20] and not region[30, 70]  # the peak's blob, not the other one
    # one 8-connected piece, compact: about the disc where the blob is >= the threshold
    expected_radius = 4 * np.sqrt(-2 * np.log(REGION_THRESHOLD))
    assert region.sum() == pytest.approx(np.pi * expected_radius ** 2, rel=0.25)
    cols = np.nonzero(region)[1]
    assert cols.max() < 45
    # the level is part of the rule; a flat map has no region
    assert evidence_region(cam, 0.2).sum() > region.sum()
    assert not evidence_region(np.zeros(shape)).any()
    with pytest.raises(ValueError):
        evidence_region(cam, 0.0)


def test_a_broad_map_gets_a_compact_region_around_its_peak():
    """A map that is high over most of the frame (a coarse last layer) is cut at its
    strongest pixels, not at half its range."""
    shape = (70, 140)
    cam = blob(shape, 100, 20, 60)
    assert (display_map(cam) >= REGION_THRESHOLD).mean() > 0.4
    region = evidence_region(cam)
    assert region[20, 100]
    assert 0.5 * REGION_MAX_FRACTION < region.mean() <= REGION_MAX_FRACTION + 0.005
    assert evidence_region(cam, max_fraction=1.0).mean() > 0.4  # the cap turned off
    with pytest.raises(ValueError):
        evidence_region(cam, max_fraction=0.0)


def test_evidence_region_grows_from_a_given_peak_and_touches_diagonally():
    cam = np.zeros((5, 5))
    cam[1, 1] = cam[2, 2] = cam[3, 3] = 1.0  # a diagonal line: 8-connected
    cam[0, 4] = 1.0
    region = evidence_region(cam, 0.5, peak=(1, 1), max_fraction=1.0)
    assert region.sum() == 3 and not region[0, 4]
    assert evidence_region(cam, 0.5, peak=(4, 0), max_fraction=1.0).sum() == 1
    assert not evidence_region(cam, 0.5, peak=(0, 4)).any()  # a peak below the level


def test_window_scores_against_the_named_box():
    cam = blob((50, 80), 30, 20, 3).astype(np.float32)
    win = SimpleNamespace(cam=cam, peak=peak_of(cam), region=evidence_region(cam))
    inside = window_scores(win, [20, 10, 20, 20])  # box x 20-39, y 10-29 holds the blob
    assert inside["hit"] and inside["region_precision"] == 1.0
    assert inside["chance"] == pytest.approx(400 / 4000)
    assert inside["region_size"] == pytest.approx(win.region.sum() / 4000)
    assert inside["transparent"] == pytest.approx((cam < DISPLAY_THRESHOLD).mean())
    half = window_scores(win, [30, 0, 50, 50])  # the right half of the blob only
    assert half["hit"] and 0.3 < half["region_precision"] < 0.7
    miss = window_scores(win, [60, 40, 10, 10])
    assert not miss["hit"] and miss["region_precision"] == 0.0
    assert box_mask((5, 5), [3, 3, 10, 10]).sum() == 4  # clipped to the frame
    rows = [{"correct": True, **inside}, {"correct": False, **miss}]
    summary = summarise(rows)
    assert summary["windows"] == 2 and summary["pointing_game"] == 0.5
    assert summary["pointing_game_correct"] == 1.0 and summary["accuracy"] == 0.5
    assert summary["region_precision_median"] == 0.5
