"""Knowledge distillation: the student also learns the averaged, softened answers of teacher models.

`tumor-train --teacher a/model.pth --teacher b/model.pth ...` (for example the fold models of a
`--cv` run, an ensemble that cross-validation gives for free). Each teacher sees the student's
augmented batch (resized if it was trained at another input size, normalised with its own
statistics); the loss is (1 - w) x cross-entropy + w x T^2 x KL(teachers || student), both at
temperature T (Hinton et al., 2015). Teachers are frozen and run in evaluation mode.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from tumor_runtime.core.errors import OptionError
from tumor_train.model_file import load_model


@dataclass
class Teachers:
    models: list[nn.Module]
    inputs: list[tuple[int, float, float]]  # (input size, mean, std) each teacher was trained with
    temperature: float  # softens both distributions; the KL term is scaled by its square
    weight: float  # share of the distillation term in the loss (0 = plain cross-entropy)

    @classmethod
    def load(
        cls, paths: list[str], crop: str, classes: list[str], temperature: float, weight: float, device: torch.device
    ) -> Teachers:
        """Rebuild each model.pth; OptionError if one was trained on other classes or another crop."""
        models, inputs = [], []
        for path in paths:
            model, ckpt = load_model(Path(path))
            pre = ckpt["preprocess"]
            if ckpt["classes"] != classes:
                raise OptionError(f"teacher {path} knows the classes {ckpt['classes']}, not {classes}")
            trained_crop = pre.get("crop", "none")  # checkpoints from before the brain crop saw whole frames
            if trained_crop != crop:
                raise OptionError(
                    f"teacher {path} was trained with crop {trained_crop!r}, this run uses "
                    f"{crop!r}: teachers must see the slice as the student does"
                )
            bad = next(
                (
                    name
                    for name, t in model.state_dict().items()
                    if t.is_floating_point() and not torch.isfinite(t).all()
                ),
                None,
            )
            if bad is not None:  # the student would learn NaN from it and the run would still end "done"
                raise OptionError(f"teacher {path} has non-finite weights ({bad}): it cannot teach")
            if not all(math.isfinite(float(pre[k])) for k in ("mean", "std")) or float(pre["std"]) <= 0:
                raise OptionError(
                    f"teacher {path} has an unusable normalisation (mean {pre['mean']}, std {pre['std']})"
                )
            models.append(model.to(device).to(memory_format=torch.channels_last).eval().requires_grad_(False))
            inputs.append((int(pre["size"]), float(pre["mean"]), float(pre["std"])))
        return cls(models, inputs, temperature, weight)

    @torch.no_grad()
    def soft_targets(self, warped: torch.Tensor) -> torch.Tensor:
        """Augmented batch in [0, 1] (N, 1, H, W) -> the teachers' mean softened probabilities (N, classes)."""
        probabilities = []
        for model, (size, mean, std) in zip(self.models, self.inputs):
            x = (
                warped
                if warped.shape[-1] == size
                else F.interpolate(warped, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
            )
            x = ((x - mean) / std).contiguous(memory_format=torch.channels_last)
            probabilities.append(torch.softmax(model(x).float() / self.temperature, 1))
        return torch.stack(probabilities).mean(0)

    def blend(self, hard_loss: torch.Tensor, logits: torch.Tensor, warped: torch.Tensor) -> torch.Tensor:
        """(1 - w) x the cross-entropy + w x T^2 x KL(teachers || student) on the same batch."""
        soft = self.soft_targets(warped)
        kl = F.kl_div(F.log_softmax(logits / self.temperature, 1), soft, reduction="batchmean")
        return (1 - self.weight) * hard_loss + self.weight * self.temperature**2 * kl
