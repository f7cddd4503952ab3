# One entry point for people and CI (.ci/run calls `make setup` then `make test`).
#
# Everything that can outlive a clone (the Python venv with torch, cargo's target directory) lives under
# $(CACHE), so a second run on the same machine reuses it.

CACHE ?= $(HOME)/.cache/ocellus
VENV ?= $(CACHE)/venv
PY := $(VENV)/bin/python
export CARGO_TARGET_DIR ?= $(CACHE)/target
export CARGO_TERM_COLOR ?= never

# Debian packages the build and the tests need.
APT_PACKAGES := pkg-config
# v4l2-sys-mit (the v4l crate) runs bindgen, which needs libclang.
APT_PACKAGES += libclang-dev
# The HIL VM test (tests/hil/run.sh): qemu, the initramfs tools, and gcc-12/make for building v4l2loopback.
APT_PACKAGES += qemu-system-x86 busybox-static cpio kmod xz-utils gcc-12 make

.PHONY: setup setup-apt setup-rust setup-python test lint test-python test-rust run

setup: setup-apt setup-rust setup-python

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
	cargo clippy --locked --all-targets -- -D warnings

test-python:
	cd tools && $(PY) -m pytest -q tests

test-rust:
	cargo test --locked

test: lint test-python test-rust

run:
	cargo run --locked --release -- run --frames 300

# Real V4L2 capture in a VM against the kernel's virtual camera and v4l2loopback (docs/hil.md).
.PHONY: test-hil
test-hil:
	CACHE=$(CACHE) tests/hil/run.sh
