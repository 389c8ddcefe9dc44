"""The stem exported as space-to-depth + a stride-1 convolution (`export/space_to_depth.py`): the same outputs."""

from __future__ import annotations

import onnx
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from tumor_export.onnx_export import check_against_torch, export_fp32, fixed_inputs
from tumor_export.space_to_depth import SpaceToDepthStem, rewritable, with_space_to_depth_stem
from tumor_train.models import build_model


@settings(max_examples=40, deadline=None)
@given(
    stride=st.integers(2, 5),
    extra=st.integers(0, 8),
    padding=st.integers(0, 6),
    size=st.integers(12, 48),
    bias=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_the_rewritten_stem_gives_the_convolution_s_outputs(stride, extra, padding, size, bias, seed):
    kernel = stride + extra
    padding = min(padding, kernel // 2)
    if size + 2 * padding < kernel:
        return  # no output pixel: not a convolution torch runs either
    torch.manual_seed(seed)
    conv = nn.Conv2d(1, 6, kernel, stride=stride, padding=padding, bias=bias).eval()
    x = torch.randn(2, 1, size, size)
    with torch.no_grad():
        expected, got = conv(x), SpaceToDepthStem(conv, size)(x)
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5)


def test_only_a_one_channel_strided_square_convolution_is_rewritten():
    assert rewritable(nn.Conv2d(1, 8, 11, stride=4, padding=5))
    assert not rewritable(nn.Conv2d(3, 8, 11, stride=4, padding=5))  # several input channels
    assert not rewritable(nn.Conv2d(1, 8, 3, stride=1, padding=1))  # stride 1: nothing to gain
    assert not rewritable(nn.Conv2d(1, 8, 5, stride=2, dilation=2))
    assert not rewritable(nn.Conv2d(1, 8, (5, 3), stride=2))
    assert not rewritable(nn.Conv2d(1, 8, 5, stride=2, padding=2, padding_mode="reflect"))


def test_the_model_itself_is_left_as_it_was():
    model = build_model("compact", num_classes=4, width=8).eval()
    stem = model.features[0][0]
    rewritten = with_space_to_depth_stem(model, 64)
    assert model.features[0][0] is stem and isinstance(stem, nn.Conv2d)
    assert isinstance(rewritten.features[0][0], SpaceToDepthStem)
    assert rewritten.features[0][0].conv.weight.data_ptr() != stem.weight.data_ptr()
    plain = nn.Sequential(nn.Conv2d(3, 4, 3))  # no `features`: nothing to rewrite
    assert with_space_to_depth_stem(plain, 16) is plain


@pytest.mark.parametrize("size", [64, 75])  # 75: not a whole number of 4-pixel blocks
def test_the_exported_graph_starts_with_space_to_depth_and_matches_torch(tmp_path, size):
    torch.manual_seed(0)
    model = build_model("compact", num_classes=4, width=8).eval()
    for module in model.modules():  # non-trivial batch-norm statistics, as a trained model has
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    path = tmp_path / "model.onnx"
    export_fp32(model, size, path)
    kinds = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert kinds[:3] == ["Pad", "SpaceToDepth", "Conv"]
    assert check_against_torch(path, model, fixed_inputs(size, count=4)) <= 1e-4
