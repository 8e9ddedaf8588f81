#!/usr/bin/env bash
# Runs the ONNX backend node tests for ConvNeXt's op types through our load pipeline
# (tests/onnx_node_tests.rs) and writes a per-op report to target/onnx-node-tests.md.
#
# The test data ship inside the `onnx` wheel (newer releases generate them instead), so the
# wheel of a release that ships them is downloaded from PyPI and unpacked; nothing is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
ONNX_VERSION=${ONNX_VERSION:-1.17.0}
data=target/onnx-node-data/$ONNX_VERSION
if [ ! -d "$data/onnx/backend/test/data/node" ]; then
  mkdir -p "$data"
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.11 \
    --platform manylinux_2_17_x86_64 "onnx==$ONNX_VERSION" -d "$data"
  python3 -m zipfile -e "$data"/onnx-"$ONNX_VERSION"-*.whl "$data"
fi
export ONNX_NODE_TESTS_DIR=$PWD/$data/onnx/backend/test/data/node
export ONNX_NODE_TESTS_REPORT=$PWD/target/onnx-node-tests.md
cargo test --release --test onnx_node_tests -- --nocapture
echo "report: $ONNX_NODE_TESTS_REPORT"
