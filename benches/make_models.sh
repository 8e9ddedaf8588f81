#!/usr/bin/env bash
# Makes the benchmark models (not committed): convnext_atto and convnext_tiny at 224, random
# weights (see models/convnext_builders.py), in f32, f16 (keep_io_types), int8 QDQ per-channel,
# int8 QOperator and int8 dynamic, into target/bench-models/.
#   python3 -m venv .venv && .venv/bin/pip install -r models/requirements.txt
#   PYTHON=.venv/bin/python benches/make_models.sh
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
out=target/bench-models
mkdir -p "$out"
for arch in convnext_atto convnext_tiny; do
  f32="$out/${arch}_f32.onnx"
  [ -f "$f32" ] || "$py" models/export.py --source timm --arch "$arch" --input-size 224 -o "$f32"
  for mode in f16-io32 qdq qoperator dynamic; do
    dst="$out/${arch}_${mode}.onnx"
    [ -f "$dst" ] || "$py" models/quantize.py "$f32" "$dst" --mode "$mode" --calib-dir models/images
  done
done
ls -l "$out"
