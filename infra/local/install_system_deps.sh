#!/usr/bin/env bash
# Installs the system packages the integration tests need: Debian's prometheus (brings promtool).
# Idempotent: does nothing when both binaries are already on PATH.
set -euo pipefail
if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "error: prometheus/promtool not found and apt-get is unavailable; install Prometheus 2.x so both are on PATH" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "error: installing prometheus needs root (or sudo): apt-get install prometheus" >&2; exit 1
  fi
fi
echo "Installing Debian's prometheus package (prometheus + promtool)..."
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# policy-rc.d keeps the package's postinst from starting a system Prometheus we would not own.
printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
$SUDO chmod +x /usr/sbin/policy-rc.d
trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
$SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
command -v promtool >/dev/null
echo "prometheus installed: $(prometheus --version 2>&1 | head -1)"
