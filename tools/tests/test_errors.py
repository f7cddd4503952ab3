"""Bad input: a clear one-line message naming the problem and the fix, a non-zero exit, nothing overwritten."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
from onnx import numpy_helper

from conftest import run_cli


def _one_line_error(rc, err, *needles):
    assert rc != 0
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def test_missing_checkpoint_dir(tmp_path, capsys):
    missing = tmp_path / "no-such-checkpoint"
    rc, _, err = run_cli(["export", "--hf", str(missing), "--out", str(tmp_path / "out")], capsys)
    _one_line_error(rc, err, str(missing), "does not exist", "never downloads")
    assert not (tmp_path / "out" / "vision.fp32.onnx").exists()


def test_unknown_architecture(tmp_path, capsys):
    ck = tmp_path / "bert"
    ck.mkdir()
    (ck / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    rc, _, err = run_cli(["export", "--hf", str(ck), "--out", str(tmp_path / "out")], capsys)
    _one_line_error(rc, err, str(ck), "'bert'", "BertModel", "CLIP", "SigLIP")


def test_not_a_checkpoint(tmp_path, capsys):
    rc, _, err = run_cli(["export", "--hf", str(tmp_path), "--out", str(tmp_path / "out")], capsys)
    _one_line_error(rc, err, "no config.json")


def test_unwritable_output_dir(tmp_path, checkpoints, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    out = blocker / "bundle"  # cannot be created even by root
    rc, _, err = run_cli(["export", "--hf", str(checkpoints["clip"]), "--out", str(out)], capsys)
    _one_line_error(rc, err, str(out), "not writable", "--out")


def test_empty_calibration_folder(tmp_path, built, capsys):
    bundle = built.copy("clip", "perceiver", capsys, tmp_path / "b")
    before = (bundle / "vision.int8.onnx").read_bytes()
    empty = tmp_path / "calib"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    rc, _, err = run_cli(["quantize", str(bundle), "--images", str(empty)], capsys)
    _one_line_error(rc, err, str(empty), "no image files", "--scenes")
    assert (bundle / "vision.int8.onnx").read_bytes() == before


def test_unreadable_calibration_images(tmp_path, built, capsys):
    bundle = built.copy("clip", "perceiver", capsys, tmp_path / "b")
    folder = tmp_path / "calib"
    folder.mkdir()
    (folder / "broken.png").write_bytes(b"not a png")
    rc, _, err = run_cli(["quantize", str(bundle), "--images", str(folder)], capsys)
    _one_line_error(rc, err, str(folder), "no readable image")


def test_quantize_from_image_folder(tmp_path, built, capsys):
    from PIL import Image

    bundle = built.copy("siglip", "perceiver", capsys, tmp_path / "b")
    folder = tmp_path / "calib"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (48 + 8 * i, 80, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    rc, out, err = run_cli(["quantize", str(bundle), "--images", str(folder)], capsys)
    assert rc == 0, err
    assert "6 images from" in out
    assert "warning: calibrated on generated demo scenes" not in err  # the user's own frames: no warning
    calibration = json.loads((bundle / "quantize.json").read_text())["calibration"]
    assert calibration == {"source": f"images:{folder.resolve()}", "samples": 6}


def _tamper(path):
    model = onnx.load(str(path))
    init = max(model.graph.initializer, key=lambda t: np.prod(t.dims))
    arr = numpy_helper.to_array(init).copy()
    arr += np.random.default_rng(0).normal(0, 0.5, arr.shape).astype(arr.dtype)
    init.CopyFrom(numpy_helper.from_array(arr, init.name))
    onnx.save(model, str(path))


def test_tampered_onnx_fails_parity(tmp_path, built, capsys):
    bundle = built.copy("clip", "qformer", capsys, tmp_path / "b")
    ref_before = (bundle / "reference" / "img0" / "fp32" / "patch_tokens.npy").read_bytes()
    parity_before = (bundle / "parity.json").read_text()
    _tamper(bundle / "vision.fp32.onnx")
    rc, _, err = run_cli(["validate", str(bundle)], capsys)
    line = _one_line_error(rc, err, "vision.fp32.onnx", "patch_tokens", "cosine", "max abs diff", "export")
    assert "< 0.99999" in line
    assert (bundle / "reference" / "img0" / "fp32" / "patch_tokens.npy").read_bytes() == ref_before
    assert (bundle / "parity.json").read_text() == parity_before
    rc, _, err = run_cli(["manifest", str(bundle)], capsys)  # the manifest refuses figures of another file
    _one_line_error(rc, err, "vision.fp32.onnx", "changed after", "validate")


def test_int8_threshold_failure(tmp_path, built, capsys):
    bundle = built.copy("siglip", "qformer", capsys, tmp_path / "b")
    rc, _, err = run_cli(["validate", str(bundle), "--min-cosine-int8", "0.9999999"], capsys)
    _one_line_error(rc, err, "int8.onnx", "against fp32", "quantize")


def test_steps_out_of_order(tmp_path, capsys):
    rc, _, err = run_cli(["quantize", str(tmp_path / "nothing")], capsys)
    _one_line_error(rc, err, "does not exist", "export")


def test_console_script_exit_code(tmp_path):
    """The installed entry point (pyproject [project.scripts]) exits non-zero with the message on stderr."""
    from pathlib import Path

    script = Path(sys.executable).with_name("ocellus-tools")
    exe = [str(script)] if script.exists() else [sys.executable, "-m", "ocellus_tools.cli"]
    r = subprocess.run([*exe, "export", "--hf", str(tmp_path / "gone"), "--out", str(tmp_path / "o")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "does not exist" in r.stderr and r.stdout == ""


def test_version(capsys):
    rc, out, _ = run_cli(["--version"], capsys)
    assert rc == 0 and "ocellus-tools 0.1.0" in out


def test_validate_without_its_checkpoint(tmp_path, checkpoints, capsys):
    import shutil

    ck = tmp_path / "ck"
    shutil.copytree(checkpoints["siglip"], ck)
    out = tmp_path / "b"
    rc, _, err = run_cli(["export", "--hf", str(ck), "--out", str(out), "--resampler", "qformer", "--latents", "4"],
                         capsys)
    assert rc == 0, err
    rc, _, err = run_cli(["quantize", str(out), "--scenes", "16", "--keep-slower"], capsys)
    assert rc == 0, err
    shutil.rmtree(ck)
    rc, _, err = run_cli(["validate", str(out)], capsys)
    _one_line_error(rc, err, str(ck), "is gone", "export again")
    assert not (out / "reference").exists()


def test_checkpoint_without_weights(tmp_path, checkpoints, capsys):
    ck = tmp_path / "ck"
    ck.mkdir()
    (ck / "config.json").write_text((checkpoints["clip"] / "config.json").read_text())
    rc, _, err = run_cli(["export", "--hf", str(ck), "--out", str(tmp_path / "out")], capsys)
    _one_line_error(rc, err, "failed to load CLIPModel", str(ck), "weights")


def test_tokenizer_missing_then_given(tmp_path, checkpoints, capsys):
    import shutil

    ck = tmp_path / "ck"
    shutil.copytree(checkpoints["clip"], ck)
    tok = tmp_path / "tok.json"
    shutil.move(ck / "tokenizer.json", tok)
    (ck / "tokenizer_config.json").unlink()
    rc, _, err = run_cli(["export", "--hf", str(ck), "--out", str(tmp_path / "out")], capsys)
    _one_line_error(rc, err, str(ck), "no tokenizer.json", "--tokenizer")
    rc, _, err = run_cli(["export", "--hf", str(ck), "--out", str(tmp_path / "out"), "--tokenizer", str(tok),
                          "--latents", "4", "--resampler-depth", "1"], capsys)
    assert rc == 0, err
    assert (tmp_path / "out" / "tokenizer.json").is_file()


def test_tokenizer_of_another_model(tmp_path, checkpoints, capsys):
    from tokenizers import Tokenizer, models

    big = Tokenizer(models.WordLevel(vocab={f"w{i}": i for i in range(500)}, unk_token="w0"))
    big.save(str(tmp_path / "big.json"))
    rc, _, err = run_cli(["export", "--hf", str(checkpoints["siglip"]), "--out", str(tmp_path / "out"),
                          "--tokenizer", str(tmp_path / "big.json")], capsys)
    _one_line_error(rc, err, "500 tokens", "another model", "--tokenizer")


def test_bad_resampler_geometry_leaves_no_directory(tmp_path, checkpoints, capsys):
    out = tmp_path / "new-bundle"
    rc, _, err = run_cli(["export", "--hf", str(checkpoints["clip"]), "--out", str(out), "--latent-dim", "30",
                          "--resampler-heads", "4"], capsys)
    _one_line_error(rc, err, "not divisible by heads 4", "--resampler-heads")
    assert not out.exists()
