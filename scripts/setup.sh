#!/usr/bin/env bash
# Installs what edgecap needs to build, run and test on a fresh Debian/Ubuntu machine:
# system packages (libpcap, protoc, capture and traffic tools, etcd and its etcdctl) and a Python venv with the
# official Cloudflare SDK for the compatibility test and kubernetes-validate for the manifest
# checks, and cargo-deb for the package test (tests only; scripts/test.sh also installs the
# S3-compatible server the tests start).
# Idempotent; fast when all is there.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

packages=(libpcap-dev protobuf-compiler pkg-config curl iproute2 iputils-ping tcpdump tshark tcpreplay python3-venv etcd-server etcd-client prometheus)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
# The package test (tests/deploy/check_packages.sh) installs .debs (adduser for their users,
# dpkg-dev for cargo-deb's dependency list) and checks their units with systemd-analyze,
# which needs no running systemd.
for p in adduser dpkg-dev; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
# The web page test (tests/web/test_page.py) drives Debian's headless Chromium.
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
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
# Schemathesis, pinned (with the hypothesis release its JSON-schema strategies work with):
# tests/tests/openapi.rs runs it against `edgecap up`.
ST_VERSION=4.3.2
HYPOTHESIS_VERSION=6.138.0
if ! "$VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('schemathesis') != '$ST_VERSION' or m.version('hypothesis') != '$HYPOTHESIS_VERSION')" >/dev/null 2>&1; then
  echo "setup: installing schemathesis $ST_VERSION in $VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "schemathesis==$ST_VERSION" "hypothesis==$HYPOTHESIS_VERSION"
fi

# kubernetes-validate, pinned: tests/deploy/check_manifests.py validates the Kubernetes
# manifests with it, offline (the wheel carries the schemas of every Kubernetes version).
KV_VERSION=1.37.0
if ! "$VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('kubernetes-validate') != '$KV_VERSION')" >/dev/null 2>&1; then
  echo "setup: installing kubernetes-validate $KV_VERSION in $VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "kubernetes-validate==$KV_VERSION"
fi

# Playwright's Python client, pinned: tests/web/test_page.py drives Debian's chromium with it
# (executable_path; `playwright install` is never run, no browser is downloaded).
PLAYWRIGHT_VERSION=1.65.2
if ! "$VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('playwright') != '$PLAYWRIGHT_VERSION')" >/dev/null 2>&1; then
  echo "setup: installing playwright $PLAYWRIGHT_VERSION in $VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "playwright==$PLAYWRIGHT_VERSION"
fi

# cargo-deb, pinned: tests/deploy/check_packages.sh builds the Debian packages with it.
CARGO_DEB_VERSION=3.8.0
if ! cargo deb --version 2>/dev/null | grep -qx "cargo-deb $CARGO_DEB_VERSION"; then
  echo "setup: installing cargo-deb $CARGO_DEB_VERSION (about a minute, once)"
  cargo install -q cargo-deb --version "$CARGO_DEB_VERSION" --locked
fi
echo "setup: ok"
