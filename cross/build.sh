#!/usr/bin/env bash
# Builds the release binary for a board and packs it with the default model and a README:
#   cross/build.sh BOARD [--musl|--gnu] [--tuned] [--profile NAME]
# Boards are listed in cross/boards.tsv. Jetsons default to a static musl binary (JetPack's
# glibc is older than the 2.35 a Debian 12 gnu build needs); Raspberry Pi boards default to gnu
# (Pi OS bookworm) — pass --musl for Pi OS bullseye or older. --tuned adds the board's
# -C target-cpu (faster, but the binary then needs that core: an A76 build gets SIGILL on A72).
# --profile picks a Cargo profile other than release (CI's armv7 smoke run uses `smoke`;
# cross/release.sh uses `dist`: LTO, one codegen unit, stripped).
# Output: $CARGO_TARGET_DIR/cross/BOARD/convnext-edge-BOARD.tar.gz (CARGO_TARGET_DIR: target).
# The `amd64` board is this machine's own target, built where `cargo build` puts it.
set -euo pipefail
cd "$(dirname "$0")/.."
usage() { echo "usage: cross/build.sh BOARD [--musl|--gnu] [--tuned] [--profile NAME]; boards: $(grep -v '^#' cross/boards.tsv | cut -f1 | tr '\n' ' ')" >&2; exit 2; }
[ $# -ge 1 ] || usage
board=$1; shift
line=$(grep -v '^#' cross/boards.tsv | awk -F'\t' -v b="$board" '$1 == b') || true
[ -n "$line" ] || { echo "cross/build.sh: unknown board '$board'" >&2; usage; }
IFS=$'\t' read -r _ target libc _qemu _qemu_cpu tuned_cpu _tract <<<"$line"
tuned=0
profile=release
while [ $# -gt 0 ]; do
  case $1 in
    --musl) libc=musl ;;
    --gnu) libc=gnu ;;
    --tuned) tuned=1 ;;
    --profile) [ $# -ge 2 ] || usage; profile=$2; shift ;;
    *) usage ;;
  esac
  shift
done
if [ "$libc" = musl ]; then
  case $target in
    aarch64-*) target=aarch64-unknown-linux-musl ;;
    *) echo "cross/build.sh: no musl build for $board ($target)" >&2; exit 1 ;;
  esac
fi
rustup target list --installed | grep -qx "$target" || { echo "cross/build.sh: Rust target $target missing; run cross/setup.sh" >&2; exit 1; }
flags=${RUSTFLAGS:-}
[ $tuned = 1 ] && flags="$flags -C target-cpu=$tuned_cpu"
target_dir=${CARGO_TARGET_DIR:-target}
profile_dir=$profile
[ "$profile" = dev ] && profile_dir=debug
host=$(rustc -vV | sed -n 's/^host: //p')
if [ "$target" = "$host" ]; then
  # The host's own build (what `cargo build`/`cargo test` already made), not a second one.
  RUSTFLAGS="$flags" cargo build --profile "$profile" --bin convnext-edge
  binary=$target_dir/$profile_dir/convnext-edge
else
  RUSTFLAGS="$flags" cargo build --profile "$profile" --target "$target" --bin convnext-edge
  binary=$target_dir/$target/$profile_dir/convnext-edge
fi

out=$target_dir/cross/$board
stage=$out/convnext-edge-$board
rm -rf "$stage" && mkdir -p "$stage"
cp "$binary" "$stage/"
cp models/digits/convnext_digits_int8.onnx models/digits/labels.txt "$stage/"
cp -r models/digits/samples "$stage/"
cat > "$stage/README.txt" <<TXT
convnext-edge for $board ($target$([ $tuned = 1 ] && echo ", target-cpu=$tuned_cpu"))

  ./convnext-edge classify --model convnext_digits_int8.onnx samples/7.png
  ./convnext-edge info --model YOUR_MODEL.onnx        # kernels tract picks on this CPU
  ./convnext-edge bench --model YOUR_MODEL.onnx --threads 1,2,4 --iters 100

Threads: start with one per big core (--threads 4 on a Pi 4/5); on big.LITTLE SoCs try
bench --cpus big. Watch bench's temperature/clock warnings: a throttling Pi is slower.
TXT
tar -C "$out" -czf "$out/convnext-edge-$board.tar.gz" "convnext-edge-$board"
file "$stage/convnext-edge"
echo "packed $out/convnext-edge-$board.tar.gz"
