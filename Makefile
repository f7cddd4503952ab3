# One entry point for people and CI (.ci/run calls `make setup` then `make test`).
#
# Everything that can outlive a clone (the Python venv with torch, cargo's target directory) lives under
# $(CACHE), so a second run on the same machine reuses it.
#
# One host build serves everything: the tests run in the release profile (`cargo test --release`), and the
# amd64 package ships the `ocellus` binary those tests built (target/release/ocellus), so tract is compiled for
# the host once (plus clippy's check build), and once for aarch64.

CACHE ?= $(HOME)/.cache/ocellus
VENV ?= $(CACHE)/venv
PY := $(VENV)/bin/python
export CARGO_TARGET_DIR ?= $(CACHE)/target
export CARGO_TERM_COLOR ?= never

# Debian packages the build and the tests need.
APT_PACKAGES := pkg-config
# v4l2-sys-mit (the v4l crate) runs bindgen, which needs libclang.
APT_PACKAGES += libclang-dev
# The HIL VM test (tests/hil/run.sh): qemu, the initramfs tools, and gcc-12/make/libelf1 (objtool) for building
# v4l2loopback.
APT_PACKAGES += qemu-system-x86 busybox-static cpio kmod xz-utils gcc-12 make libelf1
# The aarch64 cross toolchain and emulator, and what the Debian packages are built and tested with.
APT_PACKAGES += gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user-static binutils dpkg-dev debootstrap \
	lintian systemd

.PHONY: setup setup-apt setup-rust setup-python test lint build test-python test-rust test-layers run

setup: setup-apt setup-rust setup-python setup-cross setup-package

setup-apt:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

setup-rust:
	rustup component add rustfmt clippy
	cargo fetch --locked

setup-python:
	@[ -x $(PY) ] || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e 'tools[test]'

lint:
	cargo fmt --all -- --check
	cargo clippy --locked --workspace --all-targets -- -D warnings
	cargo clippy --locked --workspace --all-targets --all-features -- -D warnings

# The release build of the binary and every test binary (also what the amd64 package ships).
build:
	cargo test --release --locked --workspace --no-run

# The tools' tests; the ones that drive the runtime (import -> check/infer/run) use the binary `build` made.
test-python: build
	cd tools && OCELLUS_BIN=$(CARGO_TARGET_DIR)/release/ocellus $(PY) -m pytest -q tests

test-rust: build
	cargo test --release --locked --workspace

# The layer map of docs/architecture.md, enforced (also part of test-rust).
test-layers:
	cargo test --release --locked --test layers

test: lint build test-python test-rust test-ort test-hil test-aarch64 test-package

# The onnxruntime engine (cargo feature `onnxruntime`, docs/engines.md) against the venv's libonnxruntime:
# parity with the bundles' reference outputs, no Rust allocation per frame, the library errors, `ocellus
# check` with the engine. The feature adds only ort, ort-sys and libloading to the build (tract is shared
# with the plain build), so this costs a link of the crate and its two test binaries, then the tests.
# The venv's library (onnxruntime's wheel ships it in onnxruntime/capi/); `make test-ort ORT_LIB=...` for another.
ORT_LIB ?= $(shell $(PY) -c 'import glob, os, onnxruntime; \
	print(sorted(glob.glob(os.path.join(os.path.dirname(onnxruntime.__file__), "capi", "libonnxruntime.so.*")))[-1])')
.PHONY: test-ort
test-ort:
	ORT_DYLIB_PATH=$(ORT_LIB) cargo test --release --locked --features onnxruntime --test parity_ort \
		--test engine_cli

# The service behaviour alone (notify protocol, watchdog, SIGTERM, [realtime], deadlines); test-rust runs them too.
.PHONY: test-service
test-service:
	cargo test --release --locked --test service --test notify --test deadlines

# Memory alone (docs/memory.md): zero system allocations over 1,000 frames, the budget check, the 10,000-frame
# RSS run (2-4 min); test-rust runs them too.
.PHONY: test-memory
test-memory:
	cargo test --release --locked --test alloc_zero --test budget --test infer_alloc -- --nocapture

run:
	cargo run --locked --release -- run --frames 300

# Real V4L2 capture in a VM against the kernel's virtual camera and v4l2loopback (docs/hil.md).
.PHONY: test-hil
test-hil:
	CACHE=$(CACHE) tests/hil/run.sh

# The service as the robot runs it: systemd as PID 1 in a VM, the amd64 .deb installed, watchdog, restarts, stop,
# a bad config, a camera disconnect, the journal (docs/hil.md, "systemd as PID 1"). Not in `make test`: a systemd
# boot and the checks under TCG take several minutes on top of CI's budget. Needs root and the Debian mirror once.
.PHONY: test-hil-systemd test-hil-systemd-arm64
test-hil-systemd:
	CACHE=$(CACHE) tests/hil/systemd.sh amd64 $(DEB_DIR)/ocellus_$(DEB_VERSION)_amd64.deb

# The same checks with the arm64 package on qemu-system-aarch64 (virt, cortex-a57) and Debian's arm64 kernel.
test-hil-systemd-arm64:
	CACHE=$(CACHE) tests/hil/systemd.sh arm64 $(DEB_DIR)/ocellus_$(DEB_VERSION)_arm64.deb

# --- The robot: aarch64 cross build, tested under qemu-user, and Debian packages (bsp/, docs/deploy.md) ---------
# Linker, runner and cross C compiler are in .cargo/config.toml. Cross builds use their own target directory, so a
# long aarch64 build never holds the host target directory's lock.
CROSS_TARGET := aarch64-unknown-linux-gnu
CROSS_DIR ?= $(CACHE)/target-cross
DEB_DIR ?= $(CACHE)/deb
PACKAGE_ROOT ?= $(CACHE)/package-root.tar
DEB_VERSION = $(shell sed -n '/^\[package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' Cargo.toml)-1

.PHONY: setup-cross setup-package build-aarch64 test-aarch64 package test-package

setup-cross:
	rustup target add $(CROSS_TARGET)

# The throwaway Debian 12 root test-package installs into (debootstrap, once; needs the Debian mirror).
setup-package:
	tests/package/make-root.sh $(PACKAGE_ROOT)

# The aarch64 binary for the arm64 package is the one test-aarch64 builds beside its test binaries (the parity
# test is an integration test, so cargo builds the binary too, in the same profile). A separate `cargo build`
# would compile tract for aarch64 a second time: the dev-dependencies change the features cargo unifies into
# the dependencies, and with them every crate above. So the arm64 package ships the very build the aarch64 tests
# ran against, and CI compiles tract for aarch64 once.
build-aarch64:
	CARGO_TARGET_DIR=$(CROSS_DIR) cargo test --locked --release --target $(CROSS_TARGET) --lib --test parity --no-run

# The library's tests and the parity test (demo model against the onnxruntime reference), for aarch64 under
# qemu-user; release, the same build as build-aarch64.
test-aarch64:
	CARGO_TARGET_DIR=$(CROSS_DIR) cargo test --locked --release --target $(CROSS_TARGET) --lib --test parity

# f16 parity at ViT-B scale under qemu-user (not in `make test`: minutes of emulation): the scale bundle's fp32
# files translated to f16 at load, against its onnxruntime fp32 reference (tests/parity.rs).
F16_BUNDLE ?= $(SCALE_MODELS)/vitb32-perceiver
.PHONY: test-f16-scale
test-f16-scale:
	OCELLUS_F16_BUNDLE=$(F16_BUNDLE) CARGO_TARGET_DIR=$(CROSS_DIR) cargo test --locked --release \
		--target $(CROSS_TARGET) --test parity scale_bundle_f16_vision -- --ignored --nocapture

package: build build-aarch64
	bsp/debian/build-deb.sh amd64 $(CARGO_TARGET_DIR)/release/ocellus $(DEB_DIR)
	bsp/debian/build-deb.sh arm64 $(CROSS_DIR)/$(CROSS_TARGET)/release/ocellus $(DEB_DIR)

test-package: package
	tests/package/test-package.sh $(PACKAGE_ROOT) $(DEB_DIR)/ocellus_$(DEB_VERSION)_amd64.deb \
		$(DEB_DIR)/ocellus_$(DEB_VERSION)_arm64.deb

# Benchmarks (docs/bench.md): the pipeline end to end, each model beside onnxruntime (report and plot in
# $(BENCH_DIR)); and the per-stage criterion benches.
BENCH_DIR ?= $(CACHE)/bench
BENCH_FRAMES ?= 1000

.PHONY: bench bench-criterion

bench:
	mkdir -p $(BENCH_DIR)
	cargo run --locked --release -- bench --frames $(BENCH_FRAMES) --python $(PY) \
		--json $(BENCH_DIR)/bench.json --plot $(BENCH_DIR)/bench.svg

bench-criterion:
	cargo bench --locked --workspace

# The ViT-B scale bundles (not committed: 0.9-1.2 GB each; not in CI: about 10 and 25 minutes to build here):
# ViT-B/32 + Perceiver Resampler and SigLIP B/16 + Q-Former from random seeded checkpoints, through export,
# quantize, validate and manifest (tools/scripts/make-scale-bundles.sh; rebuilt only when the tools change).
# bench-scale runs `ocellus bench` on each with benches/scale.toml.in.
SCALE_MODELS ?= $(CACHE)/models
SCALE_BUNDLES ?= vitb32-perceiver siglipb16-qformer
SCALE_FRAMES ?= 200

.PHONY: scale-bundles bench-scale
scale-bundles:
	tools/scripts/make-scale-bundles.sh $(PY) $(SCALE_MODELS)

bench-scale: scale-bundles
	mkdir -p $(BENCH_DIR)
	for b in $(SCALE_BUNDLES); do \
		sed "s|@MANIFEST@|$(SCALE_MODELS)/$$b/manifest.toml|" benches/scale.toml.in > $(BENCH_DIR)/$$b.toml && \
		cargo run --locked --release -- bench -c $(BENCH_DIR)/$$b.toml --frames $(SCALE_FRAMES) --python $(PY) \
			--json $(BENCH_DIR)/$$b.json --plot $(BENCH_DIR)/$$b.svg || exit 1; \
	done

# The tail with [realtime] on and a CPU hog on the other core, per engine (docs/engines.md; needs root and 2 CPUs;
# the onnxruntime runs need OCELLUS=<a build with --features onnxruntime> and ORT_DYLIB_PATH).
OCELLUS ?= $(CARGO_TARGET_DIR)/release/ocellus
.PHONY: bench-realtime
bench-realtime:
	benches/realtime.sh $(OCELLUS) $(BENCH_DIR)/realtime demo=$(CURDIR)/models/demo/manifest.toml:30:1000 \
		vitb32=$(SCALE_MODELS)/vitb32-perceiver/manifest.toml:8:1000

# The long soak (docs/soak.md; not in CI): 1,000,000 frames or 2 hours of the demo pipeline with the prompts
# file rewritten and a C reader attached; samples, plot and figures in $(SOAK_OUT).
SOAK_OUT ?= $(CACHE)/soak

.PHONY: soak
soak:
	SOAK_OUT=$(SOAK_OUT) cargo test --locked --release --test soak -- --ignored --nocapture

# --- Fuzzing (docs/fuzzing.md) ------------------------------------------------------------------------------------
# cargo-fuzz targets: the runtime's inputs in fuzz/ (config, manifest, replay, mjpeg, prompts; an instrumented build
# compiles tract again, so not in CI) and the shared-memory readers in crates/ocellus-shm/fuzz (segment: the Rust
# reader and the C header against each other). Each runs FUZZ_SECONDS under nice, on the committed corpus
# (fuzz/corpus/<target>, read only) plus a work corpus in $(FUZZ_WORK); `make fuzz-cmin` merges the finds into the
# committed corpus, minimised. A crash is left in <fuzz dir>/artifacts/<target>/: fix it, then add it to
# regressions/<target>/ (and tests/fuzz_corpus.rs's REPRODUCERS), docs/fuzzing.md says how.
FUZZ_SECONDS ?= 1800
FUZZ_TARGETS := config manifest replay mjpeg prompts
FUZZ_WORK ?= $(CACHE)/fuzz-corpus
FUZZ_TARGET_DIR ?= $(CACHE)/target-fuzz
# libFuzzer: a hang is an input taking 10 s; an allocation above 256 MB is a bug (an input must not choose the
# size of what the runtime allocates).
FUZZ_FLAGS ?= -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=256 -print_final_stats=1
FUZZ := CARGO_TARGET_DIR=$(FUZZ_TARGET_DIR) nice -n 19 cargo +nightly fuzz

.PHONY: fuzz fuzz-setup fuzz-build fuzz-shm fuzz-cmin $(addprefix fuzz-,$(FUZZ_TARGETS))

fuzz-setup:
	rustup toolchain install nightly --profile minimal
	cargo install cargo-fuzz --locked

fuzz-build:
	cd fuzz && $(FUZZ) build
	cd crates/ocellus-shm/fuzz && $(FUZZ) build

fuzz: fuzz-shm $(addprefix fuzz-,$(FUZZ_TARGETS))

$(addprefix fuzz-,$(FUZZ_TARGETS)): fuzz-%:
	mkdir -p $(FUZZ_WORK)/$*
	cd fuzz && $(FUZZ) run $* $(FUZZ_WORK)/$* corpus/$* regressions/$* -- -max_total_time=$(FUZZ_SECONDS) $(FUZZ_FLAGS)

fuzz-shm:
	mkdir -p $(FUZZ_WORK)/segment
	cd crates/ocellus-shm/fuzz && $(FUZZ) run segment $(FUZZ_WORK)/segment corpus/segment regressions/segment -- \
		-max_total_time=$(FUZZ_SECONDS) $(FUZZ_FLAGS)

# Merges the work corpora into the committed ones: libFuzzer's set-cover merge on edges (-use_counters=0) picks the
# fewest inputs that reach every edge the committed and the work corpus reach (`cargo fuzz cmin` keeps every input
# with a new counter value: about 4x as many files), and they are added beside the committed ones.
FUZZ_BIN = $(FUZZ_TARGET_DIR)/$(shell rustc -vV | sed -n 's/^host: //p')/release
fuzz-cmin:
	for t in $(FUZZ_TARGETS) segment; do \
		d=fuzz; [ $$t = segment ] && d=crates/ocellus-shm/fuzz; \
		rm -rf $(FUZZ_WORK)/merged-$$t && mkdir -p $(FUZZ_WORK)/merged-$$t $(FUZZ_WORK)/$$t && \
		(cd $$d && $(FUZZ_BIN)/$$t -set_cover_merge=1 -use_counters=0 $(FUZZ_FLAGS) $(FUZZ_WORK)/merged-$$t \
			corpus/$$t $(FUZZ_WORK)/$$t) && cp -n $(FUZZ_WORK)/merged-$$t/* $$d/corpus/$$t/ || exit 1; \
	done
