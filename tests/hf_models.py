"""Tiny Hugging Face ``transformers`` vision classifiers built from their configs (no
weights), for one-channel images and any class count; a spec hands one over as
``model: {import: "tests.hf_models:vit"}``.

Each forward returns a ``ModelOutput`` (``logits`` in it), as the real models do. Sizes
are cut down so a test builds, prunes and exports one in seconds; the structure
(residual stages, inverted residuals with squeeze-excite, layer scale, multi-head
attention, MobileViT's unfold/fold) is the real one. ``vit`` is for 28x28 inputs (its
position embeddings fix the size), ``vit16`` for 16x16 (the synthetic data).
``efficientnet`` and ``mobilevit`` reset their norm layers (:func:`unit_norms`); the
``*_as_built`` builders are the models exactly as transformers makes them.
"""

from __future__ import annotations

from torch import nn


def _config(name: str, **kwargs):
    import transformers

    return getattr(transformers, name)(**kwargs)


def resnet(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    from transformers import ResNetForImageClassification

    return ResNetForImageClassification(_config(
        "ResNetConfig", num_channels=in_channels, embedding_size=16, hidden_sizes=[16, 32],
        depths=[1, 1], layer_type="basic", num_labels=num_classes))


def mobilenet_v2(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    from transformers import MobileNetV2ForImageClassification

    return MobileNetV2ForImageClassification(_config(
        "MobileNetV2Config", num_channels=in_channels, image_size=28, depth_multiplier=0.35,
        finegrained_output=False, classifier_dropout_prob=0.1, num_labels=num_classes))


def convnext(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    from transformers import ConvNextForImageClassification

    return ConvNextForImageClassification(_config(
        "ConvNextConfig", num_channels=in_channels, patch_size=2, num_stages=2,
        hidden_sizes=[16, 32], depths=[1, 1], image_size=28, num_labels=num_classes))


def _vit(num_classes: int, in_channels: int, image_size: int, patch_size: int) -> nn.Module:
    from transformers import ViTForImageClassification

    return ViTForImageClassification(_config(
        "ViTConfig", image_size=image_size, patch_size=patch_size, num_channels=in_channels,
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        num_labels=num_classes))


def vit(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """ViT for 28x28 images: 16 patches of 7x7, 4 heads of 8 channels."""
    return _vit(num_classes, in_channels, image_size=28, patch_size=7)


def vit16(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """ViT for 16x16 images: 16 patches of 4x4, 4 heads of 8 channels."""
    return _vit(num_classes, in_channels, image_size=16, patch_size=4)


def unit_norms(model: nn.Module) -> nn.Module:
    """``model`` with every BatchNorm/LayerNorm back at scale 1, shift 0 (torch's default).

    transformers 5.24 draws EfficientNet's and MobileViT's BatchNorm scales from N(0, 0.02)
    when it builds them from a config: each layer multiplies the signal by ~0.02, the
    logits of a fresh model are ~1e-18 and no recipe trains it (slimtune refuses such a
    baseline at chance level). A user training one from scratch does this fix."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d | nn.LayerNorm) and m.weight is not None:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return model


def efficientnet_as_built(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """EfficientNet exactly as transformers builds it from the config (see unit_norms)."""
    from transformers import EfficientNetForImageClassification

    return EfficientNetForImageClassification(_config(
        "EfficientNetConfig", num_channels=in_channels, image_size=28, width_coefficient=0.25,
        depth_coefficient=0.5, kernel_sizes=[3, 3, 5], in_channels=[32, 16, 24],
        out_channels=[16, 24, 40], strides=[1, 2, 2], num_block_repeats=[1, 2, 2],
        expand_ratios=[1, 6, 6], hidden_dim=320, num_labels=num_classes))


def efficientnet(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    return unit_norms(efficientnet_as_built(num_classes, in_channels))


def mobilevit_as_built(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """MobileViT exactly as transformers builds it from the config (see unit_norms)."""
    from transformers import MobileViTForImageClassification

    return MobileViTForImageClassification(_config(
        "MobileViTConfig", num_channels=in_channels, image_size=28, patch_size=2,
        hidden_sizes=[32, 48, 64], neck_hidden_sizes=[8, 16, 24, 32, 40, 48, 96],
        num_attention_heads=4, expand_ratio=2.0, num_labels=num_classes))


def mobilevit(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    return unit_norms(mobilevit_as_built(num_classes, in_channels))


FAMILIES = {"resnet": resnet, "mobilenet_v2": mobilenet_v2, "convnext": convnext,
            "vit": vit, "efficientnet": efficientnet, "mobilevit": mobilevit}
