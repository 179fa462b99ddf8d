#!/usr/bin/env bash
# tests/deploy/test_flower.py opens Flower in headless Chromium; install Debian's if missing.
# Idempotent; CI runs it as root. Fails loudly: the browser test must not be skipped in CI.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
echo "chromium not found: installing Debian's chromium" >&2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
$SUDO apt-get update -qq
# fonts-liberation: readable text in screenshots; no recommends (no desktop stack).
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
  chromium fonts-liberation >/dev/null
command -v chromium >/dev/null || { echo "chromium is still not on PATH" >&2; exit 1; }
chromium --version
