#!/usr/bin/env bash
# ffmpeg and ffprobe, which decode video files for `run --input clip.mp4` (X-CLIP): Debian's
# package, installed when missing. Needs root (or sudo) and Debian's package mirror. A folder
# of frames needs neither.
set -euo pipefail
if command -v ffmpeg >/dev/null 2>&1 && command -v ffprobe >/dev/null 2>&1; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install_ffmpeg.sh: no apt-get; install ffmpeg (with ffprobe), or set IA_FFMPEG to its path" >&2
  exit 1
fi
sudo=""
if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq || true
$sudo apt-get install -y -qq --no-install-recommends ffmpeg >/dev/null
echo "installed $(ffmpeg -version | head -1 | cut -d' ' -f1-3)" >&2
