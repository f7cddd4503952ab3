#!/usr/bin/env bash
# Rebuilds models/hf-clip-qformer/, the small bundle the Rust parity tests load: a randomly initialised,
# seeded Hugging Face CLIPModel (vision: hidden 64, 2 layers, 4 heads, 64 px, patch 16; a tiny text tower and
# word-level tokenizer), written with save_pretrained and read back through the real transformers code path,
# plus a seeded BLIP-2 Q-Former (8 queries of width 32, 2 layers), exported, quantized, validated and manifested.
#
# Usage: tools/scripts/make-test-models.sh [PYTHON]
#   PYTHON defaults to ~/.cache/ocellus/venv/bin/python (the venv with ocellus-tools installed).
# The checkpoint is written to a fixed scratch directory so that the manifest's `source` (and every file, the
# process being deterministic) is the same on every run.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PY="${1:-$HOME/.cache/ocellus/venv/bin/python}"
SCRATCH="${TMPDIR:-/tmp}/ocellus-test-models"
CHECKPOINT="$SCRATCH/tiny-clip-seed0"
OUT="$ROOT/models/hf-clip-qformer"
# from tools/, so that this checkout's ocellus_tools is the one imported (the venv's editable install may point at
# another checkout)
tools() { (cd "$ROOT/tools" && "$PY" -m ocellus_tools.cli --threads 1 "$@"); }

rm -rf "$CHECKPOINT"
(cd "$ROOT/tools" && "$PY" -m ocellus_tools.tiny clip "$CHECKPOINT" --seed 0)
tools export --hf "$CHECKPOINT" --out "$OUT" --name hf-clip-qformer --resampler qformer --latents 8 --latent-dim 32 \
    --resampler-depth 2 --seed 0
# --keep-slower: a model this small runs no faster in int8 on any CPU, and the parity tests need the int8 files
tools quantize "$OUT" --scenes 64 --seed 7 --keep-slower
tools validate "$OUT" --seed 1234
tools manifest "$OUT"
rm -rf "$SCRATCH"
du -sh "$OUT"
