#!/usr/bin/env bash
# Install Debian's chromium for the headless browser checks, if it is missing.
# Needs root (CI and the dev machines run as root); otherwise it only reports.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then exit 0; fi
if [ "$(id -u)" != "0" ]; then
  echo "chromium is not installed and this is not root: run 'sudo apt-get install -y chromium'" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq chromium >/dev/null
command -v chromium
