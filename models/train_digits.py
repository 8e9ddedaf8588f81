#!/usr/bin/env python3
"""Train the shipped default model: a small ConvNeXt on scikit-learn's handwritten digits.

  python models/train_digits.py          # writes models/digits/
No model hub is reachable from where this project is built, so pretrained ImageNet weights
cannot be shipped; the digits set (1797 real 8x8 scans, bundled with scikit-learn) is real data
that is. Images are shown to the model as 64x64 RGB PNGs (nearest-neighbour upscaled scans,
white ink on black) squashed to 32x32, exactly the files written to digits/samples/.
Writes f32, f16 and int8 (QDQ) ONNX files, the held-out split, and metrics.json with the
held-out top-1 of each, measured with onnxruntime through the same preprocessing.
"""

import json
import os
import shutil
import tempfile

import numpy as np
import onnxruntime as ort
import torch
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from timm.models.convnext import ConvNeXt

import export
import preprocess_ref
import quantize

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "digits")
SIZE = 32
LABELS = [str(d) for d in range(10)]


def to_image(scan):
    """An 8x8 scan with values 0..16 as the 64x64 RGB picture the model is shown."""
    grey = (scan.astype(np.float32) * (255 / 16)).round().astype(np.uint8)
    return Image.fromarray(grey, "L").resize((64, 64), Image.NEAREST).convert("RGB")


def batch(images):
    return np.stack([preprocess_ref.tensor(i, "squash", SIZE, 1.0) for i in images])


def augment(x64, gen):
    """Random rotation, scale and shift of a batch of normalised 64x64 images, then the
    32x32 squash (torch's antialiased bicubic, close to PIL's)."""
    n = x64.shape[0]
    angle = (torch.rand(n, generator=gen) - 0.5) * 0.4
    scale = 0.85 + 0.25 * torch.rand(n, generator=gen)
    shift = (torch.rand(n, 2, generator=gen) - 0.5) * 0.3
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1),
                         torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = torch.nn.functional.affine_grid(theta, list(x64.shape), align_corners=False)
    background = x64[:, :, :1, :1]
    moved = torch.nn.functional.grid_sample(x64 - background, grid, align_corners=False) + background
    return torch.nn.functional.interpolate(moved, size=(SIZE, SIZE), mode="bicubic",
                                           antialias=True, align_corners=False)


def top1(model_path, x, y):
    sess = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    xx = x.astype(np.float16) if inp.type == "tensor(float16)" else x
    logits = sess.run(None, {inp.name: xx})[0]
    return float((logits.argmax(1) == y).mean())


def main():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    d = load_digits()
    x_tr, x_te, y_tr, y_te = train_test_split(d.images, d.target, test_size=0.2,
                                              stratify=d.target, random_state=0)
    train_imgs = [to_image(s) for s in x_tr]
    train_x64 = torch.from_numpy(np.stack([preprocess_ref.tensor(i, "squash", 64, 1.0)
                                           for i in train_imgs]))
    gen = torch.Generator().manual_seed(0)
    test_x = batch([to_image(s) for s in x_te])
    model = ConvNeXt(depths=(2, 2, 2, 2), dims=(24, 48, 96, 192), num_classes=10,
                     drop_path_rate=0.05)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    epochs = 30
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=epochs * 23)
    yt = torch.tensor(y_tr)
    for epoch in range(epochs):
        model.train()
        perm = rng.permutation(len(train_imgs))
        for i in range(0, len(perm), 64):
            idx = perm[i:i + 64]
            xb = augment(train_x64[idx], gen)
            loss = torch.nn.functional.cross_entropy(model(xb), yt[idx], label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        if epoch % 5 == 4:
            model.eval()
            with torch.no_grad():
                acc = (model(torch.from_numpy(test_x)).argmax(1).numpy() == y_te).mean()
            print(f"epoch {epoch + 1}: loss {loss.item():.3f} held-out top-1 {acc:.4f}")
    model.eval()
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    os.makedirs(os.path.join(OUT, "samples"))
    f32 = os.path.join(OUT, "convnext_digits_f32.onnx")
    export.export(model, f32, SIZE, 17, "legacy", preprocess="squash", crop_pct=1.0,
                  labels=LABELS, source="timm")
    paths = {"f32": f32}
    paths["f16"] = quantize.convert(f32, os.path.join(OUT, "convnext_digits_f16.onnx"), "f16-io32")
    with tempfile.TemporaryDirectory() as calib:
        for i, img in enumerate(train_imgs[:64]):
            img.save(os.path.join(calib, f"{i:03}.png"))
        paths["int8"] = quantize.convert(f32, os.path.join(OUT, "convnext_digits_int8.onnx"),
                                         "qdq", calib_dir=calib)
    metrics = {"dataset": "scikit-learn load_digits, stratified 80/20 split, random_state=0",
               "held_out": int(len(y_te)),
               "top1": {k: top1(p, test_x, y_te) for k, p in paths.items()}}
    print(metrics)
    np.save(os.path.join(OUT, "heldout_scans.npy"), x_te.astype(np.float32))
    np.save(os.path.join(OUT, "heldout_labels.npy"), y_te.astype(np.float32))
    for digit in range(10):
        first = int(np.flatnonzero(y_te == digit)[0])
        to_image(x_te[first]).save(os.path.join(OUT, "samples", f"{digit}.png"))
    with open(os.path.join(OUT, "labels.txt"), "w") as f:
        f.write("\n".join(LABELS) + "\n")
    with open(os.path.join(OUT, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=1)


if __name__ == "__main__":
    main()
