#!/usr/bin/env python3
"""Regenerate the committed test fixtures: models, inputs, onnxruntime outputs, manifest.

  python models/make_fixtures.py            # writes models/fixtures/
Every model is exported by the real exporter (timm / torchvision / transformers through
torch.onnx), converted by onnxconverter-common or quantized by onnxruntime.quantization, then
run by onnxruntime on a fixed batch of real photos; manifest.json records each file's sha256 so
the Rust tests need no Python.
"""

import hashlib
import json
import os

import numpy as np
import onnx
import onnxruntime as ort
import torch
from PIL import Image

import convnext_builders
import export
import preprocess_ref
import quantize

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "fixtures")
IMAGES = os.path.join(HERE, "images")
SMALL = dict(depths=(1, 1, 2, 1), dims=(16, 32, 64, 128), num_classes=10)

# name: (source, v2, exporter, opset, input size, external data)
F32 = {
    "timm_v1_op17": ("timm", False, "legacy", 17, 64, False),
    "timm_v1_op13": ("timm", False, "legacy", 13, 64, False),
    "timm_v2_op17": ("timm", True, "legacy", 17, 64, False),
    "timm_v1_dynamo_op18": ("timm", False, "dynamo", 18, 64, True),
    "tv_v1_op17": ("torchvision", False, "legacy", 17, 64, False),
    "hf_v1_op17_96px": ("hf", False, "legacy", 17, 96, False),
    "hf_v2_dynamo_op18": ("hf", True, "dynamo", 18, 64, False),
}
# name: (base f32 fixture, mode, quantize kwargs)
DERIVED = {
    "timm_v1_f16": ("timm_v1_op17", "f16", {}),
    "timm_v1_f16_io32": ("timm_v1_op17", "f16-io32", {}),
    "hf_v2_f16_io32": ("hf_v2_dynamo_op18", "f16-io32", {}),
    "timm_v1_qdq_pc_u8": ("timm_v1_op17", "qdq", {}),
    "timm_v1_qdq_pc_s8": ("timm_v1_op17", "qdq", {"activation": "s8"}),
    "timm_v1_qdq_pt_s8_sym": ("timm_v1_op17", "qdq", {"per_channel": False, "activation": "s8", "symmetric": True}),
    "timm_v1_qdq_pt_u8w": ("timm_v1_op17", "qdq", {"per_channel": False, "weights": "u8"}),
    "timm_v2_qdq_pc_u8": ("timm_v2_op17", "qdq", {}),
    "tv_v1_qdq_pc_u8": ("tv_v1_op17", "qdq", {}),
    "timm_v1_qop_pc_u8": ("timm_v1_op17", "qoperator", {}),
    "timm_v1_qop_pt_s8": ("timm_v1_op17", "qoperator", {"per_channel": False, "activation": "s8"}),
    "hf_v1_qop_pc_u8": ("hf_v1_op17_96px", "qoperator", {}),
    "timm_v2_qop_pc_u8": ("timm_v2_op17", "qoperator", {}),
    "timm_v1_dyn_s8": ("timm_v1_op17", "dynamic", {}),
    "timm_v1_dyn_u8": ("timm_v1_op17", "dynamic", {"weights": "u8", "per_channel": False}),
    "hf_v1_dyn_s8": ("hf_v1_op17_96px", "dynamic", {}),
}
ATTO = {"atto_224_f16_io32": "f16-io32", "atto_224_qdq_pc_u8": "qdq"}


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def photos():
    return sorted(os.path.join(IMAGES, f) for f in os.listdir(IMAGES)
                  if f.lower().endswith((".png", ".jpg")))


def make_input(preset, size, crop_pct, batch, out=OUT):
    name = f"input_{preset}_{size}_b{batch}.npy"
    path = os.path.join(out, name)
    imgs = [Image.open(p) for p in photos()[:batch]]
    x = np.concatenate([preprocess_ref.tensor(i, preset, size, crop_pct)[None] for i in imgs])
    np.save(path, x)
    return name


def run_ort(model_path, x):
    sess = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    if inp.type == "tensor(float16)":
        x = x.astype(np.float16)
    return sess.run(None, {inp.name: x})[0].astype(np.float32), x


def meta(path):
    m = onnx.load(path, load_external_data=False)
    return {p.key: p.value for p in m.metadata_props}


def record(entries, name, path, source, version, precision, fmt, batch, out=OUT, **extra):
    """Runs onnxruntime on the file and appends its manifest entry (`extra` keys included)."""
    md = meta(path)
    preset, crop_pct = md["convnext_edge.preprocess"], float(md["convnext_edge.crop_pct"])
    m = onnx.load(path, load_external_data=False)
    size = m.graph.input[0].type.tensor_type.shape.dim[-1].dim_value
    inp_name = make_input(preset, size, crop_pct, batch, out)
    x = np.load(os.path.join(out, inp_name))
    y, x_used = run_ort(path, x)
    if x_used.dtype != x.dtype:
        inp_name = inp_name.replace(".npy", "_f16.npy")
        np.save(os.path.join(out, inp_name), x_used)
    ref = f"{name}.ort.npy"
    np.save(os.path.join(out, ref), y)
    top2 = np.sort(y, axis=1)[:, -2:]
    files = [os.path.basename(path)] + [f for f in os.listdir(out)
                                        if f.startswith(os.path.basename(path) + ".") and f.endswith(".data")]
    entries.append({
        "name": name, "model": os.path.basename(path), "source": source, "version": version,
        "precision": precision, "format": fmt, "exporter": md["convnext_edge.exporter"],
        "input": inp_name, "reference": ref,
        "min_top1_margin": float((top2[:, 1] - top2[:, 0]).min()),
        "sha256": {f: sha256(os.path.join(out, f)) for f in files + [inp_name, ref]},
        **extra,
    })
    print(f"{name}: top1 {y.argmax(1).tolist()} margin {entries[-1]['min_top1_margin']:.3f}")


def main():
    os.makedirs(OUT, exist_ok=True)
    for f in os.listdir(OUT):
        os.remove(os.path.join(OUT, f))
    entries = []
    kinds = {}
    for seed, (name, (source, v2, exporter, opset, size, ext)) in enumerate(F32.items()):
        torch.manual_seed(seed)
        model = convnext_builders.build(source, None, SMALL["depths"], SMALL["dims"], v2,
                                        SMALL["num_classes"], False)
        convnext_builders.spread_random_weights(model, seed)
        path = os.path.join(OUT, name + ".onnx")
        export.export(model, path, size, opset, exporter, external_data=ext, source=source)
        kinds[name] = (source, 2 if v2 else 1)
        record(entries, name, path, source, kinds[name][1], "f32", "float", 2)
    for name, (base, mode, kw) in DERIVED.items():
        path = os.path.join(OUT, name + ".onnx")
        quantize.convert(os.path.join(OUT, base + ".onnx"), path, mode, IMAGES, **kw)
        source, version = kinds[base]
        precision = "f16" if mode.startswith("f16") else "int8"
        record(entries, name, path, source, version, precision, mode, 2)
    torch.manual_seed(100)
    atto = convnext_builders.build("timm", "convnext_atto", None, None, False, None, False)
    convnext_builders.spread_random_weights(atto, 100)
    atto_f32 = os.path.join(OUT, "atto_224_f32.tmp.onnx")
    export.export(atto, atto_f32, 224, 17, "legacy", source="timm")
    for name, mode in ATTO.items():
        path = os.path.join(OUT, name + ".onnx")
        quantize.convert(atto_f32, path, mode, IMAGES)
        record(entries, name, path, "timm", 1, "f16" if mode.startswith("f16") else "int8", mode, 1)
    os.remove(atto_f32)
    with open(os.path.join(OUT, "manifest.json"), "w") as f:
        json.dump({"onnxruntime": ort.__version__, "torch": torch.__version__,
                   "fixtures": entries}, f, indent=1)


if __name__ == "__main__":
    main()
