#!/usr/bin/env python3
"""Reference outputs of the Python preprocessing pipelines, for the Rust parity test.

  python models/make_preprocess_refs.py     # writes tests/data/preprocess/
For each photo in models/images and each preset, the resized and cropped image before
normalisation (what timm / torchvision / transformers feed to their normalisation), stored
losslessly as PNG, plus a manifest with the presets' parameters.
"""

import json
import os

import numpy as np
from PIL import Image

import preprocess_ref

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "tests", "data", "preprocess")
CASES = [("timm", 224, 0.875), ("torchvision", 224, 224 / 236), ("hf", 224, 0.875),
         ("squash", 224, 1.0), ("hf", 384, 1.0), ("timm", 160, 0.95)]


def main():
    os.makedirs(OUT, exist_ok=True)
    entries = []
    for name in sorted(os.listdir(os.path.join(HERE, "images"))):
        img = Image.open(os.path.join(HERE, "images", name))
        for preset, size, crop_pct in CASES:
            px = preprocess_ref.pixels(img, preset, size, crop_pct)
            u8 = np.clip(np.rint(px), 0, 255).astype(np.uint8)
            assert np.abs(px - u8).max() < 1e-3, "pipeline output is not on the 8-bit grid"
            ref = f"{os.path.splitext(name)[0]}_{preset}_{size}.png"
            Image.fromarray(u8, "RGB").save(os.path.join(OUT, ref))
            entries.append({"image": name, "preset": preset, "size": size, "crop_pct": crop_pct,
                            "reference": ref})
    with open(os.path.join(OUT, "manifest.json"), "w") as f:
        json.dump(entries, f, indent=1)


if __name__ == "__main__":
    main()
