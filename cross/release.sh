#!/usr/bin/env bash
# Release artifacts for boards: for each, the tar.gz of cross/build.sh, a .deb and one
# SHA256SUMS over them all.
#   cross/release.sh [BOARD...] [--profile NAME]      (default: every board in boards.tsv)
# The .deb holds /usr/bin/convnext-edge, the default model and samples in
# /usr/share/convnext-edge, the systemd unit convnext-edge-camera.service (its own user, in
# group video) and /etc/convnext-edge/camera.toml as a conffile; cross/package/ has them.
# --profile defaults to `dist` (LTO, one codegen unit, stripped); CI passes `release` to reuse
# the builds its tests made.
# Output: $CARGO_TARGET_DIR/release-artifacts/ (CARGO_TARGET_DIR: target); its SHA256SUMS
# covers every artifact there.
set -euo pipefail
cd "$(dirname "$0")/.."
boards=()
profile=dist
while [ $# -gt 0 ]; do
  case $1 in
    --profile) [ $# -ge 2 ] || { echo "cross/release.sh: --profile needs a name" >&2; exit 2; }; profile=$2; shift ;;
    -*) echo "usage: cross/release.sh [BOARD...] [--profile NAME]" >&2; exit 2 ;;
    *) boards+=("$1") ;;
  esac
  shift
done
[ ${#boards[@]} -gt 0 ] || mapfile -t boards < <(grep -v '^#' cross/boards.tsv | cut -f1)
command -v dpkg-deb >/dev/null || { echo "cross/release.sh: dpkg-deb not found (Debian's dpkg)" >&2; exit 1; }

target_dir=${CARGO_TARGET_DIR:-target}
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
dist=$target_dir/release-artifacts
mkdir -p "$dist"
made=()
for board in "${boards[@]}"; do
  bash cross/build.sh "$board" --profile "$profile"
  stage=$target_dir/cross/$board/convnext-edge-$board
  cp "$target_dir/cross/$board/convnext-edge-$board.tar.gz" "$dist/"
  made+=("convnext-edge-$board.tar.gz")

  target=$(grep -v '^#' cross/boards.tsv | awk -F'\t' -v b="$board" '$1 == b { print $2 }')
  case $target in
    aarch64-*) arch=arm64 ;;
    armv7-*) arch=armhf ;;
    x86_64-*) arch=amd64 ;;
    *) echo "cross/release.sh: no Debian architecture for $target" >&2; exit 1 ;;
  esac
  root=$target_dir/cross/$board/deb
  rm -rf "$root"
  install -d "$root/DEBIAN" "$root/usr/bin" "$root/usr/share/convnext-edge/models" \
    "$root/usr/share/doc/convnext-edge" "$root/lib/systemd/system" "$root/etc/convnext-edge"
  install -m 755 "$stage/convnext-edge" "$root/usr/bin/"
  install -m 644 "$stage/convnext_digits_int8.onnx" "$stage/labels.txt" "$root/usr/share/convnext-edge/models/"
  cp -r "$stage/samples" "$root/usr/share/convnext-edge/"
  install -m 644 "$stage/README.txt" "$root/usr/share/doc/convnext-edge/"
  install -m 644 cross/package/convnext-edge-camera.service "$root/lib/systemd/system/"
  install -m 644 cross/package/camera.toml "$root/etc/convnext-edge/"
  install -m 755 cross/package/postinst cross/package/prerm cross/package/postrm "$root/DEBIAN/"
  echo /etc/convnext-edge/camera.toml > "$root/DEBIAN/conffiles"
  # A static musl binary needs nothing; a gnu one the newest glibc symbol version it uses.
  glibc=$(grep -a -o 'GLIBC_2\.[0-9]*' "$stage/convnext-edge" | sed 's/GLIBC_//' | sort -V | tail -1 || true)
  depends=${glibc:+"Depends: libc6 (>= $glibc)"}
  cat > "$root/DEBIAN/control" <<CONTROL
Package: convnext-edge
Version: $version+$board
Architecture: $arch
Maintainer: convnext-edge developers <convnext-edge@localhost>
Section: science
Priority: optional
Installed-Size: $(du -sk "$root" | cut -f1)
${depends:+$depends
}Description: ConvNeXt image classifier runtime and camera service ($board)
 Runs ConvNeXt classifiers exported to ONNX (f32, f16, int8) with tract; classify, bench,
 info and a camera loop with live view, run as the convnext-edge-camera service.
CONTROL
  deb=convnext-edge_${version}+${board}_$arch.deb
  dpkg-deb --root-owner-group --build "$root" "$dist/$deb" >/dev/null
  made+=("$deb")
done
# Over every artifact in the folder, so that runs for different boards add up.
(cd "$dist" && sha256sum ./*.tar.gz ./*.deb | sed 's| \./| |' > SHA256SUMS)
echo "release artifacts in $dist:"
(cd "$dist" && ls -l "${made[@]}" SHA256SUMS)
