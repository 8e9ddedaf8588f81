#!/usr/bin/env python3
"""The recipe matrix: one small ConvNeXt quantized the many ways users' tools do it.

  python models/make_recipes.py             # writes models/recipes/
  python models/make_recipes.py --arch convnext_tiny --size 224 --out target/bench-models/recipes
                                            # the same recipes at full size, for benchmarks

Each f32 base is a real export (timm, torchvision or Hugging Face; torch.onnx legacy or
dynamo; opset 13 to 21; fixed batch 1 or dynamic), and each recipe a real onnxruntime
quantization of one base: with or without `quant_pre_process`, QDQ, QOperator or dynamic,
per-channel or per-tensor weights, s8 or u8 activations, symmetric or not, weights with zero
points, `reduce_range`. Not a full product of those axes (it would be thousands of files): each
value of each axis appears, and the combinations users reach first (onnxruntime's documented
flow on a fixed-batch export) appear several times. manifest.json lists each file with its
recipe, onnxruntime's output on real photos and the sha256 of everything, for
tests/recipes.rs, which asserts that every product runs on integer kernels and that the
output matches onnxruntime's.
"""

import argparse
import json
import os

import onnxruntime as ort
import torch

import convnext_builders
import export
import make_fixtures
import quantize

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "recipes")
IMAGES = os.path.join(HERE, "images")
# Small enough that the files stay a few hundred KB, every layer kind still present.
NET = dict(depths=(1, 1, 1, 1), dims=(16, 32, 48, 64), num_classes=10)
SIZE = 64
# Full-size variants for benchmarks, built the same way in every source.
ARCHS = {
    "convnext_atto": ((2, 2, 6, 2), (40, 80, 160, 320), 1000),
    "convnext_tiny": ((3, 3, 9, 3), (96, 192, 384, 768), 1000),
}

# name: (source, v2, exporter, opset, dynamic batch)
BASES = {
    "timm_legacy13_dyn": ("timm", False, "legacy", 13, True),
    "timm_legacy17_b1": ("timm", False, "legacy", 17, False),
    "timm_dynamo18_b1": ("timm", False, "dynamo", 18, False),
    "timm_dynamo21_dyn": ("timm", False, "dynamo", 21, True),
    "tv_legacy17_b1": ("torchvision", False, "legacy", 17, False),
    "tv_dynamo18_dyn": ("torchvision", False, "dynamo", 18, True),
    "hf_legacy17_dyn": ("hf", False, "legacy", 17, True),
    "hf_dynamo21_b1": ("hf", False, "dynamo", 21, False),
}

# name: (base, mode, quantize.convert options)
RECIPES = {
    # onnxruntime's documented flow: quant_pre_process, then QDQ, per-channel s8 weights.
    "timm_legacy17_b1_qdq_pc_u8": ("timm_legacy17_b1", "qdq", {}),
    "timm_legacy17_b1_qdq_pc_u8_nopre": ("timm_legacy17_b1", "qdq", {"pre_process": False}),
    "timm_legacy17_b1_qdq_pt_s8_sym": ("timm_legacy17_b1", "qdq", {"per_channel": False, "activation": "s8", "symmetric": True}),
    "timm_legacy17_b1_qdq_pc_u8_rr": ("timm_legacy17_b1", "qdq", {"reduce_range": True}),
    "timm_legacy17_b1_qdq_pc_s8_wasym": ("timm_legacy17_b1", "qdq", {"activation": "s8", "weight_symmetric": False}),
    "timm_legacy17_b1_qop_pc_u8": ("timm_legacy17_b1", "qoperator", {}),
    "timm_legacy17_b1_qop_pt_s8_nopre": ("timm_legacy17_b1", "qoperator", {"per_channel": False, "activation": "s8", "pre_process": False}),
    "timm_legacy17_b1_dyn_pc_s8": ("timm_legacy17_b1", "dynamic", {}),
    "timm_legacy17_b1_dyn_pt_u8w": ("timm_legacy17_b1", "dynamic", {"weights": "u8", "per_channel": False}),
    "timm_legacy13_dyn_qdq_pc_u8": ("timm_legacy13_dyn", "qdq", {}),
    "timm_legacy13_dyn_dyn_pc_s8_nopre": ("timm_legacy13_dyn", "dynamic", {"pre_process": False}),
    "timm_dynamo18_b1_qdq_pc_s8": ("timm_dynamo18_b1", "qdq", {"activation": "s8"}),
    "timm_dynamo21_dyn_qdq_pc_u8": ("timm_dynamo21_dyn", "qdq", {}),
    "timm_dynamo21_dyn_qop_pt_u8_nopre": ("timm_dynamo21_dyn", "qoperator", {"per_channel": False, "pre_process": False}),
    "tv_legacy17_b1_qdq_pc_u8": ("tv_legacy17_b1", "qdq", {}),
    "tv_legacy17_b1_qdq_pt_u8w_rr": ("tv_legacy17_b1", "qdq", {"per_channel": False, "weights": "u8", "reduce_range": True}),
    "tv_dynamo18_dyn_qop_pc_u8": ("tv_dynamo18_dyn", "qoperator", {}),
    "tv_dynamo18_dyn_dyn_pc_s8": ("tv_dynamo18_dyn", "dynamic", {}),
    "hf_legacy17_dyn_qdq_pc_u8": ("hf_legacy17_dyn", "qdq", {}),
    "hf_legacy17_dyn_qdq_pt_u8w": ("hf_legacy17_dyn", "qdq", {"per_channel": False, "weights": "u8"}),
    "hf_dynamo21_b1_qdq_pc_u8": ("hf_dynamo21_b1", "qdq", {}),
    "hf_dynamo21_b1_qop_pc_s8_sym": ("hf_dynamo21_b1", "qoperator", {"activation": "s8", "symmetric": True}),
}


def make(out, arch=None, size=SIZE, references=True, only=None):
    """Exports the bases and quantizes the recipes (those named in `only`, if given) into
    `out`; with `references`, runs onnxruntime on each and writes manifest.json."""
    os.makedirs(out, exist_ok=True)
    recipes = {k: v for k, v in RECIPES.items() if only is None or k in only}
    tmp = os.path.join(out, "tmp")
    os.makedirs(tmp, exist_ok=True)
    kinds = {}
    bases = {b for b, _, _ in recipes.values()}
    for seed, (name, (source, v2, exporter, opset, dynamic)) in enumerate(BASES.items()):
        if name not in bases:
            continue
        torch.manual_seed(seed)
        depths, dims, classes = ARCHS[arch] if arch else NET.values()
        model = convnext_builders.build(source, None, depths, dims, v2, classes, False)
        convnext_builders.spread_random_weights(model, seed)
        path = os.path.join(tmp, name + ".onnx")
        export.export(model, path, size, opset, exporter, dynamic_batch=dynamic, source=source)
        kinds[name] = (source, 2 if v2 else 1, dynamic)
    entries = []
    for name, (base, mode, kw) in recipes.items():
        path = os.path.join(out, name + ".onnx")
        quantize.convert(os.path.join(tmp, base + ".onnx"), path, mode, IMAGES, **kw)
        source, version, dynamic = kinds[base]
        if references:
            make_fixtures.record(entries, name, path, source, version, "int8", mode,
                                 2 if dynamic else 1, out=out,
                                 recipe={"base": base, "mode": mode, **kw})
    for f in os.listdir(tmp):
        os.remove(os.path.join(tmp, f))
    os.rmdir(tmp)
    if references:
        with open(os.path.join(out, "manifest.json"), "w") as f:
            json.dump({"onnxruntime": ort.__version__, "torch": torch.__version__,
                       "fixtures": entries}, f, indent=1)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", choices=sorted(ARCHS), help="a full-size ConvNeXt for benchmark "
                    "files; default: the small test network")
    ap.add_argument("--size", type=int, default=SIZE)
    ap.add_argument("--out", default=OUT)
    ap.add_argument("--only", help="comma-separated recipe names")
    a = ap.parse_args()
    if a.out == OUT:
        for f in os.listdir(OUT) if os.path.isdir(OUT) else []:
            os.remove(os.path.join(OUT, f))
    make(a.out, a.arch, a.size, references=a.arch is None,
         only=a.only.split(",") if a.only else None)


if __name__ == "__main__":
    main()
