"""`ocellus-tools ort-bench`: the report `ocellus bench` reads (every model timed in every form, the best chosen)."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import run_cli

from ocellus_tools.ortbench import ort_bench

DEMO = Path(__file__).resolve().parents[2] / "models" / "demo"


def test_report_times_every_file_and_picks_the_fastest():
    report = ort_bench(DEMO, threads=1, runs=3, warmup=1, calibration=2)
    assert report["engine"] == "onnxruntime" and report["threads"] == 1 and report["runs"] == 3
    assert set(report["models"]) == {"encoder", "resampler"}
    for name, model in report["models"].items():
        variants = model["variants"]
        assert {"fp32", "int8", "int8-dynamic", "int8-qdq"} <= set(variants), name
        assert variants["fp32"]["file"] == ("vision.fp32.onnx" if name == "encoder" else "resampler.fp32.onnx")
        timed = {k: v for k, v in variants.items() if "median_ms" in v}
        assert "fp32" in timed and "int8" in timed, variants
        for v in timed.values():
            assert 0 < v["min_ms"] <= v["median_ms"] <= v["p90_ms"], v
            assert v["runs"] == 3
        assert model["best"] == min(timed, key=lambda k: timed[k]["median_ms"])
        assert model["best_ms"] == timed[model["best"]]["median_ms"]
    total = report["models"]["encoder"]["best_ms"] + report["models"]["resampler"]["best_ms"]
    assert abs(report["total_best_ms"] - total) < 1e-9


def test_cli_writes_json_and_skips_on_the_fly_files(tmp_path, capsys):
    out = tmp_path / "ort.json"
    rc, stdout, err = run_cli(["ort-bench", str(DEMO), "--runs", "2", "--warmup", "0", "--no-on-the-fly",
                               "--json", str(out)], capsys)
    assert rc == 0, err
    assert f"wrote {out}" in stdout
    report = json.loads(out.read_text())
    for model in report["models"].values():
        assert set(model["variants"]) == {"fp32", "int8"}


def test_cli_prints_json_to_stdout_alone(capsys):
    rc, stdout, err = run_cli(["ort-bench", str(DEMO), "--runs", "1", "--warmup", "0", "--no-on-the-fly"], capsys)
    assert rc == 0, err
    assert json.loads(stdout)["models"]["encoder"]["best_ms"] > 0


def test_missing_bundle_is_an_error_naming_the_fix(tmp_path, capsys):
    rc, _, err = run_cli(["ort-bench", str(tmp_path / "nope")], capsys)
    assert rc == 2
    assert "manifest.toml does not exist" in err and "ocellus-tools manifest" in err


def test_bad_runs_is_refused(capsys):
    rc, _, err = run_cli(["ort-bench", str(DEMO), "--runs", "0"], capsys)
    assert rc == 2 and "--runs must be positive" in err


def test_times_the_bundles_onnxruntime_int8_file(built, capsys):
    """A bundle quantize made an int8-ort file for is timed in that file too (found through quantize.json while
    the manifest is format 1), with its form; the fields ocellus bench reads keep their meaning."""
    bundle, _ = built.get("clip", "perceiver", capsys)
    quant = {e["path"]: e["quant"] for e in json.loads((bundle / "quantize.json").read_text())["files"]}
    report = ort_bench(bundle, threads=1, runs=2, warmup=0, on_the_fly=False)
    for role, name in (("vision", "encoder"), ("resampler", "resampler")):
        model = report["models"][name]
        assert set(model["variants"]) == {"fp32", "int8", "int8-ort"}
        v = model["variants"]["int8-ort"]
        assert v["file"] == f"{role}.int8-ort.onnx" and v["quant"] == quant[v["file"]] and v["median_ms"] > 0
        assert model["variants"]["int8"]["quant"] == "qoperator" and "quant" not in model["variants"]["fp32"]
        timed = {k: x["median_ms"] for k, x in model["variants"].items()}
        assert model["best"] == min(timed, key=timed.get) and model["best_ms"] == min(timed.values())
