#!/usr/bin/env bash
# Installs the system packages yiwang needs to build, run and test: GStreamer (capture, encode,
# decode, webrtcbin for test peers), Chromium + Node.js (browser tests), Python GI with GStreamer's
# RTSP server (drone-bridge's test camera, run with Debian's /usr/bin/python3), and a venv with
# pymavlink (drone-bridge's test vehicle, target/venv) — both also the demo's simulated drone. Idempotent: packages already present are
# skipped, so a second run costs a few seconds.
set -euo pipefail

PKGS=(
  build-essential pkg-config clang
  libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev libgstreamer-plugins-bad1.0-dev
  gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad
  gstreamer1.0-plugins-ugly gstreamer1.0-libav gstreamer1.0-nice gstreamer1.0-tools
  chromium iproute2 fonts-wqy-microhei
  python3-gi gir1.2-gst-rtsp-server-1.0 python3-venv
  # The province bus: nats-server 2.9.10 beside every node (JetStream domains, TLS leaf nodes
  # with failover, per-user permissions; docs/province.md says why this one). Not started here:
  # the node supervises it ([nats]) and the tests start their own.
  nats-server
)

missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

# Node.js runs the browser test driver (tests/browser, playwright-core needs Node >= 20). Debian 12's
# own nodejs is 18: if node is absent we install it (works with a warning); machines here ship 20.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  for p in nodejs npm; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
fi

if [ "${#missing[@]}" -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  SUDO=()
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO=(sudo -E); else
      echo "install-deps: need root (or sudo) to install: ${missing[*]}" >&2; exit 1
    fi
  fi
  "${SUDO[@]}" apt-get update -qq
  "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Browser test driver: playwright-core only (never downloads a browser; we use Debian's chromium).
# `npm ci` installs exactly package-lock.json; skipped when the locked version is already there.
here=$(cd "$(dirname "$0")/.." && pwd)
browser_dir="$here/tests/browser"
if [ -f "$browser_dir/package-lock.json" ]; then
  want=$(node -e 'console.log(require(process.argv[1]).packages["node_modules/playwright-core"].version)' \
    "$browser_dir/package-lock.json")
  have=$(node -e 'try{console.log(require(process.argv[1]).version)}catch(e){console.log("none")}' \
    "$browser_dir/node_modules/playwright-core/package.json")
  if [ "$want" != "$have" ]; then
    echo "install-deps: npm ci in tests/browser (playwright-core $have -> $want)" >&2
    (cd "$browser_dir" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --silent)
  fi
fi

# The wall's vendored browser libraries (Leaflet) into web/vendor/, embedded by media-server.
bash "$here/scripts/build-web.sh"

# pymavlink for drone-bridge's tests and the demo's drone (drone-bridge/tests/vehicle.py); the
# tests only use this venv (they fail naming this script without it).
venv="$here/target/venv"
if ! "$venv/bin/python" -c 'import pymavlink' 2>/dev/null; then
  echo "install-deps: pymavlink venv in $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q pymavlink==2.4.50
fi
