#!/usr/bin/env bash
# The tail with [realtime] on, with and without a CPU hog on the other core (docs/engines.md, "Tail latency"):
# for each bundle and engine, `ocellus bench --paced` twice, the second time beside a busy loop pinned to CPU 0.
#
# Usage: benches/realtime.sh OCELLUS OUTDIR [NAME=MANIFEST:FPS:FRAMES ...]
#   OCELLUS: an ocellus binary. With ORT_DYLIB_PATH set, the onnxruntime engine runs too (a build with
#   --features onnxruntime); ENGINES="tract" chooses.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="$1" OUT="$2"
shift 2
mkdir -p "$OUT"
# The camera: 60 synthetic 640x480 YUYV frames recorded once and replayed in a loop at the bundle's rate. The
# synthetic source renders each frame after stamping its capture time (3-6 ms on CPU 0, beside the hog), so
# with it the end to end's spread would be the simulator's; a replayed frame is one copy, as a real camera's
# frame is complete when the driver hands it over.
FRAMES="$OUT/frames"
if [ ! -s "$FRAMES/cam0.raw" ]; then
    rm -rf "$FRAMES"
    "$BIN" record --frames 60 --out "$FRAMES" -q
fi
# onnxruntime too when a library is given (the binary must have the feature: a plain build refuses the engine).
engines="${ENGINES:-tract${ORT_DYLIB_PATH:+ onnxruntime}}"
for spec in "$@"; do
    name="${spec%%=*}" rest="${spec#*=}"
    IFS=: read -r manifest fps frames <<<"$rest"
    for engine in $engines; do
        sed -e "s|@MANIFEST@|$manifest|" -e "s|@ENGINE@|$engine|" -e "s|@FPS@|$fps|" -e "s|@FRAMES@|$FRAMES/cam0.raw|" \
            "$ROOT/benches/realtime.toml.in" > "$OUT/$name-$engine.toml"
        for hog in no yes; do
            pid="" status=0
            if [ "$hog" = yes ]; then taskset -c 0 sh -c 'while :; do :; done' & pid=$!; fi
            "$BIN" bench -c "$OUT/$name-$engine.toml" --paced --frames "$frames" --infer-runs 10 --no-ort \
                --json "$OUT/$name-$engine-hog-$hog.json" -q > "$OUT/$name-$engine-hog-$hog.log" 2>&1 || status=$?
            [ -n "$pid" ] && kill "$pid"
            [ "$status" = 0 ] || { cat "$OUT/$name-$engine-hog-$hog.log"; exit "$status"; }
            echo "$name $engine hog=$hog: $(grep '^engine ' "$OUT/$name-$engine-hog-$hog.log")"
        done
    done
done
