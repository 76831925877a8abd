#!/usr/bin/env bash
# Install the Debian packages that Vigil's tests and tools need:
#   - redis-server: a throwaway Redis that the tests start on a free port
#   - GStreamer RTSP server with its Python bindings: tests/rtsp_server.py
#     serves recorded mp4 files as live RTSP cameras
#   - ffmpeg: ffprobe and ffmpeg for inspecting streams and clips by hand
#   - openssl: throwaway certificates for the Redis TLS tests
# Tested on Debian 12 (bookworm). Safe to run again: apt-get skips packages
# that are already installed. Needs root, or sudo when run as another user.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive

packages=(
    redis-server
    python3-gi
    gir1.2-gstreamer-1.0
    gir1.2-gst-rtsp-server-1.0
    gstreamer1.0-rtsp
    gstreamer1.0-tools
    gstreamer1.0-plugins-base
    gstreamer1.0-plugins-good
    gstreamer1.0-plugins-bad
    gstreamer1.0-plugins-ugly
    gstreamer1.0-libav
    ffmpeg
    openssl
)

if [[ $(id -u) -eq 0 ]]; then
    sudo_cmd=()
elif command -v sudo >/dev/null 2>&1; then
    sudo_cmd=(sudo)
else
    echo "error: this script must run as root, or sudo must be installed" >&2
    exit 1
fi

missing=()
for package in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$package")
    fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
    echo "All system packages are already installed."
    exit 0
fi

echo "Installing: ${missing[*]}"
"${sudo_cmd[@]}" apt-get update
"${sudo_cmd[@]}" apt-get install -y --no-install-recommends "${missing[@]}"
