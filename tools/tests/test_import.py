"""`ocellus-tools import` of a third-party-style backbone (a Hugging Face ViTModel exported with a dynamic batch
at opset 14, built in the test), then `manifest` for the vision-only, fp32-only bundle; `validate` against the
original file; the clear errors; and, with OCELLUS_BIN, the runtime on the same bundle."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tomllib

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from PIL import Image

from conftest import run_cli
from ocellus_tools.bundle import Preprocess
from ocellus_tools.images import scene_frame
from ocellus_tools.prepare import prepare_image
from ocellus_tools.validate import cosine

N, D = 1 + (64 // 16) ** 2, 64  # the class token counts


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _one_line_error(rc, err, *needles):
    assert rc == 2, err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def _frames(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [scene_frame(rng, w, h) for w, h in ((64, 64), (161, 96), (80, 129), (49, 33))]


def test_import_then_manifest_vision_only(imported, vit_onnx):
    bundle, log = imported
    assert f"patch_tokens [1, {N}, {D}] = last_hidden_state" in log
    m = tomllib.loads((bundle / "manifest.toml").read_text())
    assert m["format"] == 2 and m["source"] == "import:vit.onnx" and m["embed_dim"] == 64
    assert "text" not in m and "scores" not in m and "prototypes" not in m
    assert m["preprocess"] == {"height": 64, "width": 64, "resize": "letterbox", "interpolation": "bilinear",
                               "crop": "none", "channel_order": "rgb", "rescale": 1 / 255, "mean": [0.5] * 3,
                               "std": [0.5] * 3, "pad": [114, 114, 114]}
    assert m["resampler"] == {"kind": "qformer", "num_latents": 8, "latent_dim": 32}
    files = {(f["role"], f["variant"]): f for f in m["files"]}
    assert set(files) == {("vision", "fp32"), ("resampler", "fp32")}  # fp32-only: nothing was quantized
    assert all("parity" not in f and "engines" not in f for f in m["files"])  # nor validated
    vis = files[("vision", "fp32")]
    assert vis["inputs"] == [{"name": "pixel_values", "shape": [1, 3, 64, 64], "dtype": "float32"}]
    assert vis["outputs"] == [{"name": "patch_tokens", "shape": [1, N, D], "dtype": "float32"},
                              {"name": "image_embeds", "shape": [1, 64], "dtype": "float32"}]
    assert files[("resampler", "fp32")]["inputs"][0]["shape"] == [1, N, D]
    assert sorted(p.name for p in bundle.iterdir()) == ["manifest.toml", "resampler.fp32.onnx", "source.json",
                                                        "vision.fp32.onnx"]

    model = onnx.load(str(bundle / "vision.fp32.onnx"))
    onnx.checker.check_model(model, full_check=True)
    assert all(n.domain in ("", "ai.onnx") for n in model.graph.node)
    ops = {n.op_type for n in model.graph.node}
    assert "MatMul" in ops and not ops & {"Shape", "Resize", "Gemm"}  # interpolation folded; MatMuls left quantizable
    dims = [[d.dim_value for d in vi.type.tensor_type.shape.dim] for vi in model.graph.value_info]
    assert dims and all(ds and all(v > 0 for v in ds) for ds in dims)  # static shapes everywhere

    # the bundle's file against the original, both in onnxruntime, on the same prepared inputs
    pre = Preprocess.from_record(m["preprocess"])
    ours, orig = _session(bundle / "vision.fp32.onnx"), _session(vit_onnx)
    for frame in _frames():
        pv = prepare_image(frame, pre)
        pt, ie = ours.run(None, {"pixel_values": pv})
        hidden, _ = orig.run(None, {"pixel_values": pv})
        assert pt.shape == (1, N, D) and ie.shape == (1, 64)
        assert cosine(pt, hidden) >= 0.9999 and cosine(ie, hidden[:, 0]) >= 0.9999


def test_validate_against_the_original(tmp_path, imported, capsys):
    bundle = shutil.copytree(imported[0], tmp_path / "b")
    rc, out, err = run_cli(["validate", str(bundle)], capsys)
    assert rc == 0, err
    assert "vision.fp32.onnx vs onnxruntime:vit.onnx" in out
    parity = json.loads((bundle / "parity.json").read_text())
    assert parity["files"]["vision.fp32.onnx"]["reference"] == "onnxruntime:vit.onnx"
    assert parity["files"]["resampler.fp32.onnx"]["reference"] == "pytorch"
    assert all(o["cosine"] >= 0.99999 for f in parity["files"].values() for o in f["outputs"])
    assert set(parity["tract"]["files"]) == {"vision.fp32.onnx", "resampler.fp32.onnx"}
    index = tomllib.loads((bundle / "reference" / "index.toml").read_text())
    assert "text" not in index and not (bundle / "reference" / "text").exists()
    assert len(index["images"]) == 6  # letterbox adds a rounding tie and an upscaled image
    pre = Preprocess.from_record(tomllib.loads((bundle / "manifest.toml").read_text())["preprocess"])
    pads = 0
    for img in index["images"]:
        assert set(img["outputs"]) == {"fp32"}
        with Image.open(bundle / "reference" / img["file"]) as im:
            pv = prepare_image(im, pre)
        np.testing.assert_array_equal(np.load(bundle / "reference" / img["pixel_values"]), pv)
        pad = (np.float32(114) * np.float32(1 / 255) - np.float32(0.5)) / np.float32(0.5)
        pads += int(np.all(pv[0, :, 0, 0] == pad) or np.all(pv[0, :, -1, -1] == pad))
    assert pads >= 4  # the non-square images carry letterbox bands
    rc, _, err = run_cli(["manifest", str(bundle)], capsys)
    assert rc == 0, err
    m = tomllib.loads((bundle / "manifest.toml").read_text())
    assert m["files"][0]["parity"]["reference"] == "onnxruntime:vit.onnx"

    rc, _, err = run_cli(["validate", str(bundle), "--reference", "pytorch"], capsys)
    _one_line_error(rc, err, "no PyTorch model", "--reference onnxruntime")


def test_validate_needs_the_original(tmp_path, imported, vit_onnx, capsys):
    bundle = shutil.copytree(imported[0], tmp_path / "b")
    src = json.loads((bundle / "source.json").read_text())
    moved = tmp_path / "moved.onnx"
    src["spec"]["path"] = str(tmp_path / "gone.onnx")
    (bundle / "source.json").write_text(json.dumps(src))
    rc, _, err = run_cli(["validate", str(bundle)], capsys)
    _one_line_error(rc, err, "gone.onnx", "is gone", "--original")
    moved.write_bytes(b"another file")
    rc, _, err = run_cli(["validate", str(bundle), "--original", str(moved)], capsys)
    _one_line_error(rc, err, "not the file this bundle was imported from", "sha256")
    shutil.copy(vit_onnx, moved)
    rc, _, err = run_cli(["validate", str(bundle), "--original", str(moved)], capsys)
    assert rc == 0, err


@pytest.mark.parametrize("pool", ["mean", "pooler_output"])
def test_pool_choices(tmp_path, vit_onnx, pool, capsys):
    out = tmp_path / "b"
    rc, _, err = run_cli(["import", str(vit_onnx), "--out", str(out), "--pool", pool, "--latents", "4",
                          "--resampler-depth", "1"], capsys)
    assert rc == 0, err
    pv = prepare_image(_frames()[1], Preprocess.from_record(json.loads((out / "source.json").read_text())
                                                                 ["preprocess"]))
    _, ie = _session(out / "vision.fp32.onnx").run(None, {"pixel_values": pv})
    hidden, pooler = _session(vit_onnx).run(None, {"pixel_values": pv})
    want = hidden.mean(axis=1) if pool == "mean" else pooler
    assert cosine(ie, want) >= 0.9999 and cosine(ie, hidden[:, 0]) < 0.999


def test_tokens_inside_the_graph_pooled_after_the_final_norm(tmp_path, vit_onnx, capsys):
    """--tokens names an internal tensor (the last block's output, before the final LayerNorm), --pool-after the
    normed tokens: the class token is taken after the norm, the tokens before it."""
    model = onnx.load(str(vit_onnx))
    ln = [n for n in model.graph.node if n.output[0] == "last_hidden_state"]
    assert ln, "the exporter names the final LayerNorm's output last_hidden_state"
    pre_norm = next(n for n in model.graph.node if n.op_type == "Add" and "layers.1" in n.name
                    and n.name.endswith("Add_1"))
    out = tmp_path / "b"
    rc, _, err = run_cli(["import", str(vit_onnx), "--out", str(out), "--tokens", pre_norm.name, "--pool-after",
                          "last_hidden_state", "--latents", "4", "--resampler-depth", "1"], capsys)
    assert rc == 0, err
    spec = json.loads((out / "source.json").read_text())["spec"]
    assert spec["tokens"] == pre_norm.output[0] and spec["pool_after"] == "last_hidden_state"
    pv = prepare_image(_frames()[0], Preprocess.from_record(json.loads((out / "source.json").read_text())
                                                                 ["preprocess"]))
    pt, ie = _session(out / "vision.fp32.onnx").run(None, {"pixel_values": pv})
    hidden, _ = _session(vit_onnx).run(None, {"pixel_values": pv})
    assert pt.shape == (1, N, D) and cosine(pt, hidden) < 0.99 and cosine(ie, hidden[:, 0]) >= 0.9999


def test_no_fold(tmp_path, vit_onnx, capsys):
    """--no-fold keeps the shape arithmetic and the interpolation in the graph; the engines still agree."""
    rc, out, err = run_cli(["import", str(vit_onnx), "--out", str(tmp_path / "b"), "--no-fold", "--latents", "4"],
                           capsys)
    assert rc == 0, err
    assert "not folded" in out and "tract vs onnxruntime: patch_tokens cosine 1.0000000" in out
    ops = {n.op_type for n in onnx.load(str(tmp_path / "b" / "vision.fp32.onnx")).graph.node}
    assert {"Shape", "Resize"} <= ops


def test_opset17_and_dynamic_size(tmp_path, capsys):
    """opset 17, height and width dynamic too: --size picks the resolution, the in-graph interpolation makes the
    token count follow it (6 x 8 patches + the class token at 96x128)."""
    from ocellus_tools.tiny import make_tiny_vit_onnx

    src = make_tiny_vit_onnx(tmp_path / "vit17.onnx", seed=1, opset=17, dynamic="all")
    rc, _, err = run_cli(["import", str(src), "--out", str(tmp_path / "b"), "--latents", "4"], capsys)
    _one_line_error(rc, err, "pixel_values", "dynamic size", "--size HxW")
    rc, out, err = run_cli(["import", str(src), "--out", str(tmp_path / "b"), "--size", "96x128", "--latents", "4",
                            "--resize", "squash"], capsys)
    assert rc == 0, err
    assert "opset 17" in out and "patch_tokens [1, 49, 64]" in out
    model = onnx.load(str(tmp_path / "b" / "vision.fp32.onnx"))
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == [1, 3, 96, 128]


def test_wrong_tokens_name(tmp_path, vit_onnx, imported, capsys):
    out = tmp_path / "new"
    rc, _, err = run_cli(["import", str(vit_onnx), "--out", str(out), "--tokens", "last_hidden"], capsys)
    _one_line_error(rc, err, "no tensor or node named 'last_hidden'", "close: last_hidden_state", "--tokens",
                    "pooler_output")
    assert not out.exists()
    rc, _, err = run_cli(["import", str(vit_onnx), "--out", str(out), "--tokens", "pooler_output"], capsys)
    _one_line_error(rc, err, "pooler_output", "[1, 64]", "not float32 [1, N, D]", "--tokens")
    assert not out.exists()
    # an existing bundle is left as it was
    bundle = shutil.copytree(imported[0], tmp_path / "b")
    before = {p.name: p.read_bytes() for p in bundle.iterdir() if p.is_file()}
    rc, _, err = run_cli(["import", str(vit_onnx), "--out", str(bundle), "--pool", "nope"], capsys)
    _one_line_error(rc, err, "'nope'", "--pool")
    assert {p.name: p.read_bytes() for p in bundle.iterdir() if p.is_file()} == before
    assert not any(p.name.startswith(".staging") for p in bundle.iterdir())


def test_declared_token_count_disagrees_with_the_run(tmp_path, vit_onnx, capsys):
    """197 declared where the graph computes 257 passes onnx.checker: the import runs the file and refuses."""
    model = onnx.load(str(vit_onnx))
    dims = model.graph.output[0].type.tensor_type.shape.dim
    dims[1].Clear()
    dims[1].dim_value = 10
    dims[2].Clear()
    dims[2].dim_value = 64
    onnx.checker.check_model(model, full_check=True)
    bad = tmp_path / "declared-10.onnx"
    onnx.save(model, str(bad))
    rc, _, err = run_cli(["import", str(bad), "--out", str(tmp_path / "b")], capsys)
    _one_line_error(rc, err, "tensor last_hidden_state", "declares [batch,10,64]", f"[1, {N}, {D}]", "--size",
                    "--ignore-declared-shapes")
    assert not (tmp_path / "b").exists()
    rc, out, err = run_cli(["import", str(bad), "--out", str(tmp_path / "b"), "--ignore-declared-shapes",
                            "--latents", "4"], capsys)
    assert rc == 0, err
    assert f"patch_tokens [1, {N}, {D}]" in out


def test_static_size_conflict_and_other_inputs(tmp_path, vit_onnx, capsys):
    rc, _, err = run_cli(["import", str(vit_onnx), "--out", str(tmp_path / "b"), "--size", "96x96"], capsys)
    _one_line_error(rc, err, "static 64x64", "--size 96x96".replace("--size ", ""), "--size 64x64")
    model = onnx.load(str(vit_onnx))
    model.graph.input.append(onnx.helper.make_tensor_value_info("mask", onnx.TensorProto.INT64, [1, 17]))
    two = tmp_path / "two-inputs.onnx"
    onnx.save(model, str(two))
    rc, _, err = run_cli(["import", str(two), "--out", str(tmp_path / "b")], capsys)
    _one_line_error(rc, err, "inputs besides pixel_values", "mask", "only input")
    rc, _, err = run_cli(["import", str(tmp_path / "missing.onnx"), "--out", str(tmp_path / "b")], capsys)
    _one_line_error(rc, err, "does not exist")
    rc, _, err = run_cli(["import", str(vit_onnx), "--out", str(tmp_path / "b"), "--pad", "1", "2", "3"], capsys)
    _one_line_error(rc, err, "--pad", "--resize letterbox")
    assert not (tmp_path / "b").exists()


def test_preprocessor_config(tmp_path, vit_onnx, capsys):
    """A Hugging Face preprocessor_config.json (DINOv2's BitImageProcessor style: shortest edge + crop)."""
    pc = {"crop_size": {"height": 64, "width": 64}, "do_center_crop": True, "do_normalize": True,
          "do_rescale": True, "do_resize": True, "image_mean": [0.485, 0.456, 0.406],
          "image_std": [0.229, 0.224, 0.225], "resample": 2, "rescale_factor": 0.00392156862745098,
          "size": {"shortest_edge": 64}}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(pc))
    rc, _, err = run_cli(["import", str(vit_onnx), "--out", str(tmp_path / "b"), "--preprocessor",
                          str(tmp_path / "preprocessor_config.json"), "--latents", "4"], capsys)
    assert rc == 0, err
    p = json.loads((tmp_path / "b" / "source.json").read_text())["preprocess"]
    assert (p["resize"], p["crop"], p["interpolation"]) == ("shortest_edge", "center", "bilinear")
    assert p["mean"] == [0.485, 0.456, 0.406] and "pad" not in p


# ---- the runtime on the imported bundle (needs the `ocellus` binary with --dump and vision-only support) ----

OCELLUS_BIN = os.environ.get("OCELLUS_BIN")


@pytest.mark.usefixtures("ocellus_bin")
def test_runtime_on_the_imported_bundle(tmp_path, imported, capsys):
    bundle = shutil.copytree(imported[0], tmp_path / "bundle")
    rng = np.random.default_rng(5)
    for label, colour in (("red", (220, 30, 30)), ("blue", (30, 40, 220))):  # something to score frames against
        (tmp_path / "examples" / label).mkdir(parents=True)
        for i in range(2):
            a = np.clip(rng.normal(0, 25, (48, 64, 3)) + colour, 0, 255).astype(np.uint8)
            Image.fromarray(a).save(tmp_path / "examples" / label / f"{i}.png")
    for step in (["validate", str(bundle)], ["prototypes", str(bundle), str(tmp_path / "examples")],
                 ["manifest", str(bundle)]):
        rc, _, err = run_cli(step, capsys)
        assert rc == 0, f"{step[0]}: {err}"
    cfg = tmp_path / "ocellus.toml"  # no [prompts]: the bundle has no text encoder, its prototypes are scored
    cfg.write_text(f"""[[camera]]
name = "synthetic"
source = "synthetic"
pixel-format = "yuyv"
width = 160
height = 96
fps = 30
pool-size = 4
seed = 1

[model]
manifest = {json.dumps(str(bundle / "manifest.toml"))}
variant = "fp32"
threads = 1
""")
    image = tmp_path / "frame.png"  # landscape with an odd width: letterbox bands above and below
    Image.fromarray(scene_frame(np.random.default_rng(3), 161, 96)).save(image)

    def ocellus(*args):
        r = subprocess.run([OCELLUS_BIN, *args], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, f"ocellus {' '.join(args)}: {r.stderr}"
        return r

    ocellus("check", "-c", str(cfg))
    dump = tmp_path / "dump"
    ocellus("infer", "--config", str(cfg), "--dump", str(dump), str(image))
    found = {p.stem: np.load(p) for p in dump.rglob("*.npy")}
    assert {"pixel_values", "patch_tokens", "image_embeds", "latents"} <= set(found), sorted(found)
    pre = Preprocess.from_record(tomllib.loads((bundle / "manifest.toml").read_text())["preprocess"])
    with Image.open(image) as im:
        pv = prepare_image(im, pre)
    assert found["pixel_values"].shape == pv.shape and cosine(found["pixel_values"], pv) >= 0.9999
    assert np.max(np.abs(found["pixel_values"] - pv)) <= 1e-5
    pt, ie = _session(bundle / "vision.fp32.onnx").run(None, {"pixel_values": pv})
    lat = _session(bundle / "resampler.fp32.onnx").run(None, {"patch_tokens": pt})[0]
    for name, want in (("patch_tokens", pt), ("image_embeds", ie), ("latents", lat)):
        got = found[name].reshape(want.shape)
        assert cosine(got, want) >= 0.9999, name
    ocellus("run", "-c", str(cfg), "--frames", "20", "--no-shm")
