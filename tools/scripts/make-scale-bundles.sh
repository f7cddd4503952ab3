#!/usr/bin/env bash
# Builds two bundles at the scale of real models, with random seeded weights (nothing is downloaded), into the
# cache (they are not committed: 0.9-1.2 GB each):
#   vitb32-perceiver   transformers' CLIPConfig() defaults: ViT-B/32 vision tower, 224 px, 50 tokens of width 768,
#                      12 layers, CLIP's 12-layer text tower (context 77, vocabulary 49408); Perceiver Resampler
#                      with 64 latents
#   siglipb16-qformer  SiglipConfig() defaults: B/16, 224 px, 196 tokens of width 768, its text tower (context 64,
#                      vocabulary 32000); Q-Former with 32 queries
# each through export -> quantize -> validate -> manifest, every step on one thread.
#
# Usage: tools/scripts/make-scale-bundles.sh [PYTHON] [OUTDIR]
#   PYTHON defaults to ~/.cache/ocellus/venv/bin/python, OUTDIR to ~/.cache/ocellus/models.
# Idempotent: a bundle whose manifest.toml is newer than this script and every file of the tools is skipped
# (delete the manifest, or touch the script, to rebuild). The random checkpoints stay in OUTDIR/checkpoints/
# (validate rebuilds the PyTorch reference from them). Each step's wall time goes to OUTDIR/NAME.times (TSV) and
# its output to OUTDIR/NAME.log.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
SCRIPT="$ROOT/tools/scripts/make-scale-bundles.sh"
PY="${1:-$HOME/.cache/ocellus/venv/bin/python}"
OUTDIR="${2:-$HOME/.cache/ocellus/models}"
mkdir -p "$OUTDIR/checkpoints"
# the tools of this checkout, whatever the venv's editable install points at
export PYTHONPATH="$ROOT/tools${PYTHONPATH:+:$PYTHONPATH}"
tools() { "$PY" -m ocellus_tools.cli --threads 1 "$@"; }

up_to_date() {  # NAME: its manifest is newer than the script and the tools
    local manifest="$OUTDIR/$1/manifest.toml"
    [ -f "$manifest" ] || return 1
    [ -z "$(find "$SCRIPT" "$ROOT/tools/ocellus_tools" "$ROOT/tools/pyproject.toml" -type f -newer "$manifest" \
        \( -name '*.py' -o -name '*.sh' -o -name '*.toml' \) -print -quit)" ]
}

step() {  # NAME STEP COMMAND...: runs it, appends its output to NAME.log and its wall time to NAME.times
    local name="$1" what="$2"
    shift 2
    local t0 rc
    t0=$EPOCHREALTIME
    echo "== $name: $what" | tee -a "$OUTDIR/$name.log"
    set +e
    "$@" 2>&1 | tee -a "$OUTDIR/$name.log"
    rc=${PIPESTATUS[0]}
    set -e
    awk -v w="$what" -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%s\t%.1f\n", w, b - a }' >> "$OUTDIR/$name.times"
    if [ "$rc" -ne 0 ]; then
        echo "make-scale-bundles: $name: $what failed (exit $rc); see $OUTDIR/$name.log" >&2
        exit "$rc"
    fi
}

build() {  # NAME FAMILY RESAMPLER LATENTS
    local name="$1" family="$2" resampler="$3" latents="$4"
    local out="$OUTDIR/$name" ck="$OUTDIR/checkpoints/$name"
    if up_to_date "$name"; then
        echo "$name: up to date ($out/manifest.toml is newer than the tools); skipped"
        return
    fi
    : > "$OUTDIR/$name.log"
    printf 'step\tseconds\n' > "$OUTDIR/$name.times"
    if [ ! -f "$ck/config.json" ] || [ ! -f "$ck/model.safetensors" ]; then
        rm -rf "$ck"
        step "$name" checkpoint "$PY" -m ocellus_tools.tiny "$family" "$ck" --size default --seed 0
    fi
    step "$name" export tools export --hf "$ck" --out "$out" --name "$name" --resampler "$resampler" \
        --latents "$latents" --seed 0
    step "$name" quantize tools quantize "$out" --scenes 64 --seed 7
    step "$name" validate tools validate "$out" --seed 1234
    step "$name" manifest tools manifest "$out"
    echo "$name: built in $out ($(du -sh "$out" | cut -f1)); step times in $OUTDIR/$name.times:"
    cat "$OUTDIR/$name.times"
}

build vitb32-perceiver clip perceiver 64
build siglipb16-qformer siglip qformer 32
