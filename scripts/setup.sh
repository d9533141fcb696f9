#!/usr/bin/env bash
# Installs what edgecap needs to build, run and test on a fresh Debian/Ubuntu machine:
# system packages (libpcap, protoc, capture and traffic tools) and a Python venv with the
# official Cloudflare SDK for the compatibility test (tests only; scripts/test.sh also
# installs the S3-compatible server the tests start).
# Idempotent; fast when all is there.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

packages=(libpcap-dev protobuf-compiler pkg-config curl iproute2 iputils-ping tcpdump tshark tcpreplay python3-venv etcd-server prometheus)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -q -o DPkg::Lock::Timeout=300 "${missing[@]}" >/dev/null
fi

# The official Cloudflare SDK, pinned to the version the API reference was read from.
VENV="${EDGECAP_SDK_VENV:-$HOME/.cache/edgecap/sdk-venv}"
if ! "$VENV/bin/python" -c "import cloudflare" >/dev/null 2>&1; then
  echo "setup: creating $VENV with the cloudflare SDK"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check 'cloudflare==5.9.0'
fi
echo "setup: ok"
