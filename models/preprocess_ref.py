"""The Python preprocessing pipelines convnext-edge's presets must match.

Each preset runs the real library code users evaluate with: timm's create_transform,
torchvision's ImageClassification preset, Hugging Face's ConvNextImageProcessor.
`pixels` returns the resized and cropped image before normalisation (HxWx3, values 0..255);
`tensor` the normalised 1x3xHxW float32 model input.
"""

import numpy as np

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def _pipeline(preset, size, crop_pct, mean, std):
    if preset == "timm":
        from timm.data import create_transform

        return create_transform(input_size=size, crop_pct=crop_pct, interpolation="bicubic",
                                mean=mean, std=std)
    if preset == "torchvision":
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms._presets import ImageClassification

        return ImageClassification(crop_size=size, resize_size=round(size / crop_pct),
                                   interpolation=InterpolationMode.BILINEAR, mean=mean, std=std)
    if preset == "hf":
        from transformers import ConvNextImageProcessor

        proc = ConvNextImageProcessor(size={"shortest_edge": size}, crop_pct=crop_pct,
                                      image_mean=list(mean), image_std=list(std),
                                      do_normalize=True)
        return lambda img: proc(img, return_tensors="np")["pixel_values"][0]
    if preset == "squash":
        from torchvision import transforms as T

        return T.Compose([T.Resize((size, size), interpolation=T.InterpolationMode.BICUBIC),
                          T.ToTensor(), T.Normalize(mean, std)])
    raise ValueError(f"unknown preset {preset!r}")


def tensor(img, preset, size, crop_pct, mean=MEAN, std=STD):
    out = _pipeline(preset, size, crop_pct, mean, std)(img.convert("RGB"))
    return np.asarray(out, dtype=np.float32)


def pixels(img, preset, size, crop_pct):
    """Values before normalisation, 0..255 as float32 HxWx3."""
    chw = tensor(img, preset, size, crop_pct, mean=(0.0, 0.0, 0.0), std=(1 / 255,) * 3)
    return chw.transpose(1, 2, 0)
