"""quantize: the int8 form per engine, quantize.json, the speed gate and --keep-slower, the sensitivity search,
private temporary files under concurrent runs, the calibration warning."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import run_cli
from ocellus_tools import quantize as q
from ocellus_tools.bundle import Preprocess
from ocellus_tools.images import calibration_frames, text_corpus
from ocellus_tools.prepare import prepare_image

ROLES = ("vision", "resampler", "text")
TOOLS = Path(__file__).resolve().parents[1]


def _held_out(bundle: Path) -> list[np.ndarray]:
    """The 32 held-out scenes `quantize --scenes N` (default --seed 7) measures the vision files on."""
    p = json.loads((bundle / "source.json").read_text())["preprocess"]
    pre = Preprocess(**{**p, "mean": tuple(p["mean"]), "std": tuple(p["std"])})
    return [prepare_image(im, pre) for im in calibration_frames(32, pre.width, pre.height, 7 + 1_000_003)]


def _text_feeds(bundle: Path) -> list[dict]:
    from tokenizers import Tokenizer

    from ocellus_tools.export import encode

    ids, mask = encode(Tokenizer.from_file(str(bundle / "tokenizer.json")), text_corpus())
    return q.text_feeds(q._session(bundle / "text.fp32.onnx"), ids, mask)


def test_quantize_json_describes_each_file_for_its_engine(built, capsys):
    bundle, logs = built.get("clip", "qformer", capsys)
    doc = json.loads((bundle / "quantize.json").read_text())
    assert doc["tools_version"] == "0.1.0" and doc["target_cosine"] == 0.9995 and doc["keep_slower"] is True
    assert doc["cpu"]["isa"] == q.isa_phrase(doc["cpu"]["features"]) and doc["cpu"]["model"]
    assert doc["calibration"]["source"] == "scenes:16" and doc["calibration"]["samples"] == 16
    assert doc["skipped"] == []
    for role in ROLES:
        fp32 = bundle / f"{role}.fp32.onnx"
        candidates = q.nodes_with_constant_weights(onnx.load(str(fp32)))
        outputs = [o.name for o in onnx.load(str(fp32), load_external_data=False).graph.output]
        entries = [e for e in doc["files"] if e["role"] == role]
        assert sorted(e["path"] for e in entries) == [f"{role}.int8-ort.onnx", f"{role}.int8.onnx"]
        for e in entries:
            tract_file = e["path"] == f"{role}.int8.onnx"
            assert e["variant"] == "int8" and (bundle / e["path"]).is_file()
            assert e["engines"] == (["tract"] if tract_file else ["onnxruntime"])
            assert e["quant"] == "qoperator" if tract_file else e["quant"] in ("qdq", "dynamic")
            assert list(e["cosine"]) == outputs and all(c >= 0.9995 for c in e["cosine"].values()), e
            assert e["candidates"] == len(candidates)
            assert set(e["kept_float"]) <= set(candidates)
            assert len(e["kept_float"]) == e["candidates"] - e["quantized_nodes"]
            sp = e["speed_ms"]
            assert sp["engine"] == e["engines"][0] and sp["threads"] == 1 and sp["fp32"] > 0 and sp["int8"] > 0
            assert e.get("forced", False) == (sp["speedup"] < q.MIN_SPEEDUP)  # --keep-slower marks what it kept
            model = onnx.load(str(bundle / e["path"]))
            ops = [n.op_type for n in model.graph.node]
            if e["quant"] == "qoperator":
                assert ops.count("QLinearMatMul") + ops.count("QLinearConv") == e["quantized_nodes"]
            elif e["quant"] == "qdq":
                assert "QLinearMatMul" not in ops and {"QuantizeLinear", "DequantizeLinear", "MatMul"} <= set(ops)
            else:
                assert "MatMulInteger" in ops and "QLinearMatMul" not in ops
            if not tract_file:  # the faster of onnxruntime's two forms (of those that met the target) was kept
                alt = e["alternatives"]
                assert set(alt) == {"qdq", "dynamic"}
                assert alt[e["quant"]]["int8_ms"] == min(a["int8_ms"] for a in alt.values() if "int8_ms" in a)
            assert e["all_int8"]["speed_ms"]["int8"] > 0 and e["search"]["files_built"] >= 1
    # the final table names every file with its engine and figures
    table = logs["quantize"]
    for role in ROLES:
        assert f"{role}.int8.onnx" in table and f"{role}.int8-ort.onnx" in table
    assert "fp32 ms" in table and "speedup" in table and doc["cpu"]["isa"] in table
    assert "plan:" in table and "MatMul/Conv nodes" in table and "expected" in table


def test_recorded_cosine_is_the_engines_own(built, capsys):
    """The cosine in quantize.json is what the file computes in its engine on the held-out scenes."""
    bundle, _ = built.get("siglip", "perceiver", capsys)
    doc = json.loads((bundle / "quantize.json").read_text())
    feeds = [{"pixel_values": pv} for pv in _held_out(bundle)]
    src = bundle / "vision.fp32.onnx"
    ref_runner = q.Runner("onnxruntime", src, ["pixel_values"])
    reference = [ref_runner.run(f) for f in feeds]
    names = ["patch_tokens", "image_embeds"]
    for e in (e for e in doc["files"] if e["role"] == "vision"):
        got = q.min_cosines(q.Runner(e["engines"][0], bundle / e["path"], ["pixel_values"]), feeds, reference, names)
        assert got == pytest.approx(e["cosine"], abs=2e-7), e["path"]


def _virtual_clock(monkeypatch, fp32_ms: float, int8_ms: float) -> None:
    """quantize's timer runs on a virtual clock: each run of an fp32 file advances it by fp32_ms, any other file by
    int8_ms (the files really run; only the time they seem to take is set)."""
    now = [0]
    monkeypatch.setattr(q, "_clock_ns", lambda: now[0])
    real_init = q.Runner.__init__

    def init(self, engine, path, input_names):
        real_init(self, engine, path, input_names)
        run, cost = self.run, int(1e6 * (fp32_ms if ".fp32." in Path(path).name else int8_ms))

        def timed(feed):
            now[0] += cost
            return run(feed)

        self.run = timed

    monkeypatch.setattr(q.Runner, "__init__", init)


def test_speed_gate_skips_slower_int8_and_keep_slower_writes_it(tmp_path, built, capsys, monkeypatch):
    bundle = built.copy("clip", "perceiver", capsys, tmp_path / "b")
    isa = q.cpu_info()["isa"]
    _virtual_clock(monkeypatch, fp32_ms=1.0, int8_ms=10.0)
    rc, out, err = run_cli(["quantize", str(bundle), "--scenes", "8"], capsys)
    assert rc == 0, err
    doc = json.loads((bundle / "quantize.json").read_text())
    assert doc["files"] == [] and len(doc["skipped"]) == 6
    for s in doc["skipped"]:
        assert f"{s['engine']} int8 (" in s["reason"] and f"0.10x the speed of fp32 on this CPU ({isa})" in \
            s["reason"], s
        assert s["speed_ms"]["fp32"] == 1.0 and s["speed_ms"]["int8"] == 10.0
        assert not (bundle / s["path"]).exists()  # the earlier run's file is gone, not left contradicting the record
    assert out.count("[skipped]") == 6 and "0.10x the speed of fp32" in out

    rc, out, err = run_cli(["quantize", str(bundle), "--scenes", "8", "--keep-slower"], capsys)
    assert rc == 0, err
    doc = json.loads((bundle / "quantize.json").read_text())
    assert len(doc["files"]) == 6 and doc["skipped"] == [] and doc["keep_slower"] is True
    for e in doc["files"]:
        assert e["forced"] is True and "0.10x the speed of fp32" in e["forced_reason"]
        assert (bundle / e["path"]).is_file()
    assert out.count("[kept slower: --keep-slower]") == 6

    _virtual_clock(monkeypatch, fp32_ms=1.0, int8_ms=0.5)
    rc, out, err = run_cli(["quantize", str(bundle), "--scenes", "8"], capsys)
    assert rc == 0, err
    doc = json.loads((bundle / "quantize.json").read_text())
    assert len(doc["files"]) == 6 and not any(e.get("forced") for e in doc["files"])
    assert all(e["speed_ms"]["speedup"] == 2.0 for e in doc["files"])


def test_search_meets_the_target_with_the_most_int8_nodes(built, capsys):
    """The tiny CLIP text encoder misses cosine 0.9995 with every MatMul in int8; the search finds the largest
    prefix of its ranking that meets it, checked here again in tract, with O(log2 N) real files."""
    bundle, _ = built.get("clip", "perceiver", capsys)
    feeds = _text_feeds(bundle)
    check = feeds[::4][:32]
    with q.Workspace() as ws:
        job = q.RoleJob("text", bundle / "text.fp32.onnx", feeds, check, ws, 0.9995)
        out = job.all_int8(q.QOPERATOR, job.calibrate("calibrating"))
        assert out.path is None and not job.meets(out.all_int8["cosine"]), out.all_int8
        job.search(out)
        n, k = len(job.nodes), len(out.quantized)
        assert 0 < k < n and out.path is not None
        cos = q.min_cosines(q.Runner("tract", out.path, job.inputs), check, job.reference, job.outputs)
        assert cos == out.cosine and min(cos.values()) >= 0.9995
        assert q.check_quantized(out.path, q.QOPERATOR) == k
        tried = out.search["tried"]
        assert any(t["quantized"] == k + 1 and not t["meets"] for t in tried) or k + 1 == n
        assert out.search["files_built"] <= 2 * math.ceil(math.log2(n)) + 1
        assert out.search["method"] == "sensitivity + search"


@pytest.mark.parametrize("fmt", [q.QOPERATOR, q.QDQ, q.DYNAMIC], ids=lambda f: f.quant)
def test_emulated_int8_output_matches_onnxruntime(tmp_path, fmt):
    """The search ranks nodes by an emulation of their int8 output: it must be close to what onnxruntime's int8
    node computes (much closer than int8 is to fp32)."""
    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.2, (48, 40)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 10, 48])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10, 40])],
                              [numpy_helper.from_array(w, "w")])
    src = tmp_path / "mm.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(src))
    feeds = [{"x": (rng.normal(0, 1, (1, 10, 48)) + rng.normal(0, 0.3, (1, 1, 48))).astype(np.float32)}
             for _ in range(8)]
    with q.Workspace() as ws:
        cache = ws.path("cache.json")
        link = ws.link(src)
        q.build(q.QOPERATOR, link, ws.path("cal.onnx"), ["mm"], cache, q._Reader(feeds))
        dst = ws.path("int8.onnx")
        q.build(fmt, link, dst, ["mm"], cache)
        from onnxruntime.quantization.calibrate import load_tensors_data

        ranges = {k: (float(np.min(v.range_value[0])), float(np.max(v.range_value[1])))
                  for k, v in load_tensors_data(cache).data.items()}
        node = onnx.load(str(src)).graph.node[0]
        sess = q._session(dst)
        for feed in feeds:
            fp32 = feed["x"] @ w
            got = sess.run(None, feed)[0]
            emulated = q.emulate(fmt, node, feed["x"], {"w": w}, ranges)
            assert np.linalg.norm(emulated - got) < 0.1 * np.linalg.norm(got - fp32), fmt.quant


def test_concurrent_quantize_and_ort_bench_on_one_bundle(tmp_path, built, capsys):
    """Two quantize runs and an ort-bench on the same bundle at once all succeed and leave nothing behind
    (onnxruntime's quantizer used to write <file>-inferred.onnx next to the bundle's files, where they collided)."""
    bundle = built.copy("siglip", "qformer", capsys, tmp_path / "b")
    before = sorted(os.listdir(bundle))
    base = [sys.executable, "-m", "ocellus_tools.cli", "--threads", "1"]
    cmds = [base + ["quantize", str(bundle), "--scenes", "8", "--keep-slower"]] * 2
    cmds.append(base + ["ort-bench", str(bundle), "--runs", "3", "--warmup", "1", "--json", str(tmp_path / "o.json")])
    env = {**os.environ, "PYTHONPATH": str(TOOLS)}
    procs = [subprocess.Popen(c, cwd=TOOLS, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for c in cmds]
    try:
        results = [p.communicate(timeout=600) for p in procs]  # a watchdog, not a time limit on the work
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for c, p, (_, err) in zip(cmds, procs, results):
        assert p.returncode == 0, f"{c[5]} failed: {err[-2000:]}"
    assert sorted(os.listdir(bundle)) == before
    doc = json.loads((bundle / "quantize.json").read_text())
    for e in doc["files"]:
        onnx.checker.check_model(onnx.load(str(bundle / e["path"])))


def test_calibration_warning_for_a_model_that_is_not_the_demo(built, capsys):
    bundle, logs = built.get("siglip", "qformer", capsys)
    err = logs["quantize:stderr"]
    assert "warning: calibrated on generated demo scenes" in err and "hf-siglip:" in err and "--images DIR" in err
    assert len([line for line in err.splitlines() if "calibrated on generated demo scenes" in line]) == 1
    doc = json.loads((bundle / "quantize.json").read_text())
    assert "--images DIR" in doc["calibration"]["warning"]


def test_target_cosine_out_of_range_is_refused(tmp_path, built, capsys):
    bundle = built.copy("clip", "perceiver", capsys, tmp_path / "b")
    before = (bundle / "quantize.json").read_bytes()
    rc, _, err = run_cli(["quantize", str(bundle), "--scenes", "8", "--target-cosine", "1.5"], capsys)
    assert rc == 2 and "--target-cosine must be between 0 and 1, got 1.5" in err
    assert (bundle / "quantize.json").read_bytes() == before


def test_isa_phrase_names_what_decides_int8_speed():
    assert q.isa_phrase(["avx2", "fma"]) == "AVX2 without VNNI"
    assert q.isa_phrase(["avx2", "avx512f", "avx512_vnni"]) == "AVX-512 with VNNI"
    assert q.isa_phrase(["avx2", "avx_vnni"]) == "AVX2 with AVX-VNNI"
    assert q.isa_phrase(["avx2", "avx512f", "avx512_vnni", "amx_int8"]) == "AVX-512 with VNNI and AMX"
    assert q.isa_phrase(["asimd", "asimddp"], "aarch64") == "arm64 with dotprod"
    assert q.isa_phrase(["asimd"], "aarch64") == "arm64 without dotprod"
