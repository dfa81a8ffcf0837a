#!/usr/bin/env bash
# The browser the web platforms run in: Debian's chromium and chromium-driver (chromedriver),
# installed when missing. Needs root (or sudo) and Debian's package mirror.
set -euo pipefail
if [ -x /usr/lib/chromium/chromium ] && command -v chromedriver >/dev/null 2>&1; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install_browser.sh: no apt-get; install Chromium and chromedriver, or set CHROMIUM_PATH and CHROMEDRIVER_PATH" >&2
  exit 1
fi
sudo=""
if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq || true
$sudo apt-get install -y -qq chromium chromium-driver >/dev/null
echo "installed $(/usr/lib/chromium/chromium --version) and $(chromedriver --version | cut -d' ' -f1-2)" >&2
