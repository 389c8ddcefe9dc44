"""What a run starts from and what its architecture decides: ImageNet weights from the hub cache (never a
download), `--init` from a model.pth, AlexNet's fixed input side; and a quiet, truthful progress line."""

from __future__ import annotations

import shutil
import warnings

import pytest
import torch
from click.testing import CliRunner

from tests.helpers.datasets import make_dataset
from tumor_runtime.core.errors import OptionError
from tumor_runtime.core.fileio import sha256_file
from tumor_train import pretrained
from tumor_train.cli import main
from tumor_train.config import TrainConfig
from tumor_train.dynamic_int8 import quantize_linear
from tumor_train.engine import TrainingState, train_one_epoch
from tumor_train.model_file import load_model
from tumor_train.models import MobileNetV2Trunk, build_model, model_args_for

REAL_WEIGHTS = pretrained.cache_file()
needs_weights = pytest.mark.skipif(
    not REAL_WEIGHTS.is_file(), reason="no ImageNet weights in the hub cache: run tools/pretrained.sh (.ci/run does)"
)


def train(args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line(result):
    assert result.exit_code == 2, result.output
    lines = [line[line.index("Error: ") :] for line in result.output.splitlines() if "Error: " in line]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output  # progress bars may precede it
    return lines[0]


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    return tmp_path / "hub" / "checkpoints"


def test_alexnet_takes_its_own_input_side_when_size_is_not_given(tmp_path):
    """README: `tumor-train --data DIR --arch alexnet --out runs/alexnet` (it failed at 160 px after epoch 0)."""
    data = make_dataset(tmp_path / "data", per_class=6)
    result = train(["--data", data, "--arch", "alexnet", "--epochs", "1", "--out", tmp_path / "a"])
    assert result.exit_code == 0, result.output
    _, ckpt = load_model(tmp_path / "a" / "model.pth")
    assert ckpt["preprocess"]["size"] == 227


def test_alexnet_at_another_size_is_refused_in_one_line_before_training(tmp_path):
    data = make_dataset(tmp_path / "data", per_class=6)
    line = one_line(train(["--data", data, "--arch", "alexnet", "--size", "160", "--out", tmp_path / "a"]))
    assert "--arch alexnet takes 227 px inputs only" in line and "--size 160" in line
    assert not (tmp_path / "a").exists()


def test_the_gray_stem_is_the_rgb_stem_summed_and_the_trunk_is_imagenets(empty_hub):
    """On a gray image the RGB network's first layer sees three equal channels: the summed filter is exactly
    that layer. Every trunk tensor comes from the file; the head stays the random one."""
    if not REAL_WEIGHTS.is_file():
        pytest.skip("no ImageNet weights in the hub cache: run tools/pretrained.sh")
    empty_hub.mkdir(parents=True)
    shutil.copy(REAL_WEIGHTS, empty_hub / REAL_WEIGHTS.name)
    from torchvision.models import MobileNet_V2_Weights, mobilenet_v2

    reference = mobilenet_v2(weights=MobileNet_V2_Weights.IMAGENET1K_V1).eval()
    model = MobileNetV2Trunk(num_classes=4)
    head_before = model.head[-1].weight.clone()
    model.from_imagenet()
    model.eval()
    gray = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        expected_stem = reference.features[0](gray.expand(-1, 3, -1, -1))
        assert torch.allclose(model.features[0](gray), expected_stem, atol=1e-5)
        expected = reference.features[:14](gray.expand(-1, 3, -1, -1))
        expected = reference.features[14].conv[0](expected)  # the next block's expansion ends the trunk
        assert torch.allclose(model.features(gray), expected, atol=1e-4)
    assert torch.equal(model.head[-1].weight, head_before)


def test_missing_weights_stop_the_run_with_the_fix_and_never_download(empty_hub, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("tried to download")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(OptionError, match="never downloads: place them with tumor-train --pretrained-file"):
        MobileNetV2Trunk().from_imagenet()


def test_a_file_with_another_hash_is_not_placed_or_used(empty_hub, tmp_path):
    fake = tmp_path / "mobilenet_v2-b0353104.pth"
    torch.save({"features.0.0.weight": torch.zeros(1)}, fake)
    with pytest.raises(OptionError, match="sha256 does not start b0353104"):
        pretrained.place(fake)
    assert not pretrained.cache_file().exists()
    empty_hub.mkdir(parents=True)
    shutil.copy(fake, pretrained.cache_file())  # put there by hand
    with pytest.raises(OptionError, match="sha256 does not start b0353104"):
        pretrained.imagenet_mobilenet_v2()


@needs_weights
def test_pretrained_file_places_the_weights_and_mobilenet_trains_from_them(empty_hub, tmp_path):
    data = make_dataset(tmp_path / "data", per_class=6)
    result = train(
        [
            "--data",
            data,
            "--arch",
            "mobilenet_v2",
            "--pretrained-file",
            REAL_WEIGHTS,
            "--size",
            "64",
            "--epochs",
            "1",
            "--out",
            tmp_path / "m",
        ]
    )
    assert result.exit_code == 0, result.output
    assert sha256_file(empty_hub / REAL_WEIGHTS.name) == sha256_file(REAL_WEIGHTS)
    model, ckpt = load_model(tmp_path / "m" / "model.pth")
    assert ckpt["arch"] == "mobilenet_v2" and model(torch.zeros(1, 1, 64, 64)).shape == (1, 4)
    assert "ImageNet weights placed at" in result.output


def test_imagenet_is_refused_for_architectures_without_weights(tmp_path):
    data = make_dataset(tmp_path / "data", per_class=6)
    line = one_line(train(["--data", data, "--pretrained", "imagenet", "--out", tmp_path / "c"]))
    assert "no ImageNet weights for --arch compact" in line and "mobilenet_v2" in line


def trained_model(tmp_path, name, classes=None, width="8"):
    data = make_dataset(tmp_path / f"data-{name}", per_class=6, **({"classes": classes} if classes else {}))
    result = train(["--data", data, "--epochs", "1", "--width", width, "--size", "32", "--out", tmp_path / name])
    assert result.exit_code == 0, result.output
    return data, tmp_path / name / "model.pth"


def test_init_starts_from_the_given_weights(tmp_path):
    data, first = trained_model(tmp_path, "first")
    cfg = TrainConfig(data=str(data), width=8, image_size=32, init=str(first))
    args = model_args_for("compact", 4, 8, cfg.dropout)
    state = TrainingState.create(cfg, args, 1, classes=["glioma", "meningioma", "notumor", "pituitary"])
    saved = torch.load(first, weights_only=True)["state_dict"]
    assert all(torch.equal(state.model.state_dict()[k], v) for k, v in saved.items())
    assert all(torch.equal(state.ema.module.state_dict()[k], v) for k, v in saved.items())  # the average too
    result = train(
        ["--data", data, "--epochs", "1", "--width", "8", "--size", "32", "--init", first, "--out", tmp_path / "again"]
    )
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    "change, message",
    [
        (["--width", "12"], "give the same --arch, --width and classes"),
        (["--classes", "glioma,meningioma_x,notumor,pituitary"], "its outputs would be mislabelled"),
    ],
)
def test_init_from_another_architecture_or_classes_is_refused(tmp_path, change, message):
    data, first = trained_model(tmp_path, "first")
    width = change[1] if change[0] == "--width" else "8"
    if change[0] == "--classes":
        data = make_dataset(tmp_path / "other", per_class=6, classes=change[1].split(","))
    line = one_line(
        train(
            [
                "--data",
                data,
                "--epochs",
                "1",
                "--width",
                width,
                "--size",
                "32",
                "--init",
                first,
                "--out",
                tmp_path / "bad",
            ]
        )
    )
    assert message in line and not (tmp_path / "bad" / "model.pth").exists()


class Postfixes:
    def __init__(self):
        self.seen = []

    def update(self, n):
        pass

    def set_postfix(self, **values):
        self.seen.append(values)


def test_the_progress_line_ends_with_the_epochs_own_figures(tmp_path):
    """It showed the first batch's loss and F2 for epochs of under 10 batches."""
    cfg = TrainConfig(width=4, image_size=64, batch_size=2)
    state = TrainingState.create(cfg, model_args_for("compact", 4, 4, 0.1), 3)
    images, labels = torch.randint(0, 255, (12, 64, 64), dtype=torch.uint8), torch.arange(12) % 4
    bar = Postfixes()
    fit = train_one_epoch(state, images, labels, (0.5, 0.25), cfg, False, ["a", "b", "c", "d"], bar)
    assert bar.seen[-1] == {"loss": f"{fit['loss']:.3f}", "f2": f"{fit['f2']:.3f}"}


def test_the_dynamic_int8_copy_warns_nothing():
    """torch 2.14 warned 'quantize_per_tensor ... deprecated' after every training run."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quantize_linear(build_model("compact", num_classes=4, width=8))
    assert [str(w.message) for w in caught] == []


def test_help_lists_every_architecture_and_the_start_options():
    text = train(["--help"]).output
    for needle in ("mobilenet_v2", "alexnet", "--pretrained", "--pretrained-file", "--init"):
        assert needle in text
