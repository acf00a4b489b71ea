#!/usr/bin/env bash
# Install everything corem_ingress needs on a fresh Debian machine (run as root or with sudo):
# system packages for the broker, the real peers the tests use, and the toolchain that
# DTLSSocket (tinydtls) compiles with; then a virtualenv with the package, its dev extra,
# its bench extra (matplotlib, for `make bench`'s plots; the tests do not need it) and its
# fast extra (uvloop: the broker's event loop where installed).
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

APT_PACKAGES=(
  redis-server          # the registry/resolver store (and the tests' real Redis)
  redis-tools           # redis-cli: cluster creation and sentinel checks in tests/ops
  nginx libnginx-mod-stream  # deploy/nginx.conf run for real in tests (nginx -t, failover)
  mosquitto             # benchmark peer for MQTT
  mosquitto-clients     # mosquitto_pub/mosquitto_sub: real MQTT peers in tests
  libcoap3-bin          # coap-client-openssl/-gnutls, coap-server-openssl: real CoAP peers
  gnutls-bin            # gnutls-cli: a DTLS 1.2 peer of the interop matrix (tests/coap)
  autoconf automake libtool build-essential pkg-config  # DTLSSocket builds tinydtls
  cmake                 # the device-side peers (Wakaama, mbedTLS) built from ../shared/peers
  chromium chromium-driver  # the operator console's browser tests (Selenium, headless)
  python3-venv python3-dev
  curl
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# The Debian packages start a system Redis (and nginx on :80) where systemd runs; we never use them.

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/pip install -q --upgrade pip wheel setuptools
# The build compiles the hot modules with mypyc (setup.py; COREM_NO_COMPILE=1 skips it); a
# failed compile installs the pure-Python modules: the version line below says which.
# mypyc type-checks what it compiles, so the dependencies go in first (pure build), then the
# package is built again against them without build isolation: the compiled build.
COREM_NO_COMPILE=1 .venv/bin/pip install -q -e '.[dev,bench,fast]'  # fast: uvloop (issue 18)
.venv/bin/pip install -q --no-deps --no-build-isolation -e .
echo "install-deps: $(.venv/bin/corem-ingress version | head -1)"
# Device-side peers the interop tests run (Wakaama LwM2M client with tinydtls, mbedTLS
# ssl_client2, tinydtls dtls-client), built from the sources in ../shared/peers into
# ~/.cache/corem-peers (tests/peers.py finds them there; COREM_PEERS_SRC/_DIR override).
PEERS_SRC="${COREM_PEERS_SRC:-../shared/peers}"
if [ -x "$PEERS_SRC/build.sh" ] || [ -f "$PEERS_SRC/build.sh" ]; then
  bash "$PEERS_SRC/build.sh" ${COREM_PEERS_DIR:+"$COREM_PEERS_DIR"} >/dev/null
  echo "install-deps: device peers built"
else
  echo "install-deps: $PEERS_SRC/build.sh not found: the interop tests that run device peers will fail" >&2
fi
echo "install-deps: done"
