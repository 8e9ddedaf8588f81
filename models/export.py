#!/usr/bin/env python3
"""Export a ConvNeXt classifier to ONNX the way users do, with convnext-edge metadata.

Examples:
  # pretrained ImageNet ConvNeXt-Tiny from timm (needs a reachable model hub)
  python models/export.py --source timm --arch convnext_tiny.fb_in1k --pretrained -o tiny.onnx
  # seeded random small variant, torch.export-based exporter with external weights
  python models/export.py --source hf --v2 --depths 1,1,2,1 --dims 16,32,64,128 \\
      --exporter dynamo --opset 18 --external-data -o hf_v2.onnx

Metadata written into the file (read by `convnext-edge`): convnext_edge.preprocess (timm,
torchvision, hf or squash), convnext_edge.crop_pct, convnext_edge.exporter and, when given,
convnext_edge.labels (a JSON list).
"""

import argparse
import json
import os

import onnx
import torch

import convnext_builders

PREPROCESS_BY_SOURCE = {"timm": ("timm", 0.875), "torchvision": ("torchvision", 224 / 236),
                        "hf": ("hf", 0.875)}


def export(model, path, input_size, opset, exporter, external_data=False, dynamic_batch=True,
           preprocess=None, crop_pct=None, labels=None, source=""):
    model.eval()
    x = torch.randn(2 if dynamic_batch else 1, 3, input_size, input_size)
    if exporter == "legacy":
        dyn = {"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None
        torch.onnx.export(model, (x,), path, opset_version=opset, dynamo=False,
                          input_names=["input"], output_names=["logits"], dynamic_axes=dyn)
    elif exporter == "dynamo":
        dyn = ({"pixel_values" if isinstance(model, convnext_builders.LogitsOnly) else "x":
                {0: torch.export.Dim.DYNAMIC}} if dynamic_batch else None)
        prog = torch.onnx.export(model, (x,), dynamo=True, opset_version=opset,
                                 input_names=["input"], output_names=["logits"],
                                 dynamic_shapes=dyn, optimize=True)
        prog.save(path, external_data=external_data)
    else:
        raise ValueError(f"unknown exporter {exporter!r}")
    m = onnx.load(path, load_external_data=False)
    meta = {
        "convnext_edge.exporter": f"{source} torch.onnx {exporter} opset {opset}",
        "convnext_edge.preprocess": preprocess or PREPROCESS_BY_SOURCE.get(source, ("timm",))[0],
        "convnext_edge.crop_pct": str(crop_pct or PREPROCESS_BY_SOURCE.get(source, (0, 0.875))[1]),
    }
    if labels is not None:
        meta["convnext_edge.labels"] = json.dumps(labels)
    set_metadata(m, meta)
    onnx.save(m, path)
    return path


def set_metadata(m, meta):
    keep = [p for p in m.metadata_props if p.key not in meta]
    del m.metadata_props[:]
    m.metadata_props.extend(keep)
    for k, v in meta.items():
        m.metadata_props.add(key=k, value=v)


def ints(s):
    return tuple(int(v) for v in s.split(","))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", choices=convnext_builders.SOURCES, default="timm")
    ap.add_argument("--arch", help="named model (timm name, torchvision function, HF hub id)")
    ap.add_argument("--depths", type=ints, default=(2, 2, 6, 2))
    ap.add_argument("--dims", type=ints, default=(40, 80, 160, 320))
    ap.add_argument("--v2", action="store_true", help="ConvNeXt V2 (GRN)")
    ap.add_argument("--num-classes", type=int)
    ap.add_argument("--pretrained", action="store_true", help="load weights from the model hub")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--input-size", type=int, default=224)
    ap.add_argument("--opset", type=int, default=17)
    ap.add_argument("--exporter", choices=("legacy", "dynamo"), default="legacy")
    ap.add_argument("--external-data", action="store_true")
    ap.add_argument("--static-batch", action="store_true")
    ap.add_argument("-o", "--output", required=True)
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    model = convnext_builders.build(a.source, a.arch, a.depths, a.dims, a.v2, a.num_classes,
                                    a.pretrained)
    if not a.pretrained:
        convnext_builders.spread_random_weights(model, a.seed)
    os.makedirs(os.path.dirname(os.path.abspath(a.output)), exist_ok=True)
    export(model, a.output, a.input_size, a.opset, a.exporter, a.external_data,
           not a.static_batch, source=a.source)
    print(a.output)


if __name__ == "__main__":
    main()
