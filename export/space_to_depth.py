"""The stem convolution exported as space-to-depth + a small stride-1 convolution: the same sums, 3x faster.

The compact model's stem is an 11x11 stride-4 convolution of the one-channel slice. ONNX Runtime's int8 kernel
runs it at a fifth of the speed of the other layers (112 of the network's 340 us per 160 px image at batch 32,
one thread, on an AVX-512 VNNI EPYC): every output pixel gathers 121 single bytes. Cut the padded slice into
4x4 blocks stacked as 16 channels (SpaceToDepth) and the same convolution is a 3x3 one over 16 channels, whose
inputs are contiguous: 35 us, plus 20 for the padding and the rearrangement. The weights are the stem's, zero
where the 12x12 grid of blocks passes the 11x11 kernel, so the outputs are the same up to float rounding (and
the int8 weights exactly the same: a per-channel scale ignores zeros). Only the exported graph changes; the
checkpoint, training and every parity gate stay against the original model.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn


def rewritable(conv: nn.Module) -> bool:
    """A square strided convolution of one input channel: what the space-to-depth form reproduces exactly."""
    return (
        isinstance(conv, nn.Conv2d)
        and conv.in_channels == 1
        and conv.groups == 1
        and conv.dilation == (1, 1)
        and conv.stride[0] == conv.stride[1] > 1
        and conv.kernel_size[0] == conv.kernel_size[1]
        and conv.padding_mode == "zeros"
        and isinstance(conv.padding, tuple)
        and conv.padding[0] == conv.padding[1]
    )


class SpaceToDepthStem(nn.Module):
    """(N, 1, S, S) -> the strided convolution's (N, C, O, O): pad to s x (O + a - 1) pixels, SpaceToDepth by
    the stride s, then an a x a convolution (a = ceil(k / s)) over the s^2 channels."""

    def __init__(self, conv: nn.Conv2d, size: int):
        super().__init__()
        stride, kernel, padding = conv.stride[0], conv.kernel_size[0], int(conv.padding[0])
        blocks = -(-kernel // stride)  # a: kernel taps per block row, rounded up
        out = (size + 2 * padding - kernel) // stride + 1
        padded = stride * (out + blocks - 1)  # the pixels the output reads, a whole number of blocks
        self.stride = stride
        self.padding = (padding, padded - size - padding) * 2  # F.pad's (left, right, top, bottom); may crop
        grid = F.pad(conv.weight.detach(), (0, blocks * stride - kernel) * 2)  # (C, 1, a*s, a*s), zeros past k
        channels = grid.shape[0]
        # tap (a_y*s + b_y, a_x*s + b_x) -> channel b_y*s + b_x (SpaceToDepth's order), position (a_y, a_x)
        weight = grid.reshape(channels, blocks, stride, blocks, stride).permute(0, 2, 4, 1, 3)
        self.conv = nn.Conv2d(stride * stride, channels, blocks, bias=conv.bias is not None)
        with torch.no_grad():
            self.conv.weight.copy_(weight.reshape(channels, stride * stride, blocks, blocks))
            if conv.bias is not None and self.conv.bias is not None:
                self.conv.bias.copy_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, self.padding)  # (N, 1, P, P)
        if torch.onnx.is_in_onnx_export():  # one SpaceToDepth node: the exporter writes pixel_unshuffle as a
            # 6-D Transpose, which ONNX Runtime runs 9x slower on u8 than the conv it feeds
            n, _, h, w = x.shape
            s = self.stride
            x = torch.onnx.ops.symbolic(
                "SpaceToDepth", (x,), {"blocksize": s}, dtype=x.dtype, shape=(n, s * s, h // s, w // s), version=1
            )
        else:
            x = F.pixel_unshuffle(x, self.stride)  # (N, s^2, P/s, P/s), the same channel order for one channel
        return self.conv(x)


def stem_of(model: nn.Module) -> tuple[nn.Sequential, nn.Conv2d] | None:
    """(the Sequential that holds the first convolution at index 0, that convolution) when it is rewritable:
    `features[0][0]` (a conv-bn-relu block, as the compact model and AlexNet have) or `features[0]`."""
    features = getattr(model, "features", None)
    if not isinstance(features, nn.Sequential) or not len(features):
        return None
    first = features[0]
    holder = first if isinstance(first, nn.Sequential) and len(first) else features
    conv = holder[0]
    return (holder, conv) if isinstance(conv, nn.Conv2d) and rewritable(conv) else None


def with_space_to_depth_stem(model: nn.Module, size: int) -> nn.Module:
    """A copy of `model` whose stem (`stem_of`) is a SpaceToDepthStem for `size` px inputs; `model` itself if it
    has no rewritable stem. The copy shares no tensor with `model`."""
    if stem_of(model) is None:
        return model
    copied = copy.deepcopy(model)
    stem = stem_of(copied)
    assert stem is not None  # a copy has the same layers
    stem[0][0] = SpaceToDepthStem(stem[1], size)
    return copied
