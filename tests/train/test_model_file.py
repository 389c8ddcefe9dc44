"""The files later stages read (`train/model_file.py`, `train/dynamic_int8.py`): rebuilt from the file alone,
refused in one line when they cannot be trusted."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.checkpoints import model_checkpoint
from tumor_train import model_file
from tumor_train.dynamic_int8 import load_quantized, save_quantized
from tumor_train.model_file import (
    CheckpointError,
    check_labels,
    load_file,
    load_model,
    read_checkpoint,
    save_atomic,
)
from tumor_train.models import build_model


def test_a_model_is_rebuilt_from_its_file_in_evaluation_mode(tmp_path):
    path = model_checkpoint(tmp_path / "model.pth", seed=3)
    model, ckpt = load_model(path)
    assert not model.training and ckpt["preprocess"]["size"] == 32
    torch.manual_seed(3)
    twin = build_model("compact", **ckpt["model_args"]).eval()
    x = torch.rand(2, 1, 32, 32)
    assert torch.equal(model(x), twin(x))


def test_save_atomic_round_trips_and_leaves_only_the_file(tmp_path):
    save_atomic({"a": torch.arange(3)}, tmp_path / "x.pth")
    assert torch.equal(torch.load(tmp_path / "x.pth", weights_only=True)["a"], torch.arange(3))
    assert [p.name for p in tmp_path.iterdir()] == ["x.pth"]


def test_missing_and_unreadable_files_are_one_line(tmp_path):
    with pytest.raises(CheckpointError) as caught:
        load_file(tmp_path / "absent.pth")
    assert str(caught.value) == (
        f"checkpoint {tmp_path / 'absent.pth'} does not exist; train one with tumor-train or pass --checkpoint"
    )
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match=r"junk.pth is not a readable torch checkpoint \(\w+\)$"):
        load_file(tmp_path / "junk.pth")
    save_atomic({"format": "other"}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError) as caught:
        load_file(tmp_path / "other.pth")
    assert (
        str(caught.value)
        == f"{tmp_path / 'other.pth'} is not a tumor-kit model checkpoint (format {model_file.FORMAT} expected)"
    )


def test_pickled_code_is_never_run(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("ran",))

    torch.save({"format": model_file.FORMAT, "x": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="is not a readable torch checkpoint"):
        load_file(tmp_path / "evil.pth")


def test_read_checkpoint_needs_every_part_of_the_training_state(tmp_path):
    with pytest.raises(CheckpointError) as caught:
        read_checkpoint(tmp_path / "checkpoint.pth")
    assert str(caught.value) == f"nothing to resume: {tmp_path / 'checkpoint.pth'} does not exist"
    state = {
        k: {} for k in ("epoch", "config", "model", "ema", "optimizer", "scheduler", "generator", "history", "best")
    }
    save_atomic(state, tmp_path / "checkpoint.pth")
    assert read_checkpoint(tmp_path / "checkpoint.pth") == state
    for broken in ({k: v for k, v in state.items() if k != "best"}, state | {"config": []}, [1, 2]):
        save_atomic(broken, tmp_path / "checkpoint.pth")
        with pytest.raises(CheckpointError) as caught:
            read_checkpoint(tmp_path / "checkpoint.pth")
        assert str(caught.value) == f"{tmp_path / 'checkpoint.pth'} is not a tumor-train resumable checkpoint"


def test_a_state_dict_that_does_not_fit_its_architecture_is_named(tmp_path):
    path = model_checkpoint(tmp_path / "model.pth")
    ckpt = torch.load(path, weights_only=True)
    save_atomic(ckpt | {"model_args": ckpt["model_args"] | {"width": 8}}, path)
    with pytest.raises(CheckpointError, match=r"model.pth does not match its architecture: Error\(s\) in loading"):
        load_model(path)
    save_atomic(ckpt | {"arch": "resnet"}, path)
    with pytest.raises(CheckpointError, match="does not match its architecture: unknown architecture 'resnet'"):
        load_model(path)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"classes": ["a"]}, "lists no valid class names (['a'])"),
        ({"classes": ["a", "a", "b", "c"]}, "lists no valid class names (['a', 'a', 'b', 'c'])"),
        ({"classes": ["a", "", "b", "c"]}, "lists no valid class names (['a', '', 'b', 'c'])"),
        ({"classes": "abcd"}, "lists no valid class names ('abcd')"),
        (
            {"negative_class": "healthy"},
            ": its negative class 'healthy' is not one of its classes ['glioma', 'meningioma', 'notumor', 'pituitary']",
        ),
        ({"preprocess": {"size": 32, "mean": 0.2}}, " has no preprocessing record (size, mean, std)"),
        ({"preprocess": None}, " has no preprocessing record (size, mean, std)"),
        ({"classes": ["glioma", "meningioma", "notumor"]}, " names 3 classes but the model gives 4 outputs"),
    ],
)
def test_labels_the_runtime_could_not_trust_are_refused(tmp_path, change, message):
    path = model_checkpoint(tmp_path / "model.pth")
    model, ckpt = load_model(path)
    with pytest.raises(CheckpointError) as caught:
        check_labels(path, model, ckpt | change)
    assert str(caught.value) == f"{path}{' ' if message[0] not in ' :' else ''}{message}"


def test_dynamic_int8_round_trip_quantizes_the_linear_layer_and_answers_alike(tmp_path):
    model, ckpt = load_model(model_checkpoint(tmp_path / "model.pth", seed=1))
    save_quantized(model, "compact", ckpt["model_args"], tmp_path / "q.pth")
    quantized = load_quantized(tmp_path / "q.pth")
    assert not quantized.training
    kinds = {type(m).__name__ for m in quantized.modules()}
    assert "Linear" in kinds and any(
        type(m).__module__.startswith("torch.ao.nn.quantized.dynamic") for m in quantized.modules()
    )
    x = torch.rand(4, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(quantized(x), model(x), atol=0.05)
    save_atomic({"format": "other"}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError) as caught:
        load_quantized(tmp_path / "bad.pth")
    assert str(caught.value) == f"{tmp_path / 'bad.pth'} is not a tumor-kit dynamic-int8 model"


def test_unreadable_files_name_the_kind_of_file_and_the_error(tmp_path):
    (tmp_path / "checkpoint.pth").write_bytes(b"junk")
    with pytest.raises(CheckpointError) as caught:
        read_checkpoint(tmp_path / "checkpoint.pth")
    assert str(caught.value) == f"{tmp_path / 'checkpoint.pth'} is not a readable training checkpoint (error)"
    (tmp_path / "model.pth").write_bytes(b"junk")
    with pytest.raises(CheckpointError) as caught:
        load_file(tmp_path / "model.pth")
    assert str(caught.value) == f"{tmp_path / 'model.pth'} is not a readable torch checkpoint (error)"


def test_a_label_problem_found_at_load_names_the_file(tmp_path):
    path = model_checkpoint(tmp_path / "model.pth")
    save_atomic(torch.load(path, weights_only=True) | {"negative_class": "healthy"}, path)
    with pytest.raises(CheckpointError, match=f"^{path}: its negative class 'healthy'"):
        load_model(path)


def test_two_classes_are_enough(tmp_path):
    model, ckpt = load_model(model_checkpoint(tmp_path / "model.pth", classes=("notumor", "tumor")))
    assert ckpt["classes"] == ["notumor", "tumor"] and model(torch.zeros(1, 1, 32, 32)).shape == (1, 2)


def test_a_quantized_file_with_pickled_code_is_refused_before_running_it(tmp_path, capsys):
    class Payload:
        def __reduce__(self):
            return (print, ("payload ran",))

    torch.save({"format": "tumor-kit/dynamic-int8-v1", "x": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(Exception):
        load_quantized(tmp_path / "evil.pth")
    assert "payload ran" not in capsys.readouterr().out


def test_quantizing_leaves_the_model_passed_in_untouched(tmp_path):
    from tumor_train.dynamic_int8 import quantize_linear

    model, _ = load_model(model_checkpoint(tmp_path / "model.pth"))
    model.train()  # a model still training (e.g. the trainer writing its int8 copy) must stay in training mode
    before = {k: v.clone() for k, v in model.state_dict().items()}
    quantized = quantize_linear(model)
    assert all(m.training for m in model.modules()) and not quantized.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
