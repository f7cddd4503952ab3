#!/usr/bin/env bash
# Rebuilds models/vit-import/, the small imported bundle the Rust tests load: a "third-party" vision encoder (a
# randomly initialised, seeded Hugging Face ViTModel: hidden 64, 2 layers, 4 heads, 64 px, patch 16, exported by
# the TorchScript exporter at opset 14 with a dynamic batch and the position interpolation in the graph) brought
# in with `ocellus-tools import` (letterbox preprocessing, grey pad), a Perceiver Resampler for its 17 x 64 tokens
# from `export --resampler-only`, few-shot prototypes of four scene classes, reference data from `validate`
# (against the original file in onnxruntime) and the manifest. Vision-only and fp32-only.
#
# Usage: tools/scripts/make-import-model.sh [PYTHON]
#   PYTHON defaults to ~/.cache/ocellus/venv/bin/python (the venv with ocellus-tools installed).
# The original file and the example images live in a fixed scratch directory while the script runs, so the
# manifest's `source` (and every file, the process being deterministic) is the same on every run. Run it from
# anywhere; it uses this checkout's tools.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PY="${1:-$HOME/.cache/ocellus/venv/bin/python}"
SCRATCH="${TMPDIR:-/tmp}/ocellus-import-model"
SRC="$SCRATCH/vit-tiny-seed0.onnx"
EXAMPLES="$SCRATCH/examples"
OUT="$ROOT/models/vit-import"
tools() { (cd "$ROOT/tools" && "$PY" -m ocellus_tools.cli --threads 1 "$@"); }

rm -rf "$SCRATCH" "$OUT"
mkdir -p "$SCRATCH"
(cd "$ROOT/tools" && "$PY" -m ocellus_tools.tiny vit "$SRC" --seed 0 --opset 14)
(cd "$ROOT/tools" && "$PY" - "$EXAMPLES" <<'PY'
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from ocellus_tools import scenes

out = Path(sys.argv[1])
rng = np.random.default_rng(11)
for label in (0, 5, 10, 15):  # a red circle, a green square, a blue triangle, a yellow cross
    folder = out / scenes.class_name(label).removeprefix("a ").replace(" ", "-")
    folder.mkdir(parents=True)
    images = scenes.render_batch(scenes.sample_batch(rng, 4, np.full(4, label)), 64)
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i}.png")
PY
)
tools import "$SRC" --out "$OUT" --name vit-import --tokens last_hidden_state --pool cls \
    --resize letterbox --pad 114 114 114 --interpolation bilinear --mean 0.5 0.5 0.5 --std 0.5 0.5 0.5
tools export --resampler-only --out "$OUT" --resampler perceiver --latents 8 --resampler-depth 2 --seed 0
tools prototypes "$OUT" "$EXAMPLES" --logit-scale 50
tools validate "$OUT" --seed 1234
tools manifest "$OUT"
rm -rf "$SCRATCH"
du -sh "$OUT"
