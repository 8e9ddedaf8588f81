#!/usr/bin/env bash
# Seed corpora for the fuzz targets, from the committed fixtures plus tiny models made by the
# real tools (models/export.py, models/quantize.py: a one-block-per-stage ConvNeXt at 32x32, so
# each load takes milliseconds and mutations reach the graph rather than weight bytes).
#   PYTHON=/path/to/venv/python fuzz/make_seeds.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
c=fuzz/seeds
rm -rf "$c"; mkdir -p "$c"/{onnx_load,npy,image_preprocess,mjpeg,raw_frames,labels,cli_lists}
tmp=$(mktemp -d)
"$PY" models/export.py --source timm --depths 1,1,1,1 --dims 4,8,8,8 --input-size 32 --num-classes 3 -o "$tmp/t.onnx" >/dev/null
"$PY" models/export.py --source hf --v2 --depths 1,1,1,1 --dims 4,8,8,8 --input-size 32 --num-classes 3 -o "$tmp/v2.onnx" >/dev/null
for mode in qdq qoperator dynamic f16 f16-io32; do
  "$PY" models/quantize.py "$tmp/t.onnx" "$c/onnx_load/tiny_$mode.onnx" --mode $mode >/dev/null
done
cp "$tmp/t.onnx" "$c/onnx_load/tiny_f32.onnx"; cp "$tmp/v2.onnx" "$c/onnx_load/tiny_v2.onnx"
cp tests/data/bad/*.onnx "$c/onnx_load/"
cp tests/data/bad/*.npy tests/data/preprocess/*.npy "$c/npy/" 2>/dev/null || cp tests/data/bad/*.npy "$c/npy/"
cp models/digits/samples/*.png tests/data/camera/frame*.jpg "$c/image_preprocess/"
for f in tests/data/camera/{stream,digits}.mjpeg tests/data/camera/frame_nodht.jpg; do
  { printf '\x3f'; cat "$f"; } > "$c/mjpeg/$(basename "$f")"
done
for fmt in 0 1 2; do
  name=$(echo yuyv nv12 i420 | cut -d' ' -f$((fmt + 1)))
  { printf "\\x0$fmt\\x10\\x00\\x0c\\x00"; head -c 400 tests/data/camera/frame.$name; } > "$c/raw_frames/$name"
done
printf '0\n1\n2\n' > "$c/labels/plain.txt"; printf '["a","b","c"]' > "$c/labels/json.txt"
head -20 src/labels/imagenet1k.txt > "$c/labels/imagenet.txt" 2>/dev/null || true
for s in 0-3,6 big 640x480 auto,f32,f16,int8 timm,hf mjpeg,yuyv 4,5; do printf '%s' "$s" > "$c/cli_lists/$(echo "$s" | tr -c 'a-z0-9' _)"; done
rm -rf "$tmp"
du -sh "$c"/*
