"""Shared fixtures: tiny random Hugging Face checkpoints and bundles built from them through the CLI."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from ocellus_tools.cli import main
from ocellus_tools.tiny import make_tiny_checkpoint

torch.set_num_threads(1)


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    """Runs `ocellus-tools ARGS` in-process; returns (exit code, stdout, stderr)."""
    try:
        rc = main(["--threads", "1", *args])
    except SystemExit as e:  # argparse errors
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("checkpoints")
    return {fam: make_tiny_checkpoint(root / fam, fam, seed=3) for fam in ("clip", "siglip")}


class Built:
    """Bundles built once per session, keyed by (family, resampler); each records the CLI's outputs (stdout, and
    stderr under "<step>:stderr"). quantize runs with --keep-slower: these tiny models run no faster in int8 on any
    CPU, and the tests need their int8 files."""

    def __init__(self, root: Path, checkpoints: dict[str, Path]):
        self.root = root
        self.checkpoints = checkpoints
        self.cache: dict[tuple[str, str], tuple[Path, dict[str, str]]] = {}

    def get(self, family: str, resampler: str, capsys) -> tuple[Path, dict[str, str]]:
        key = (family, resampler)
        if key not in self.cache:
            out = self.root / f"{family}-{resampler}"
            logs = {}
            steps = [
                ["export", "--hf", str(self.checkpoints[family]), "--out", str(out), "--resampler", resampler,
                 "--latents", "8", "--resampler-depth", "2", "--seed", "5"],
                ["quantize", str(out), "--scenes", "16", "--keep-slower"],
                ["validate", str(out)],
                ["manifest", str(out)],
            ]
            for step in steps:
                rc, so, se = run_cli(step, capsys)
                assert rc == 0, f"{step[0]} failed: {se}"
                logs[step[0]] = so
                logs[f"{step[0]}:stderr"] = se
            self.cache[key] = (out, logs)
        return self.cache[key]

    def copy(self, family: str, resampler: str, capsys, dest: Path) -> Path:
        src, _ = self.get(family, resampler, capsys)
        shutil.copytree(src, dest)
        return dest


@pytest.fixture(scope="session")
def built(tmp_path_factory, checkpoints) -> Built:
    return Built(tmp_path_factory.mktemp("bundles"), checkpoints)


@pytest.fixture(scope="session")
def vit_onnx(tmp_path_factory) -> Path:
    """A "third-party" backbone: a random Hugging Face ViTModel (hidden 64, 2 layers, 64 px, patch 16) exported by
    the TorchScript exporter at opset 14 with a dynamic batch and the position interpolation in the graph."""
    from ocellus_tools.tiny import make_tiny_vit_onnx

    return make_tiny_vit_onnx(tmp_path_factory.mktemp("third-party") / "vit.onnx", seed=4, opset=14)


IMPORT_ARGS = ["--resize", "letterbox", "--pad", "114", "114", "114", "--interpolation", "bilinear",
               "--mean", "0.5", "0.5", "0.5", "--std", "0.5", "0.5", "0.5"]


@pytest.fixture(scope="session")
def imported(tmp_path_factory, vit_onnx, capsys_session_free) -> tuple[Path, str]:
    """ONE `ocellus-tools import` of vit_onnx (letterbox, a Q-Former of 8 queries of width 32), then `manifest`:
    (bundle, the import's stdout). Copy it before changing it."""
    out = tmp_path_factory.mktemp("imported") / "vit-import"
    rc, so, se = capsys_session_free(["import", str(vit_onnx), "--out", str(out), *IMPORT_ARGS,
                                      "--resampler", "qformer", "--latents", "8", "--latent-dim", "32", "--seed", "2"])
    assert rc == 0, se
    rc, _, se = capsys_session_free(["manifest", str(out)])
    assert rc == 0, se
    return out, so


@pytest.fixture(scope="session")
def capsys_session_free():
    """run_cli for session fixtures (capsys is function-scoped): captures stdout/stderr by redirection."""
    import contextlib
    import io

    def run(args):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = main(["--threads", "1", *args])
            except SystemExit as e:
                rc = e.code
        return rc, out.getvalue(), err.getvalue()

    return run


@pytest.fixture
def ocellus_bin():
    """The runtime binary the round-trip tests run (OCELLUS_BIN; `make test-python` sets it). Unset is a
    failure, not a skip: a skipped round trip would hide that the runtime and the tools no longer agree."""
    path = os.environ.get("OCELLUS_BIN")
    if not path:
        pytest.fail("OCELLUS_BIN is unset: set it to a built `ocellus` binary, e.g. "
                    "OCELLUS_BIN=$HOME/.cache/ocellus/target/release/ocellus (make test-python does)")
    return path
