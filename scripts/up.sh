#!/usr/bin/env bash
# Sets up a fresh machine, builds edgecap, and runs the one-machine stack (a coordinator with
# embedded state and storage, and one agent on loopback). Data stays in ./edgecap-data (or
# $EDGECAP_DATA_DIR); extra arguments go to `edgecap up` (e.g. --iface eth0 --pop home).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --workspace --release --locked
exec ./target/release/edgecap up --data-dir "${EDGECAP_DATA_DIR:-./edgecap-data}" "$@"
