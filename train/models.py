"""Model registry. A checkpoint stores `arch` and `model_args`, so `build_model` rebuilds it."""

from __future__ import annotations

import torch
from torch import nn

from tumor_runtime.core.errors import OptionError
from tumor_train import architectures


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
            nn.Conv2d(1, 96, 11, stride=4),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2),  # (N, 96, 27, 27)
            nn.Conv2d(96, 256, 5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2),  # (N, 256, 13, 13)
            nn.Conv2d(256, 384, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 384, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2),  # (N, 256, 6, 6)
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(256 * 6 * 6, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, 1, 227, 227) -> logits (N, classes)
        return self.classifier(self.features(x))


class MobileNetV2Trunk(nn.Module):
    """torchvision's MobileNetV2 (Sandler et al., 2018) cut after inverted-residual block `blocks` and the
    next block's 1x1 expansion: at 160 px, (N, 1, 160, 160) -> features (N, 576, 10, 10) for blocks=13.

    The cut keeps the int8 file under 1 MB (about 0.6 M parameters) and the stride at 16, so heat-maps have
    a 10x10 grid. The stem takes one grayscale channel: `from_imagenet` sums the RGB stem's filters, which
    is the RGB network's response to a gray image (the three channels equal), not a new random layer. The
    head is global average pooling and a linear layer, as the compact model's, so CAM and `features` work.
    """

    def __init__(self, num_classes: int = 4, dropout: float = 0.2, blocks: int = 13):
        super().__init__()
        from torchvision.models import mobilenet_v2

        if not 1 <= blocks <= 16:
            raise OptionError(f"blocks must be 1-16, not {blocks}")
        full = mobilenet_v2()  # random weights; from_imagenet loads the pretrained ones
        full.features[0][0] = nn.Conv2d(1, 32, 3, stride=2, padding=1, bias=False)
        expansion = full.features[blocks + 1].conv[0]  # Conv2dNormActivation 1x1, stride 1
        self.features = nn.Sequential(*full.features[: blocks + 1], expansion)
        width = expansion[0].out_channels
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(width, num_classes)
        )
        self.blocks = blocks

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, 1, H, W) -> logits (N, classes)
        return self.head(self.features(x))

    def from_imagenet(self) -> None:
        """Load torchvision's ImageNet weights into the trunk (the head stays random); see `pretrained`."""
        from tumor_train.pretrained import imagenet_mobilenet_v2

        state = imagenet_mobilenet_v2()
        state["features.0.0.weight"] = state["features.0.0.weight"].sum(1, keepdim=True)  # RGB -> gray stem
        cut = self.blocks + 1
        mine = {}
        for key, value in state.items():
            parts = key.split(".")
            if parts[0] != "features":
                continue
            index = int(parts[1])
            if index < cut:
                mine[key] = value
            elif index == cut and parts[2:4] == ["conv", "0"]:  # the next block's expansion
                mine[".".join(["features", str(cut), *parts[4:]])] = value
        missing = [k for k in self.features.state_dict() if f"features.{k}" not in mine]
        if missing:
            raise RuntimeError(f"ImageNet weights lack {len(missing)} trunk tensors, e.g. {missing[0]}")
        self.load_state_dict(mine, strict=False)


def model_args_for(arch: str, num_classes: int, width: int, dropout: float) -> dict:
    """The constructor arguments stored in checkpoints (alexnet has no width; its dropout is the original 0.5)."""
    if arch == "alexnet":
        return {"num_classes": num_classes}
    if arch == "mobilenet_v2":
        return {"num_classes": num_classes, "dropout": dropout, "blocks": 13}
    return {"num_classes": num_classes, "width": width, "dropout": dropout}


def build_model(arch: str, **model_args) -> nn.Module:
    return globals()[architectures.architecture(arch).module](**model_args)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
