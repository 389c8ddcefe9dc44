"""The model registry (`train/models.py`): each architecture's size and shapes, pinned."""

from __future__ import annotations

import pytest
import torch

from tumor_runtime.core.errors import OptionError
from tumor_train.models import build_model, conv_bn, count_parameters, model_args_for


def test_the_shipped_compact_model_has_its_documented_size_and_shapes():
    model = build_model("compact", num_classes=4, width=40).eval()
    assert count_parameters(model) == 894_044  # the model card's figure
    assert model.features(torch.zeros(1, 1, 227, 227)).shape == (1, 320, 13, 13)
    assert model.features(torch.zeros(1, 1, 160, 160)).shape == (1, 320, 9, 9)  # the CAM grid at 160 px
    assert model(torch.zeros(2, 1, 160, 160)).shape == (2, 4)
    assert count_parameters(build_model("compact", num_classes=3, width=8)) == 36_923
    assert isinstance(model.head[0], torch.nn.AdaptiveAvgPool2d) and isinstance(model.head[-1], torch.nn.Linear)


def test_the_reference_alexnet_keeps_its_58m_parameters():
    model = build_model("alexnet", num_classes=4)
    assert count_parameters(model) == 58_274_500
    assert model.features(torch.zeros(1, 1, 227, 227)).shape == (1, 256, 6, 6)
    assert [m.p for m in model.classifier if isinstance(m, torch.nn.Dropout)] == [0.5, 0.5]


def test_dropout_sits_before_the_head_and_follows_the_argument():
    model = build_model("compact", num_classes=4, width=8, dropout=0.2)
    assert model.head[2].p == 0.2 and build_model("compact", num_classes=4, width=8).head[2].p == 0.3
    model.train()
    x = torch.rand(4, 1, 64, 64)
    assert not torch.equal(model(x), model(x))  # dropout is live in training
    model.eval()
    assert torch.equal(model(x), model(x))


def test_conv_bn_keeps_the_side_at_stride_one_and_has_no_conv_bias():
    block = conv_bn(2, 5, 3)
    conv, norm, relu = block
    assert conv.bias is None and conv.padding == (1, 1) and isinstance(norm, torch.nn.BatchNorm2d)
    assert isinstance(relu, torch.nn.ReLU) and norm.num_features == 5
    assert block(torch.rand(1, 2, 10, 10)).shape == (1, 5, 10, 10)
    assert conv_bn(2, 5, 5, stride=2)(torch.rand(1, 2, 10, 10)).shape == (1, 5, 5, 5)
    assert (block.eval()(torch.randn(1, 2, 10, 10)) >= 0).all()


def test_model_args_are_what_each_constructor_takes():
    assert model_args_for("compact", 4, 16, 0.1) == {"num_classes": 4, "width": 16, "dropout": 0.1}
    assert model_args_for("alexnet", 3, 16, 0.1) == {"num_classes": 3}
    assert build_model("alexnet", **model_args_for("alexnet", 3, 16, 0.1)).classifier[-1].out_features == 3


def test_an_unknown_architecture_lists_the_known_ones():
    with pytest.raises(OptionError) as caught:
        build_model("resnet")
    assert str(caught.value) == "unknown architecture 'resnet'; choose one of compact, alexnet, mobilenet_v2"


def reference_compact(model, x):
    """CompactNet's forward written out with torch.nn.functional and the model's own weights (eval mode)."""
    import torch.nn.functional as F

    convs = [m for m in model.features.modules() if isinstance(m, torch.nn.Conv2d)]
    norms = [m for m in model.features.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    strides, pools = [4, 1, 1, 1, 1], [True, True, False, False, False]
    for conv, norm, stride, pool in zip(convs, norms, strides, pools):
        x = F.conv2d(x, conv.weight, None, stride, conv.kernel_size[0] // 2)
        x = F.relu(F.batch_norm(x, norm.running_mean, norm.running_var, norm.weight, norm.bias, False, 0.0, norm.eps))
        if pool:
            x = F.max_pool2d(x, 3, 2)
    return F.linear(x.mean((2, 3)), model.head[-1].weight, model.head[-1].bias)


def reference_alexnet(model, x):
    import torch.nn.functional as F

    convs = [m for m in model.features if isinstance(m, torch.nn.Conv2d)]
    for i, (conv, stride, pad) in enumerate(zip(convs, [4, 1, 1, 1, 1], [0, 2, 1, 1, 1])):
        x = F.relu(F.conv2d(x, conv.weight, conv.bias, stride, pad))
        if i in (0, 1, 4):
            x = F.max_pool2d(x, 3, 2)
    linears = [m for m in model.classifier if isinstance(m, torch.nn.Linear)]
    x = x.flatten(1)
    x = F.relu(F.linear(x, linears[0].weight, linears[0].bias))
    x = F.relu(F.linear(x, linears[1].weight, linears[1].bias))
    return F.linear(x, linears[2].weight, linears[2].bias)


def test_the_forward_passes_are_the_documented_layer_sequences():
    torch.manual_seed(0)
    compact = build_model("compact", num_classes=4, width=4).eval()
    for norm in (m for m in compact.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        norm.running_mean.uniform_(-0.2, 0.2)  # statistics other than the initial ones: they must be used
        norm.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 1, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(compact(x), reference_compact(compact, x), atol=1e-5, rtol=1e-4)
        alexnet = build_model("alexnet", num_classes=3).eval()
        x = torch.randn(1, 1, 227, 227)
        out = alexnet(x)
        assert out.shape == (1, 3)
        torch.testing.assert_close(out, reference_alexnet(alexnet, x), atol=1e-5, rtol=1e-4)
