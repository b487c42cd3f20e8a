"""``dit-cache bench``: JSON schema, arithmetic, memory, plot, peers and the flux-dev guard.

Fast: the trained tiny model, batch 1, 6 steps, one timed round. Timings are not asserted (only
their arithmetic); the benchmark's numbers live in docs/benchmarks.md.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

from dit_cache_backend import bench
from dit_cache_backend.cli import build_parser, main

STEPS = 6


def _args(tmp_path: Path, *extra: str):
    return build_parser().parse_args(
        [
            "bench",
            "--steps",
            str(STEPS),
            "--batch",
            "1",
            "--repeats",
            "1",
            "--warmup",
            "0",
            "--threads",
            "1",
            "--quiet",
            "--out-dir",
            str(tmp_path),
            *extra,
        ]
    )


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    """One run: uncached, threshold 0, SCM fast (+TaylorSeer), and the fewer-steps floor."""
    out = tmp_path_factory.mktemp("bench")
    threads = torch.get_num_threads()
    try:
        args = _args(
            out, "--config", "threshold-0", "scm-fast", "scm-fast-ts1", "--peers", "fewer-steps"
        )
        args.batch = 1
        assert args.handler(args) == 0
    finally:
        torch.set_num_threads(threads)
    return out, json.loads((out / "bench_tiny.json").read_text())


def test_json_schema(result) -> None:
    out, data = result
    assert data["schema"] == bench.SCHEMA
    assert {"workload", "settings", "machine", "rows", "skipped"} <= set(data)
    assert data["workload"]["model"] == "tiny" and data["workload"]["total_steps"] == STEPS
    keys = {
        "name",
        "engine",
        "config",
        "computed_steps",
        "total_steps",
        "times_s",
        "median_s",
        "speedup",
        "speedup_paired",
        "speedup_best",
        "min_s",
        "ideal_speedup",
        "efficiency",
        "cache_peak_bytes",
        "cuda_peak_extra_bytes",
        "psnr_db",
        "ssim",
        "max_abs_error",
        "matched_to",
        "setting",
    }
    for row in data["rows"]:
        assert keys <= set(row), keys - set(row)
        assert len(row["times_s"]) == 1 and row["median_s"] > 0
    engines = [row["engine"] for row in data["rows"]]
    assert engines[0] == "baseline" and engines.count("ours") == 3
    assert (out / "bench_tiny.md").read_text().startswith("| entry |")


def test_arithmetic(result) -> None:
    _, data = result
    rows = data["rows"]
    base = rows[0]["median_s"]
    for row in rows:
        assert 1 <= row["computed_steps"] <= row["total_steps"]
        assert row["speedup"] == pytest.approx(base / row["median_s"])
        assert row["speedup_best"] == pytest.approx(rows[0]["min_s"] / row["min_s"])
        assert row["ideal_speedup"] == pytest.approx(row["total_steps"] / row["computed_steps"])
        assert row["efficiency"] == pytest.approx(row["speedup"] / row["ideal_speedup"])


def test_threshold_zero_is_exact_and_caching_holds_memory(result) -> None:
    _, data = result
    rows = {row["name"]: row for row in data["rows"]}
    assert math.isinf(rows["uncached"]["psnr_db"])
    zero = rows["threshold-0"]
    assert zero["computed_steps"] == STEPS
    assert math.isinf(zero["psnr_db"]) and zero["max_abs_error"] == 0 and zero["ssim"] == 1.0
    assert zero["cache_peak_bytes"] > 0  # the Fn residual and middle buffers are held
    fast, fast_ts = rows["scm-fast"], rows["scm-fast-ts1"]
    assert fast["computed_steps"] == fast_ts["computed_steps"] < STEPS
    assert math.isfinite(fast["psnr_db"]) and fast["max_abs_error"] > 0
    # TaylorSeer keeps derivative terms on top of the plain buffers.
    assert fast_ts["cache_peak_bytes"] > fast["cache_peak_bytes"] > 0
    assert rows["uncached"]["cache_peak_bytes"] is None


def test_fewer_steps_floor_matches_compute(result) -> None:
    _, data = result
    floor = [row for row in data["rows"] if row["engine"] == "fewer-steps"]
    computed = {row["computed_steps"] for row in data["rows"] if row["engine"] == "ours"}
    assert {row["computed_steps"] for row in floor} == {c for c in computed if c < STEPS}
    assert all(row["matched_to"] for row in floor)


def test_plot_written(result) -> None:
    out, _ = result
    from PIL import Image

    with Image.open(out / "bench_tiny.png") as image:
        assert image.size[0] > 300 and image.size[1] > 200


def test_peers_skipped_cleanly_when_absent(tmp_path, monkeypatch, capsys) -> None:
    # cache-dit missing: None in sys.modules makes `import cache_dit` raise ImportError.
    monkeypatch.setitem(sys.modules, "cache_dit", None)
    threads = torch.get_num_threads()
    try:
        args = _args(tmp_path, "--steps", "3", "--config", "scm-fast", "--peers", "cache-dit")
        assert args.handler(args) == 0
    finally:
        torch.set_num_threads(threads)
    data = json.loads((tmp_path / "bench_tiny.json").read_text())
    assert [row["engine"] for row in data["rows"]] == ["baseline", "ours"]
    assert data["skipped"][0]["peer"] == "cache-dit"
    assert "not importable" in data["skipped"][0]["reason"]
    assert "skipped cache-dit" in capsys.readouterr().out


def test_taylorseer_matching_is_closest() -> None:
    # diffusers' rule: compute on step < before or (step - before - 1) % interval == 0.
    assert bench.taylorseer_computed_steps(28, 5, 3) == 3 + 5
    for target in (6, 11, 15, 22):
        interval, before, computed = bench.taylorseer_match(28, target)
        assert computed == bench.taylorseer_computed_steps(28, interval, before)
        assert abs(computed - target) <= 1


def test_builtin_configs_resolve() -> None:
    import dit_cache_backend as dcb

    scm = dcb.load_configs(bench.resolve_config("scm-fast", 28))["cache_config"]
    assert sum(scm.steps_computation_mask) == 11 and scm.steps_computation_policy == "static"
    assert (
        dcb.load_configs(bench.resolve_config("threshold-0", 28))[
            "cache_config"
        ].residual_diff_threshold
        == 0.0
    )
    assert dcb.load_configs(bench.resolve_config("balanced", 28))["calibrator_config"] is not None
    with pytest.raises(ValueError):
        bench.resolve_config("no-such-preset", 28)


def test_flux_dev_refuses_without_cuda(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code = main(["bench", "--model", "flux-dev", "--out-dir", str(tmp_path), "--quiet"])
    assert code == 2
    err = capsys.readouterr().err
    assert "flux-dev needs CUDA" in err and "torch.cuda.is_available() is False" in err
    assert not list(tmp_path.iterdir())
    # An explicit CPU device is refused too, with the same hint.
    assert main(["bench", "--model", "flux-dev", "--device", "cpu", "--quiet"]) == 2
    assert "got --device cpu" in capsys.readouterr().err


def test_flux_dev_dry_run_on_cpu(capsys) -> None:
    assert (
        main(["bench", "--model", "flux-dev", "--dry-run", "--config", "scm-fast", "balanced"]) == 0
    )
    out = capsys.readouterr().out
    assert "19 double + 38 single blocks, hidden 3072 (24 x 128)" in out
    assert "4096 image + 512 text tokens" in out and "cuda (bfloat16)" in out
    assert "SCM" in out  # the static mask is resolved for the step count


def test_bad_arguments_are_reported(capsys) -> None:
    assert main(["bench", "--model", "no-such-model", "--dry-run"]) == 2
    assert main(["bench", "--dry-run", "--peers", "nope"]) == 2
    assert main(["bench", "--dry-run", "--dtype", "int3"]) == 2
    err = capsys.readouterr().err
    assert "--model must be" in err and "unknown --peers" in err and "unknown --dtype" in err


def test_loop_workload_flux_dev_shape_in_miniature() -> None:
    """The flux-dev code path (guidance, bf16 weights built in place) on a 2-block model."""
    import argparse

    config = dict(
        bench.FLUX_DEV_CONFIG,
        num_layers=1,
        num_single_layers=1,
        num_attention_heads=1,
        joint_attention_dim=32,
        pooled_projection_dim=16,
        in_channels=16,
    )
    args = argparse.Namespace(seed=0, batch=1, steps=2)
    workload = bench.loop_workload(
        "mini", "", config, (64, 8), args, torch.device("cpu"), torch.bfloat16
    )
    assert next(workload.transformer.parameters()).dtype == torch.bfloat16
    assert torch.get_default_dtype() == torch.float32  # restored
    out = workload.generate(2)
    assert out.shape == (1, 64, 16) and out.dtype == torch.bfloat16
    assert torch.isfinite(out).all()
    assert workload.to_images(out).shape == (1, 8, 8, 16)


def _point(computed: float, output: torch.Tensor, method: str = "m") -> "bench.Point":
    return bench.Point(bench.Candidate(method, "engine", f"c={computed}"), computed, output)


def test_best_at_picks_the_most_faithful_run_within_the_compute_limit() -> None:
    reference = torch.zeros(4)
    points = [
        _point(10, torch.full((4,), 0.001)),  # most faithful, but over the limit
        _point(7, torch.full((4,), 0.1)),
        _point(6, torch.full((4,), 0.01)),
        _point(5, torch.full((4,), 0.2)),
    ]

    def score(output: torch.Tensor) -> float:
        return -float((output - reference).abs().mean())

    assert bench.best_at(points, 7, score) is points[2]
    assert bench.best_at(points, 5, score) is points[3]
    assert bench.best_at(points, 4, score) is None


def test_pareto_front_keeps_only_points_that_improve_with_compute() -> None:
    points = [(8, 40.0), (4, 30.0), (6, 29.0), (10, 45.0), (10, 41.0), (12, 44.0)]
    assert bench.pareto_front(points) == [(4, 30.0), (8, 40.0), (10, 45.0)]


def test_frontier_reports_the_best_run_of_each_method_at_each_fraction() -> None:
    results = [
        {"method": "a", "computed": 14, "psnr": 50.0, "ssim": 0.99},
        {"method": "a", "computed": 9, "psnr": 45.0, "ssim": 0.98},
        {"method": "a", "computed": 12, "psnr": 52.0, "ssim": 0.99},
        {"method": "b", "computed": 20, "psnr": 60.0, "ssim": 1.0},
    ]
    table = bench.frontier(results, 28)
    assert table["a"][2]["psnr"] == 52.0 and table["a"][3]["psnr"] == 45.0
    assert table["a"][4] is None and table["b"] == {2: None, 3: None, 4: None}
    text = bench.frontier_markdown({"x@28": {"model": "x", "steps": 28, "results": results}})
    assert "| a | 52.0 / 0.990 (12) | 45.0 / 0.980 (9) | — |" in text


def test_pareto_plot_is_written(tmp_path) -> None:
    from PIL import Image

    results = [
        {"method": m, "computed": c, "psnr": p, "ssim": 1.0}
        for m, c, p in [("ours TS1", 7, 48.0), ("ours TS1", 14, 999.0), ("fewer steps", 7, 44.0)]
    ]
    path = tmp_path / "pareto.png"
    bench.write_pareto({"x@28": {"model": "x", "steps": 28, "results": results}}, path)
    with Image.open(path) as image:
        assert image.size[0] > 500 and image.size[1] > 300


def test_sweep_peers_are_matched_to_the_configs_computed_steps(tmp_path) -> None:
    threads = torch.get_num_threads()
    try:
        args = _args(
            tmp_path,
            "--steps",
            "8",
            "--config",
            "scm-fast",
            "--peers",
            "fbc",
            "taylorseer-lite",
            "seacache",
            "pab",
        )
        assert args.handler(args) == 0
    finally:
        torch.set_num_threads(threads)
    data = json.loads((tmp_path / "bench_tiny.json").read_text())
    target = next(row for row in data["rows"] if row["engine"] == "ours")["computed_steps"]
    peers = {row["engine"]: row for row in data["rows"] if row["matched_to"]}
    assert set(peers) == {"fbc", "taylorseer", "seacache"}
    for row in peers.values():
        assert row["computed_steps"] <= target and row["matched_to"] == "scm-fast"
        assert math.isfinite(row["psnr_db"])
    # PAB reuses attention only: every block's MLP runs at every step, so it never matches.
    assert {"peer": "pab", "reason": f"no setting computes <= {target} steps"} in data["skipped"]


def test_a_peer_that_cannot_apply_says_why() -> None:
    import argparse

    config = dict(bench.MEDIUM_CONFIG, num_layers=1, num_single_layers=1, num_attention_heads=1)
    args = argparse.Namespace(seed=0, batch=1, steps=2)
    loop = bench.loop_workload(
        "mini", "", config, (16, 4), args, torch.device("cpu"), torch.float32
    )
    for name in ("seacache", "pab", "fastercache"):
        assert "needs a diffusers pipeline" in bench.PEERS[name].unavailable(loop)
    assert bench.PEERS["fbc"].unavailable(loop) is None  # the transformer is a CacheMixin


def test_presets_resolve_names_and_paths(tmp_path) -> None:
    from dit_cache_backend.presets import preset_path, resolve

    assert resolve("balanced") == preset_path("balanced")
    assert resolve(str(tmp_path / "mine.yaml")) == tmp_path / "mine.yaml"
    assert isinstance(bench.resolve_config("balanced", 28), Path)
    with pytest.raises(FileNotFoundError, match="mine.yaml"):
        bench.resolve_config(str(tmp_path / "mine.yaml"), 28)


def test_the_trained_tiny_qwen_image_is_a_workload(tmp_path) -> None:
    threads = torch.get_num_threads()
    try:
        args = _args(tmp_path, "--model", "qwen-image", "--config", "scm-fast", "--no-peers")
        assert args.handler(args) == 0
    finally:
        torch.set_num_threads(threads)
    data = json.loads((tmp_path / "bench_qwen-image.json").read_text())
    assert data["workload"]["model"] == "qwen-image" and data["workload"]["weights"] == "trained"
    ours = data["rows"][1]
    assert ours["computed_steps"] < STEPS and math.isfinite(ours["psnr_db"])
    assert 0 < ours["ssim"] <= 1


def test_the_held_out_wan_is_a_workload_counted_per_cfg_branch() -> None:
    import argparse

    args = argparse.Namespace(
        model="wan", steps=2, seed=0, batch=1, device="cpu", dtype="float32", threads=1
    )
    workload = bench.build_workload(args)
    out = workload.generate(2)
    assert out.dim() == 5 and torch.isfinite(out).all()
    frames = workload.to_images(out)
    assert frames.shape[0] == out.shape[0] * out.shape[2] and frames.shape[-1] == out.shape[1]
    assert bench.calls_per_step(workload) == 2  # CFG: a conditional and an unconditional call
