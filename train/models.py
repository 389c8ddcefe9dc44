"""Model registry. A checkpoint stores `arch` and `model_args`, so `build_model` rebuilds it."""

from __future__ import annotations

import torch
from torch import nn

from tumor_runtime.errors import OptionError


def conv_bn(c_in: int, c_out: int, kernel: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class CompactNet(nn.Module):
    """AlexNet's layout at 1% of its size: an 11x11 stride-4 stem, a 5x5 stage, three 3x3
    convolutions, batch norm throughout, global average pooling and a small dropout head."""

    def __init__(self, num_classes: int = 4, width: int = 40, dropout: float = 0.3):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            conv_bn(1, w, 11, stride=4),  # (N, w, 57, 57)
            nn.MaxPool2d(3, 2),  # (N, w, 28, 28)
            conv_bn(w, 2 * w, 5),  # (N, 2w, 28, 28)
            nn.MaxPool2d(3, 2),  # (N, 2w, 13, 13)
            conv_bn(2 * w, 4 * w, 3),
            conv_bn(4 * w, 4 * w, 3),
            conv_bn(4 * w, 8 * w, 3),  # (N, 8w, 13, 13)
        )
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(8 * w, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, 1, 227, 227) -> logits (N, classes)
        return self.head(self.features(x))


class AlexNet(nn.Module):
    """The reference: AlexNet (Krizhevsky et al., 2012) on one grayscale channel, 4096-4096-classes head."""

    def __init__(self, num_classes: int = 4, dropout: float = 0.5):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 96, 11, stride=4), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),  # (N, 96, 27, 27)
            nn.Conv2d(96, 256, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),  # (N, 256, 13, 13)
            nn.Conv2d(256, 384, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 384, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),  # (N, 256, 6, 6)
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout), nn.Linear(256 * 6 * 6, 4096), nn.ReLU(inplace=True),
            nn.Dropout(dropout), nn.Linear(4096, 4096), nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, 1, 227, 227) -> logits (N, classes)
        return self.classifier(self.features(x))


ARCHITECTURES = {"compact": CompactNet, "alexnet": AlexNet}


def model_args_for(arch: str, num_classes: int, width: int, dropout: float) -> dict:
    """The constructor arguments stored in checkpoints (alexnet has no width; its dropout is the original 0.5)."""
    if arch == "alexnet":
        return {"num_classes": num_classes}
    return {"num_classes": num_classes, "width": width, "dropout": dropout}


def build_model(arch: str, **model_args) -> nn.Module:
    if arch not in ARCHITECTURES:
        raise OptionError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[arch](**model_args)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
