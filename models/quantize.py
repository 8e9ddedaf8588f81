#!/usr/bin/env python3
"""Convert an f32 ConvNeXt ONNX file to f16 (onnxconverter-common) or int8 (onnxruntime).

  python models/quantize.py f32.onnx out.onnx --mode qdq --calib-dir models/images
  modes: f16, f16-io32 (keep_io_types), qdq, qoperator, dynamic
  int8 options: --per-tensor, --activation u8|s8, --weights s8|u8, --symmetric,
                --weight-asymmetric, --reduce-range, --no-pre-process
By default the file goes through onnxruntime's `quant_pre_process` first, as its documentation
recommends; --no-pre-process quantizes the export as it is.
"""

import argparse
import glob
import os

import numpy as np
import onnx
from PIL import Image

import preprocess_ref

MODES = ("f16", "f16-io32", "qdq", "qoperator", "dynamic")


def calibration_batches(calib_dir, input_size, preprocess="timm", crop_pct=0.875, count=16):
    """Real photos from a folder, plus mirrored and shifted crops of them, as model inputs."""
    files = sorted(glob.glob(os.path.join(calib_dir, "*")))
    files = [f for f in files if f.lower().endswith((".png", ".jpg", ".jpeg"))]
    if not files:
        raise SystemExit(f"{calib_dir}: no .png/.jpg calibration images")
    out = []
    for i in range(count):
        img = Image.open(files[i % len(files)]).convert("RGB")
        if i // len(files) % 2 == 1:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        if i // len(files) >= 2:
            w, h = img.size
            img = img.crop((w // 8, h // 8, w, h))
        out.append(preprocess_ref.tensor(img, preprocess, input_size, crop_pct)[None])
    return out


class Reader:
    def __init__(self, batches, input_name):
        self.it = iter([{input_name: b} for b in batches])

    def get_next(self):
        return next(self.it, None)


def convert(src, dst, mode, calib_dir=None, per_channel=True, activation="u8", weights="s8",
            symmetric=False, weight_symmetric=None, reduce_range=False, pre_process=True):
    if mode in ("f16", "f16-io32"):
        from onnxconverter_common import float16

        m = onnx.load(src)
        m16 = float16.convert_float_to_float16(m, keep_io_types=(mode == "f16-io32"))
        onnx.save(m16, dst)
        return dst
    from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType,
                                          quantize_dynamic, quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    qt = {"u8": QuantType.QUInt8, "s8": QuantType.QInt8}
    if weight_symmetric is None:
        weight_symmetric = True if weights == "s8" else symmetric
    pre = dst + ".pre.onnx"
    if pre_process:
        quant_pre_process(src, pre, skip_symbolic_shape=True)
    else:
        onnx.save(onnx.load(src), pre)
    try:
        if mode == "dynamic":
            quantize_dynamic(pre, dst, weight_type=qt[weights], per_channel=per_channel,
                             reduce_range=reduce_range,
                             extra_options={"WeightSymmetric": weight_symmetric})
            return dst
        m = onnx.load(pre)
        inp = m.graph.input[0]
        size = inp.type.tensor_type.shape.dim[-1].dim_value
        meta = {p.key: p.value for p in m.metadata_props}
        batches = calibration_batches(calib_dir, size, meta.get("convnext_edge.preprocess", "timm"),
                                      float(meta.get("convnext_edge.crop_pct", 0.875)))
        quantize_static(
            pre, dst, Reader(batches, inp.name),
            quant_format=QuantFormat.QDQ if mode == "qdq" else QuantFormat.QOperator,
            per_channel=per_channel, activation_type=qt[activation], weight_type=qt[weights],
            calibrate_method=CalibrationMethod.MinMax, reduce_range=reduce_range,
            extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": weight_symmetric},
        )
    finally:
        if os.path.exists(pre):
            os.remove(pre)
    return dst


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--mode", choices=MODES, required=True)
    ap.add_argument("--calib-dir", default=os.path.join(os.path.dirname(__file__), "images"))
    ap.add_argument("--per-tensor", action="store_true")
    ap.add_argument("--activation", choices=("u8", "s8"), default="u8")
    ap.add_argument("--weights", choices=("u8", "s8"), default="s8")
    ap.add_argument("--symmetric", action="store_true", help="symmetric activations")
    ap.add_argument("--weight-asymmetric", action="store_true",
                    help="weights with zero points (WeightSymmetric=False)")
    ap.add_argument("--reduce-range", action="store_true", help="7-bit weights")
    ap.add_argument("--no-pre-process", action="store_true", help="skip quant_pre_process")
    a = ap.parse_args()
    convert(a.src, a.dst, a.mode, a.calib_dir, not a.per_tensor, a.activation, a.weights,
            a.symmetric, False if a.weight_asymmetric else None, a.reduce_range,
            not a.no_pre_process)
    print(a.dst)


if __name__ == "__main__":
    main()
