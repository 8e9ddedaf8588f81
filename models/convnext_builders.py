"""Builds ConvNeXt classifiers from timm, torchvision and Hugging Face transformers.

Random-weight models get their layer-scale gammas drawn in [0.2, 1) and GRN parameters drawn
around zero: with timm's default gamma of 1e-6 every block is nearly an identity, so a test
comparing logits would not see errors inside the blocks.
"""

import torch

SOURCES = ("timm", "torchvision", "hf")


class LogitsOnly(torch.nn.Module):
    """Hugging Face models return a ModelOutput; exporters want a plain tensor."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, pixel_values):
        return self.inner(pixel_values=pixel_values).logits


def build(source, arch, depths, dims, v2, num_classes, pretrained):
    if source == "timm":
        return _timm(arch, depths, dims, v2, num_classes, pretrained)
    if source == "torchvision":
        return _torchvision(arch, depths, dims, v2, num_classes, pretrained)
    if source == "hf":
        return _hf(arch, depths, dims, v2, num_classes, pretrained)
    raise ValueError(f"unknown source {source!r}; expected one of {SOURCES}")


def _timm(arch, depths, dims, v2, num_classes, pretrained):
    import timm
    from timm.models.convnext import ConvNeXt

    if arch:
        kwargs = {} if num_classes is None else {"num_classes": num_classes}
        return timm.create_model(arch, pretrained=pretrained, **kwargs)
    extra = {"use_grn": True, "ls_init_value": None} if v2 else {}
    return ConvNeXt(depths=depths, dims=dims, num_classes=num_classes or 1000, **extra)


def _torchvision(arch, depths, dims, v2, num_classes, pretrained):
    import torchvision
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt

    if v2:
        raise ValueError("torchvision has no ConvNeXt V2")
    if arch:
        weights = "DEFAULT" if pretrained else None
        kwargs = {} if num_classes is None else {"num_classes": num_classes}
        return getattr(torchvision.models, arch)(weights=weights, **kwargs)
    outs = list(dims[1:]) + [None]
    setting = [CNBlockConfig(i, o, d) for i, o, d in zip(dims, outs, depths)]
    return ConvNeXt(setting, num_classes=num_classes or 1000)


def _hf(arch, depths, dims, v2, num_classes, pretrained):
    import transformers as tf

    if arch:
        cls = tf.ConvNextV2ForImageClassification if v2 else tf.ConvNextForImageClassification
        return LogitsOnly(cls.from_pretrained(arch))
    kwargs = dict(hidden_sizes=list(dims), depths=list(depths), num_labels=num_classes or 1000)
    if v2:
        model = tf.ConvNextV2ForImageClassification(tf.ConvNextV2Config(**kwargs))
    else:
        model = tf.ConvNextForImageClassification(tf.ConvNextConfig(**kwargs))
    return LogitsOnly(model)


def spread_random_weights(model, seed):
    """Make every block reach the logits (see module docs)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf in ("gamma", "layer_scale", "layer_scale_parameter"):
                p.copy_(0.2 + 0.8 * torch.rand(p.shape, generator=gen))
            elif ".grn." in name or leaf in ("grn_weight", "grn_bias"):
                p.copy_(0.5 * torch.randn(p.shape, generator=gen))
            elif p.dim() == 2 and p.shape[0] == model_num_classes(model):
                p.mul_(20.0)
            elif leaf == "bias":
                # Fresh models have all-zero biases, which exporters merge into one shared
                # initializer; quantizers then mis-handle the sharing.
                p.copy_(0.02 * torch.randn(p.shape, generator=gen))
            elif p.dim() == 1 and leaf == "weight":
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
    return model


def model_num_classes(model):
    for attr in ("num_classes",):
        if hasattr(model, attr):
            return getattr(model, attr)
    inner = getattr(model, "inner", None)
    if inner is not None:
        return inner.config.num_labels
    return model.classifier[-1].out_features
