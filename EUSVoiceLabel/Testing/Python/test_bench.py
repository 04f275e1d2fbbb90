"""bench: FLOP counts against hand-computed values, the optimised inference path against the
baseline (same predictions, same heat maps), the timing / memory helpers, the regression rule,
the markdown section, and ``bench --quick`` end to end (the CI speed check)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from EUSVoiceLabelLib import bench
from EUSVoiceLabelLib.core.pool import process_cores
from EUSVoiceLabelLib.nn.explain import grad_cam
from EUSVoiceLabelLib.nn.fastpath import (bf16_is_fast, fold_batchnorm, optimise_for_inference,
                                          prepare_image)
from EUSVoiceLabelLib.nn.network import IMAGE_BLOCKS, VOICE_CHANNELS, VOICE_POOL_AFTER, build_model


def _conv_flops_image(h: int, w: int, frames: int = 25) -> int:
    total, c_in = 0, frames
    for b, (n, c) in enumerate(IMAGE_BLOCKS):
        if b > 0:
            h, w = (h - 3) // 2 + 1, (w - 3) // 2 + 1
        for _ in range(n):
            total += 2 * c_in * c * 9 * h * w
            c_in = c
    return total


def _conv_flops_voice(t: int = 66, bins: int = 1024) -> int:
    total, c_in = 0, bins
    for i, c in enumerate(VOICE_CHANNELS):
        total += 2 * c_in * c * 3 * t
        c_in = c
        if i in VOICE_POOL_AFTER:
            t = (t - 3) // 2 + 1
    return total


def test_flops_at_the_paper_size_match_a_hand_count():
    f = bench.model_flops((350, 690), 1.0)
    assert f["image_branch_forward"] == pytest.approx(_conv_flops_image(350, 690) / 1e9)
    assert f["voice_branch_forward"] == pytest.approx(_conv_flops_voice() / 1e9)
    # joint product (2*R*T'*H'*W') + head conv (2*T'*K*9*H'*W'), Q grid 20 x 42
    joint = 2 * 1024 * 15 * 20 * 42 + 2 * 15 * 5 * 9 * 20 * 42
    assert f["joint_and_head_forward"] == pytest.approx(joint / 1e9)
    assert f["total_forward"] == pytest.approx(176.7, rel=1e-3)
    # training step: forward + input grads + weight grads = 3x forward, less the first
    # convolution's input gradient (the image is not a parameter)
    first = 2 * 25 * 64 * 9 * 350 * 690 + 2 * 1024 * 256 * 3 * 66
    assert f["total_train_step"] == pytest.approx((3 * _conv_flops_image(350, 690)
                                                   + 3 * _conv_flops_voice() + 3 * joint
                                                   - first) / 1e9, rel=1e-3)
    small = bench.model_flops((64, 128), 0.25)
    assert small["total_forward"] < f["total_forward"] / 100


def _trained_like(width: float = 0.125, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    m = build_model("proposed", 5, 5, width=width)
    bench._trained_like_batchnorm(m, seed)
    return m.eval()


def test_optimised_model_gives_the_same_predictions_and_heat_maps():
    torch.set_num_threads(1)
    base = _trained_like()
    fast = optimise_for_inference(base, "cpu")
    # the original is untouched: still trainable, BatchNorm still there
    assert all(p.requires_grad for p in base.parameters())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in base.modules())
    assert not any(isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d))
                   for m in fast.modules())
    assert not any(p.requires_grad for p in fast.parameters())
    g = torch.Generator().manual_seed(1)
    image = torch.rand(2, 5, 40, 72, generator=g)
    voice = torch.randn(2, 1024, 66, generator=g)
    with torch.no_grad():
        want = base(image, voice)
    with torch.inference_mode():
        got = fast(prepare_image(image, "cpu"), voice)
    assert torch.allclose(want, got, atol=1e-4, rtol=1e-4)
    a = grad_cam(base, image[:1], voice[:1])
    b = grad_cam(fast, prepare_image(image[:1], "cpu"), voice[:1])
    assert a.target == b.target
    assert np.allclose(a.probabilities, b.probabilities, atol=1e-5)
    assert a.cam is not None and np.allclose(a.cam, b.cam, atol=1e-4)


def test_fold_batchnorm_skips_layers_in_training_mode():
    m = build_model("voice_only", 5, 5, width=0.125)
    m.train()
    fold_batchnorm(m)
    assert any(isinstance(x, torch.nn.BatchNorm1d) for x in m.modules())
    m.eval()
    fold_batchnorm(m)
    assert not any(isinstance(x, torch.nn.BatchNorm1d) for x in m.modules())


def test_bf16_is_not_used_where_it_is_emulated():
    cap = str(torch.backends.cpu.get_cpu_capability()).upper()
    if "AVX512" not in cap and "AMX" not in cap:
        assert not bf16_is_fast("cpu")


def test_time_interleaved_medians_and_alternating_order():
    calls: list[str] = []

    def case(name: str, s: float):
        def run():
            calls.append(name)
            time.sleep(s)
        return run

    res = bench.time_interleaved({"a": case("a", 0.002), "b": case("b", 0.02)}, 4,
                                 torch.device("cpu"), warmup=1)
    assert calls[:2] == ["a", "b"]                   # warm-ups
    assert calls[2:] == ["a", "b", "b", "a", "a", "b", "b", "a"]
    assert len(res["a"]["seconds"]) == 4
    assert res["b"]["median_s"] > res["a"]["median_s"]
    assert res["a"]["min_s"] <= res["a"]["median_s"]


def test_a_slower_looking_optimised_path_is_timed_again_and_a_real_regression_still_shows():
    def result(opt_s: float) -> dict:
        return {"cases": {"baseline": {"median_s": 1.0, "min_s": 1.0},
                          "optimised": {"median_s": opt_s, "min_s": opt_s}}}

    def slower(r: dict) -> bool:
        return bench._slower(r["cases"], "baseline", "optimised", 0.15) is not None

    said: list[str] = []
    spike = iter([result(1.4), result(0.8)])      # a load spike during the first timing
    r = bench._timed_twice_if_slower(lambda: next(spike), slower, said.append)
    assert r["retimed"] and not slower(r) and len(said) == 1
    real = iter([result(1.4), result(1.5)])        # a real regression: slower both times
    r = bench._timed_twice_if_slower(lambda: next(real), slower, said.append)
    assert slower(r) and bench.check_regressions({"training": {"chosen": r}})
    fine = iter([result(0.9)])                     # nothing to confirm: timed once
    assert "retimed" not in bench._timed_twice_if_slower(lambda: next(fine), slower, said.append)


def test_peak_memory_sees_a_temporary_allocation():
    with bench.PeakMemory() as base:
        pass
    with bench.PeakMemory(interval=0.001) as pm:
        x = np.ones(300 * 2 ** 20 // 8)   # 300 MB, touched
        time.sleep(0.05)
        del x
    assert pm.host_mb - base.host_mb > 250


def _result(base_med, opt_med, base_min, opt_min):
    case = lambda med, mn: {"median_s": med, "min_s": mn}  # noqa: E731
    c = {"baseline": case(base_med, base_min), "optimised": case(opt_med, opt_min),
         "baseline_cam": case(1, 1), "optimised_cam": case(1, 1)}
    return {"inference": {"chosen": {"cases": c, "max_probability_difference": 0.0}},
            "training": {"chosen": {"cases": {"baseline": case(1, 1),
                                              "optimised": case(1, 1)}}}}


def test_regression_rule_needs_median_and_best_run_to_agree():
    assert bench.check_regressions(_result(1.0, 1.1, 1.0, 1.1)) == []       # within 15 %
    assert bench.check_regressions(_result(1.0, 1.5, 1.0, 1.0)) == []       # one load spike
    bad = bench.check_regressions(_result(1.0, 1.5, 1.0, 1.4))
    assert len(bad) == 1 and "optimised takes 1.50x" in bad[0]
    r = _result(1, 1, 1, 1)
    r["inference"]["chosen"]["max_probability_difference"] = 0.01
    assert "differ" in bench.check_regressions(r)[0]


def test_update_markdown_replaces_only_its_section(tmp_path):
    md = tmp_path / "b.md"
    md.write_text("# Benchmarks\n\nintro\n")
    bench.update_markdown(md, "quick-cpu", "first\n")
    bench.update_markdown(md, "full-cpu", "other\n")
    bench.update_markdown(md, "quick-cpu", "second\n")
    text = md.read_text()
    assert text.startswith("# Benchmarks\n\nintro\n")
    assert "second" in text and "first" not in text and text.count("other") == 1
    assert text.index("second") < text.index("other")


@pytest.mark.slow
@pytest.mark.timeout(170)
def test_bench_quick_runs_under_two_minutes_and_passes(tmp_path):
    """The CI speed check: exit 0 means no optimised path is slower than its baseline."""
    out, md = tmp_path / "quick.json", tmp_path / "bench.md"
    env = dict(os.environ, OMP_NUM_THREADS=str(process_cores()))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "EUSVoiceLabelLib", "bench", "--quick",
                           "--device", "cpu", "--quiet", "--out", str(out), "--markdown",
                           str(md)], capture_output=True, text=True, env=env, timeout=160)
    wall = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["regressions"] == []
    assert r["settings"]["quick"] and r["load_average_start"] is not None
    inf = r["inference"]["chosen"]
    assert inf["image_size"] == [64, 128] and inf["max_probability_difference"] < 1e-3
    assert set(inf["cases"]) >= {"baseline", "optimised", "baseline_cam", "optimised_cam"}
    assert r["peak"]["fp32"]["gflops"] > 0 and r["peak"]["bf16"]["gflops"] > 0
    assert r["flops_gflop_per_sample"]["paper"]["total_forward"] == pytest.approx(176.7,
                                                                                 rel=1e-3)
    assert "bench:begin quick-cpu" in md.read_text()
    assert wall < 150, f"bench --quick took {wall:.0f} s"
