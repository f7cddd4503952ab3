"""The recording reader (ocellus_tools.recording) on the committed version-1 recording, its refusals, and, with
OCELLUS_BIN, the round trip through the runtime: `ocellus record` the demo scenes, `ocellus replay` them with the int8
variant, and the fp32/int8 top-1 agreement the replay reports equals `ocellus-tools evaluate --recording` on the
same frames; `quantize --recording` calibrates on them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from ocellus_tools.recording import RecordingError, open_recording, to_rgb

from conftest import run_cli

REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO / "tests" / "fixtures" / "recording-v1"
DEMO = REPO / "models" / "demo"
OCELLUS_BIN = os.environ.get("OCELLUS_BIN")


def copy_fixture(tmp_path: Path) -> Path:
    dst = tmp_path / "rec"
    shutil.copytree(FIXTURE, dst)
    return dst


def test_the_committed_recording_reads():
    rec = open_recording(FIXTURE)
    assert rec.header["version"] == 1 and len(rec.cameras) == 1
    cam = rec.cameras[0]
    r = cam.results
    assert len(cam) == len(r) == rec.header["cameras"][0]["frames"] > 0
    assert r.dtype.itemsize == (120 + 4 * (rec.header["embed_dim"] + rec.header["num_latents"] * rec.header["latent_dim"]
                                          + rec.header["max_scores"]) + 7) // 8 * 8
    assert np.all(np.diff(r["sequence"].astype(np.int64)) > 0)
    assert np.allclose(np.linalg.norm(r["embedding"], axis=1), 1.0, atol=1e-3)
    n = int(r["num_scores"][0])
    assert np.allclose(r["scores"][:, :n].sum(axis=1), 1.0, atol=1e-3)
    assert r["latents"].shape[1:] == (rec.header["num_latents"], rec.header["latent_dim"])
    rgb = cam.rgb(0)
    assert rgb.shape == (cam.height, cam.width, 3) and rgb.dtype == np.uint8
    assert len(cam.frame(0)) == int(r["frame_bytes"][0])
    labels = rec.labels(int(r["prompt_version"][0]))
    assert labels and len(labels) == n
    tops = rec.top_labels(0)
    assert tops[0] == labels[int(np.argmax(r["scores"][0, :n]))]
    assert cam.label(0) is not None  # the synthetic camera's ground truth


def test_yuyv_converts_as_bt601_limited_range():
    # Y 16 is black, Y 235 white; U = V = 128 is grey.
    frame = bytes([16, 128, 235, 128])
    rgb = to_rgb(frame, "yuyv", 2, 1)
    assert rgb[0, 0].tolist() == [0, 0, 0] and rgb[0, 1].tolist() == [255, 255, 255]
    assert to_rgb(bytes([1, 2, 3, 4, 5, 6]), "bgr24", 2, 1)[0, 0].tolist() == [3, 2, 1]


def test_a_newer_version_and_truncated_files_are_refused(tmp_path):
    rec = copy_fixture(tmp_path)
    header = json.loads((rec / "recording.json").read_text())
    header["version"] = 2
    (rec / "recording.json").write_text(json.dumps(header))
    with pytest.raises(RecordingError, match="version 2; this reader reads version 1"):
        open_recording(rec)
    for name in ("cam0.raw", "cam0.results"):
        cut = tmp_path / f"cut-{name}"
        shutil.copytree(FIXTURE, cut)
        data = (cut / name).read_bytes()
        (cut / name).write_bytes(data[:-100])
        with pytest.raises(RecordingError, match="truncated"):
            open_recording(cut)
    partial = tmp_path / "partial"
    shutil.copytree(FIXTURE, partial)
    (partial / "recording.json").unlink()
    with pytest.raises(RecordingError, match="incomplete"):
        open_recording(partial)


def ocellus(*args: str) -> subprocess.CompletedProcess:
    r = subprocess.run([OCELLUS_BIN, *args], capture_output=True, text=True, timeout=900, cwd=REPO)
    assert r.returncode == 0, f"ocellus {' '.join(args)}: {r.stdout}{r.stderr}"
    return r


def demo_config(path: Path, variant: str) -> Path:
    path.write_text(f"""[[camera]]
name = "front"
source = "synthetic"
pixel-format = "yuyv"
width = 640
height = 480
fps = 30
hold-frames = 4

[model]
manifest = "{DEMO / 'manifest.toml'}"
variant = "{variant}"
threads = 1

[memory]
lock = false
""")
    return path


@pytest.mark.usefixtures("ocellus_bin")
def test_replay_with_int8_agrees_with_evaluate_on_the_recorded_demo_scenes(tmp_path, capsys):
    capture = tmp_path / "capture"
    ocellus("record", "--frames", "64", "--config", str(demo_config(tmp_path / "fp32.toml", "fp32")),
            "--out", str(capture))
    rec = open_recording(capture)
    frames = len(rec.cameras[0])
    assert frames == 64

    report_path = tmp_path / "replay.json"
    ocellus("replay", str(capture), "--config", str(demo_config(tmp_path / "int8.toml", "int8")),
            "--json", str(report_path), "--plot", str(tmp_path / "replay.svg"))
    report = json.loads(report_path.read_text())
    assert report["recorded_model"]["variant"] == "fp32" and report["replayed_model"]["variant"] == "int8"
    assert report["frames"] == frames and not report["identical"]
    assert any("variant fp32 -> int8" in w for w in report["why_not_identical"])

    out = tmp_path / "evaluation.json"
    rc, stdout, stderr = run_cli(["evaluate", str(DEMO), "--recording", str(capture), "--out", str(out)], capsys)
    assert rc == 0, stderr
    ev = json.loads(out.read_text())
    assert ev["frames"] == frames
    # The same agreement on the same frames: tract in the runtime, onnxruntime in the tools.
    assert report["top1_agreement"] == pytest.approx(ev["agreement"], abs=0.5 / frames), (report, ev)
    changed_replay = sorted((c["camera"], c["frame"]) for c in report["changed"])
    changed_eval = sorted((c["camera"], c["frame"]) for c in ev["changed"])
    assert changed_replay == changed_eval
    # And each side's top-1 against the scenes' ground truth.
    assert report["accuracy"]["replayed"] == pytest.approx(ev["int8"]["top1"], abs=0.5 / frames)
    assert report["accuracy"]["recorded"] == pytest.approx(ev["fp32"]["top1"], abs=0.5 / frames)
    print(f"fp32/int8 top-1 agreement on {frames} recorded frames: replay {report['top1_agreement']:.4f}, "
          f"evaluate {ev['agreement']:.4f}; top-1 fp32 {ev['fp32']['top1']:.4f} int8 {ev['int8']['top1']:.4f}")

    # The recording calibrates a quantization as a folder of images would.
    bundle = tmp_path / "bundle"
    shutil.copytree(DEMO, bundle)
    rc, stdout, stderr = run_cli(["quantize", str(bundle), "--recording", str(capture)], capsys)
    assert rc == 0, stderr
    assert f"calibrating on {frames} recorded frames from {capture}" in stdout
