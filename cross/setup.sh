#!/usr/bin/env bash
# Installs what cross builds and emulated tests need on Debian/Ubuntu: Rust targets, Debian's
# cross gcc and libc, qemu-user. Idempotent; run as root or with sudo available.
set -euo pipefail
need_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
  echo "cross/setup.sh: need root (or sudo) to run: $*" >&2; exit 1; fi; }

command -v rustup >/dev/null || { echo "cross/setup.sh: rustup not found; install Rust with rustup first" >&2; exit 1; }
command -v apt-get >/dev/null || { echo "cross/setup.sh: apt-get not found; this script supports Debian/Ubuntu" >&2; exit 1; }

rustup target add aarch64-unknown-linux-gnu aarch64-unknown-linux-musl armv7-unknown-linux-gnueabihf

pkgs=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross gcc-arm-linux-gnueabihf libc6-dev-armhf-cross qemu-user file)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  need_root apt-get update -qq
  need_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" ||
    { echo "cross/setup.sh: could not install ${missing[*]}" >&2; exit 1; }
fi
for tool in aarch64-linux-gnu-gcc arm-linux-gnueabihf-gcc qemu-aarch64 qemu-arm; do
  command -v "$tool" >/dev/null || { echo "cross/setup.sh: $tool still missing after install" >&2; exit 1; }
done
echo "cross toolchains ready: $(aarch64-linux-gnu-gcc --version | head -1); $(qemu-aarch64 --version | head -1)"
