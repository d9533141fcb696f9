#!/usr/bin/env bash
# The whole test suite, as CI runs it: install what the tests need, build every binary
# (the end-to-end tests run them in network namespaces), run all tests, and check that no
# test left a network namespace behind. Needs root for namespaces and packet capture.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
# An S3-compatible server for the full-capture tests (SigV4 checked, stores plain files).
# 0.14.1 is the last release that builds on Rust 1.95; its Cargo.lock makes --locked work.
if ! command -v s3s-fs >/dev/null 2>&1; then
  echo "test: installing s3s-fs 0.14.1 (a few minutes, once)"
  cargo install -q s3s-fs --version 0.14.1 --features binary --locked
fi
export EDGECAP_SDK_PYTHON="${EDGECAP_SDK_VENV:-$HOME/.cache/edgecap/sdk-venv}/bin/python"

# Formatting and lints are part of the suite: a tree that is not formatted or has a clippy
# warning fails here, before the tests.
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo build --workspace --all-targets --locked
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --profile ci
else
  cargo test --workspace --locked
fi

leaked=$(ip netns list 2>/dev/null | awk '$1 ~ /^ec-/ {print $1}')
if [ -n "$leaked" ]; then
  echo "test: network namespaces left behind by the tests: $leaked" >&2
  exit 1
fi
