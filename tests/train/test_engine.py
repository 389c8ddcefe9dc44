"""`train/engine.py`, `train/cv.py` and the augmentation: the training loop's decisions, tested by behaviour.

Each test names the wrong answer it guards against: warm-up counted in steps, a swapped weight
average, evaluation in training mode or with augmentation, folds that validate on their own
training images, augmentation that pads with the border instead of black.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tests.helpers.datasets import CLASSES, make_dataset
from tumor_runtime.core.scoring import summarize
from tumor_train import cv, engine
from tumor_train.config import TrainConfig
from tumor_train.data import augment, to_input
from tumor_train.engine import (
    TrainingState,
    autocast,
    cpu_state,
    ema_update,
    evaluate,
    lr_lambda,
    predict,
    train_one_epoch,
)
from tumor_train.model_file import CheckpointError, save_atomic
from tumor_train.models import build_model, model_args_for


def test_warm_up_lasts_its_epochs_then_the_cosine_ends_at_zero():
    steps_per_epoch = 10
    factor = lr_lambda(TrainConfig(epochs=6, warmup_epochs=2.0), steps_per_epoch)
    warm_up = [factor(s) for s in range(20)]  # 2 epochs x 10 steps
    assert warm_up == pytest.approx([(s + 1) / 20 for s in range(20)])  # linear over the 20 steps, not 2
    assert factor(20) == pytest.approx(1.0)  # the peak, where the cosine starts
    assert factor(40) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))  # half-way through the decay
    assert factor(60) == pytest.approx(0.0, abs=1e-12) and factor(10_000) == pytest.approx(0.0, abs=1e-12)
    decay = [factor(s) for s in range(20, 61)]
    assert all(a >= b for a, b in zip(decay, decay[1:]))  # never rises again


def test_the_weight_average_moves_a_little_towards_the_current_weights():
    update = ema_update(0.998)
    average, current = torch.full((3,), 1.0), torch.full((3,), 0.0)
    late = update(average, current, 10_000)  # past the EMA's own warm-up: the configured decay
    assert torch.allclose(late, torch.full((3,), 0.998))
    early = update(average, current, 0)  # first step: decay (1 + 0) / (10 + 0) = 0.1, mostly the current weights
    assert torch.allclose(early, torch.full((3,), 0.1))


class NoisyInTraining(nn.Module):
    """Dropout and batch norm: a different answer in training mode than in evaluation mode."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 4, 3),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Dropout(0.5),
            nn.Linear(4, 4),
        )

    def forward(self, x):
        return self.body(x)


def test_evaluation_runs_the_model_in_eval_mode_on_unaugmented_inputs():
    torch.manual_seed(0)
    model = NoisyInTraining()
    model.train()
    with torch.no_grad():  # batch-norm statistics that differ from the defaults
        model(torch.randn(16, 1, 12, 12) * 3 + 1)
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (10, 12, 12), dtype=np.uint8))
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, 0, 1])
    stats, probs = evaluate(model, images, labels, 0.4, 0.2, ["a", "b", "c", "d"])
    model.eval()
    with torch.no_grad():
        expected = torch.softmax(model(to_input(images, 0.4, 0.2)), 1).numpy()
    np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-6)
    again = predict(model.train(), images, 0.4, 0.2).numpy()  # called from training mode: the same answer
    np.testing.assert_allclose(again, expected, rtol=1e-5, atol=1e-6)
    assert stats["loss"] == pytest.approx(
        float(nn.functional.cross_entropy(torch.log(torch.from_numpy(expected)), labels)), rel=1e-4
    )


def test_augmentation_pads_with_black_whatever_the_border():
    white = torch.ones(8, 1, 32, 32)
    generator = torch.Generator().manual_seed(0)
    shifted = augment(white, generator, rotation=0.0, translate=0.3, scale=0.0, hflip=0.0)
    # A 30 % shift uncovers a good part of the frame, and it is black: border or reflection padding would
    # repeat the white edge and leave no black pixel at all.
    assert (shifted == 0).float().mean() > 0.1
    rotated = augment(white, torch.Generator().manual_seed(1), rotation=45.0, translate=0.0, scale=0.0, hflip=0.0)
    corners = rotated[:, 0, [0, 0, -1, -1], [0, -1, 0, -1]]
    assert corners.max() < 0.05  # a 45-degree turn exposes the corners: black there too (some turns are small)


def test_augmentation_keeps_black_black_and_stays_in_range():
    batch = torch.rand(6, 1, 24, 24)
    batch[:, :, :4] = 0
    out = augment(batch, torch.Generator().manual_seed(2), rotation=0, translate=0, scale=0, hflip=0, intensity=0.3)
    assert out.min() >= 0 and out.max() <= 1
    assert out[:, :, :3].max() < 1e-4  # gamma and contrast leave the background black


def test_every_fold_trains_without_its_validation_images_and_each_image_is_validated_once(tmp_path, monkeypatch):
    data = make_dataset(tmp_path / "data", per_class=6)
    seen = []

    def fake_train_on(cfg, prepared, place=None, **kwargs):
        seen.append(prepared)
        labels = prepared.val.labels
        return {"validation": summarize(labels, labels, prepared.classes) | {"n_images": len(labels)}, "best_epoch": 1}

    monkeypatch.setattr(cv, "train_on", fake_train_on)
    monkeypatch.setattr(cv, "plot_cv", lambda records, path: None)
    cv.run_cv(replace(TrainConfig(), data=str(data), out=str(tmp_path / "cv"), image_size=32, width=8), 3)
    assert len(seen) == 3
    validated = []
    for fold in seen:
        train_files, val_files = set(map(str, fold.train.paths)), set(map(str, fold.val.paths))
        assert train_files and val_files and not train_files & val_files
        assert len(train_files | val_files) == 24
        assert sorted(fold.val_files) == sorted(str(Path(p).relative_to(data)) for p in val_files)
        validated += sorted(val_files)
    assert sorted(validated) == sorted(str(p) for p in data.rglob("*.jpg"))  # each image once, none twice


def test_a_built_model_is_what_the_checkpoint_rebuilds():
    model = build_model("compact", num_classes=4, width=8, dropout=0.1)
    twin = build_model("compact", num_classes=4, width=8, dropout=0.1)
    twin.load_state_dict(model.state_dict())
    x = torch.randn(2, 1, 64, 64)
    assert torch.equal(model.eval()(x), twin.eval()(x))


def test_the_exported_weights_are_the_average_not_the_last_step(dataset, tmp_path):
    """model.pth holds the weight average (EMA) of the best epoch, which differs from the raw weights."""
    from click.testing import CliRunner

    from tumor_train.cli import main

    out = tmp_path / "o"
    result = CliRunner().invoke(
        main,
        [
            "--data",
            str(dataset),
            "--out",
            str(out),
            "--epochs",
            "2",
            "--width",
            "8",
            "--size",
            "64",
            "--val-fraction",
            "0",
            "--batch-size",
            "4",
        ],
    )
    assert result.exit_code == 0, result.output
    state = torch.load(out / "checkpoint.pth", weights_only=True)
    shipped = torch.load(out / "model.pth", weights_only=True)["state_dict"]
    average = {k.removeprefix("module."): v for k, v in state["ema"].items() if k != "n_averaged"}
    assert shipped.keys() == average.keys()
    assert all(torch.equal(shipped[k], average[k]) for k in shipped)
    raw = state["model"]
    assert any(not torch.equal(shipped[k], raw[k]) for k in shipped if shipped[k].is_floating_point())


def test_each_epoch_validates_the_weight_average_that_is_shipped(dataset, tmp_path):
    """The history's validation loss of the chosen epoch is the shipped model's validation loss: epochs are
    scored on the weight average, the same weights that are selected and written."""
    import json

    from click.testing import CliRunner

    from tumor_train.cli import main

    out = tmp_path / "o"
    result = CliRunner().invoke(
        main,
        [
            "--data",
            str(dataset),
            "--out",
            str(out),
            "--epochs",
            "2",
            "--width",
            "8",
            "--size",
            "64",
            "--batch-size",
            "4",
        ],
    )  # steps enough for EMA != raw
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    chosen = next(row for row in metrics["history"] if row["epoch"] == metrics["best_epoch"])
    assert chosen["val_loss"] == pytest.approx(metrics["validation"]["loss"], rel=1e-5)


# The training state and one epoch, in-process on a tiny model.


def tiny_state(**changes):
    settings = {"width": 4, "epochs": 3, "batch_size": 4, "lr": 0.01, "weight_decay": 0.1, "seed": 3}
    cfg = replace(TrainConfig(), **(settings | changes))
    args = model_args_for("compact", 4, 4, 0.1)
    return cfg, args, TrainingState.create(cfg, args, steps_per_epoch=2)


def test_bf16_is_used_only_where_the_cpu_says_it_has_it(monkeypatch, tmp_path):
    fake = tmp_path / "cpuinfo"
    real_open = open

    def opening(text):
        fake.write_text(text)
        monkeypatch.setattr(
            "builtins.open", lambda path, *a, **k: real_open(fake if path == "/proc/cpuinfo" else path, *a, **k)
        )

    # torch's kernels as on such a CPU (this test runs on AVX2-only machines too, where torch says "AVX2")
    monkeypatch.setattr(engine.torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    opening("flags\t: fpu avx2 avx512_bf16 sse\n")
    assert engine.cpu_has_native_bf16()
    opening("flags\t: fpu avx2 amx_bf16\n")
    assert engine.cpu_has_native_bf16()
    opening("flags\t: fpu avx2 avx512f\n")
    assert not engine.cpu_has_native_bf16()
    monkeypatch.setattr("builtins.open", lambda *a, **k: (_ for _ in ()).throw(OSError()))
    assert not engine.cpu_has_native_bf16()
    opening("flags\t: fpu avx2 avx512_bf16 sse\n")
    monkeypatch.setattr(engine.torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")  # ATEN_CPU_CAPABILITY=avx2
    assert not engine.cpu_has_native_bf16()


def test_autocast_is_bf16_when_enabled_and_nothing_otherwise():
    with autocast(True):
        assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.bfloat16
    with autocast(False):
        assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.float32


def test_a_cpu_state_is_a_detached_copy():
    weights = torch.ones(3, requires_grad=True)
    copy = cpu_state({"w": weights, "step": 4})
    with torch.no_grad():
        weights.add_(1)
    assert copy["w"].tolist() == [1.0, 1.0, 1.0] and not copy["w"].requires_grad and copy["step"] == 4


def test_the_state_starts_from_the_config():
    cfg, args, state = tiny_state()
    assert state.model_args == args and state.trainer is state.model and state.teachers is None
    group = state.optimizer.param_groups[0]
    assert isinstance(state.optimizer, torch.optim.AdamW) and group["weight_decay"] == 0.1
    assert group["lr"] == pytest.approx(0.01 * lr_lambda(cfg, 2)(0))
    assert state.model.features[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    assert state.generator.initial_seed() == 3
    assert all(
        torch.equal(a, b) for a, b in zip(state.ema.module.state_dict().values(), state.model.state_dict().values())
    )


def test_one_epoch_trains_updates_the_average_and_reports_its_batches():
    cfg, args, state = tiny_state()
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (10, 32, 32), dtype=np.uint8))
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, 0, 1])
    before = {k: v.clone() for k, v in state.model.state_dict().items()}

    class Bar:
        def __init__(self):
            self.steps, self.postfix = 0, []

        def update(self, n):
            self.steps += n

        def set_postfix(self, **values):
            self.postfix.append(values)

    bar = Bar()
    result = train_one_epoch_of(state, images, labels, cfg, bar)
    assert bar.steps == 3 and len(bar.postfix) == 1 and set(bar.postfix[0]) == {"loss", "f2"}  # batches of 4, 4, 2
    assert set(result) == {"loss", "accuracy", "f2"} and result["loss"] > 0 and 0 <= result["accuracy"] <= 1
    assert state.scheduler.last_epoch == 3 and state.ema.n_averaged.item() == 3
    changed = [
        k for k, v in state.model.state_dict().items() if v.dtype.is_floating_point and not torch.equal(v, before[k])
    ]
    assert changed and not torch.equal(state.ema.module.features[0][0].weight, state.model.features[0][0].weight)


def train_one_epoch_of(state, images, labels, cfg, bar=None):
    return train_one_epoch(state, images, labels, (0.4, 0.2), cfg, False, ["a", "b", "c", "d"], bar)


def test_the_same_seed_gives_the_same_epoch_and_another_seed_another():
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (8, 32, 32), dtype=np.uint8))
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    runs = []
    for seed in (3, 3, 4):
        torch.manual_seed(0)
        cfg, _, state = tiny_state(seed=seed)
        train_one_epoch_of(state, images, labels, cfg)
        runs.append(state.model.features[0][0].weight.detach().clone())
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])


def test_a_resume_restores_everything_and_refuses_other_model_options(tmp_path):
    cfg, args, state = tiny_state()
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (8, 32, 32), dtype=np.uint8))
    train_one_epoch_of(state, images, torch.tensor([0, 1, 2, 3] * 2), cfg)
    save_atomic(
        state.checkpoint(cfg, 1, [{"epoch": 1}], {"epoch": 1, "f2": 0.5, "state_dict": None}, CLASSES),
        tmp_path / "checkpoint.pth",
    )
    saved = torch.load(tmp_path / "checkpoint.pth", weights_only=True)
    assert saved["arch"] == "compact" and saved["model_args"] == args and saved["world_size"] == 1
    _, _, fresh = tiny_state()
    epoch, history, best = fresh.restore(tmp_path / "checkpoint.pth", cfg, CLASSES)
    assert (epoch, history, best["f2"]) == (1, [{"epoch": 1}], 0.5)
    assert torch.equal(fresh.model.features[0][0].weight, state.model.features[0][0].weight)
    assert fresh.scheduler.last_epoch == state.scheduler.last_epoch
    assert torch.equal(fresh.generator.get_state(), state.generator.get_state())
    wider = model_args_for("compact", 4, 8, 0.1)
    other = TrainingState.create(replace(cfg, width=8), wider, 2)
    with pytest.raises(CheckpointError) as caught:
        other.restore(tmp_path / "checkpoint.pth", replace(cfg, width=8), CLASSES)
    assert str(caught.value) == (
        f"{tmp_path / 'checkpoint.pth'} was trained as compact {args}, not compact {wider}: "
        "resume with the same model options"
    )
    renamed = ["astrocytoma", *CLASSES[1:]]  # a class folder renamed between the start and the resume
    with pytest.raises(CheckpointError, match="was trained on the classes .*but --data has .*astrocytoma"):
        tiny_state()[2].restore(tmp_path / "checkpoint.pth", cfg, renamed)
    broken = saved | {"optimizer": {"state": {}, "param_groups": []}}
    save_atomic(broken, tmp_path / "checkpoint.pth")
    with pytest.raises(CheckpointError, match="does not match this model: "):
        tiny_state()[2].restore(tmp_path / "checkpoint.pth", cfg, CLASSES)


def test_predict_of_nothing_is_empty_and_batches_do_not_change_answers():
    model = build_model("compact", num_classes=4, width=4).eval()
    images = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (5, 32, 32), dtype=np.uint8))
    whole = predict(model, images, 0.4, 0.2)
    torch.testing.assert_close(predict(model, images, 0.4, 0.2, batch_size=2), whole)
    assert whole.shape == (5, 4) and torch.allclose(whole.sum(1), torch.ones(5))
    assert predict(model, images[:0], 0.4, 0.2).numel() == 0


def test_an_epoch_feeds_the_normalised_batches_and_reports_the_mean_loss_per_image(monkeypatch):
    """Without augmentation the model sees (image / 255 - mean) / std of each image once; the epoch's loss is the
    per-image mean of its batch losses (batches of 4, 4 and 2)."""
    cfg, _, state = tiny_state(rotation=0, translate=0, scale=0, hflip=0, intensity=0)
    images = torch.arange(10, dtype=torch.uint8).mul(20).view(10, 1, 1).expand(10, 32, 32).contiguous()
    seen, losses = [], []
    state.trainer.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    real_loss = nn.CrossEntropyLoss

    class RecordedLoss(real_loss):
        def forward(self, logits, target):
            loss = super().forward(logits, target)
            losses.append((loss.item(), len(target)))
            return loss

    monkeypatch.setattr(engine.nn, "CrossEntropyLoss", RecordedLoss)
    result = train_one_epoch_of(state, images, torch.tensor([0, 1, 2, 3] * 2 + [0, 1]), cfg)
    values = sorted(round(float(x.mean()), 4) for batch in seen for x in batch)
    assert values == sorted(round((20 * i / 255 - 0.4) / 0.2, 4) for i in range(10))
    assert [n for _, n in losses] == [4, 4, 2]
    assert result["loss"] == pytest.approx(sum(v * n for v, n in losses) / 10, rel=1e-6)


def test_a_checkpoint_without_its_arch_field_is_judged_by_its_config(tmp_path):
    """Older checkpoints keep the architecture only inside their config: a resume reads it from there."""
    cfg, _, state = tiny_state()
    saved = state.checkpoint(cfg, 1, [], {"epoch": 1, "f2": 0.5, "state_dict": None}, CLASSES)
    del saved["arch"]
    save_atomic(saved, tmp_path / "checkpoint.pth")
    assert tiny_state()[2].restore(tmp_path / "checkpoint.pth", cfg, CLASSES)[0] == 1
    saved["config"]["arch"] = "alexnet"
    save_atomic(saved, tmp_path / "checkpoint.pth")
    with pytest.raises(CheckpointError, match=r"was trained as alexnet "):
        tiny_state()[2].restore(tmp_path / "checkpoint.pth", cfg, CLASSES)


def test_the_state_s_average_is_the_warmed_up_ema():
    """The second update of a fresh average weighs the old weights by (1 + 1) / (10 + 1), not 1/2 as a plain mean."""
    cfg, _, state = tiny_state()
    state.ema.update_parameters(state.model)  # the first update copies the weights
    first = state.ema.module.features[0][0].weight.detach().clone()
    with torch.no_grad():
        state.model.features[0][0].weight.add_(1.0)
    state.ema.update_parameters(state.model)
    torch.testing.assert_close(state.ema.module.features[0][0].weight, first + 1.0 - 2 / 11)


def test_an_epoch_with_teachers_blends_each_batch_loss_with_their_answer():
    cfg, _, state = tiny_state(rotation=0, translate=0, scale=0, hflip=0, intensity=0)
    calls = []

    class Teachers:
        def blend(self, hard, logits, warped):
            calls.append(
                (logits.dtype, tuple(logits.shape), tuple(warped.shape), float(warped.min()), float(warped.max()))
            )
            return hard * 0 + 5.0

    state.teachers = Teachers()
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (8, 32, 32), dtype=np.uint8))
    result = train_one_epoch_of(state, images, torch.tensor([0, 1, 2, 3] * 2), cfg)
    assert [c[:3] for c in calls] == [(torch.float32, (4, 4), (4, 1, 32, 32))] * 2
    assert all(0.0 <= low and high <= 1.0 for *_, low, high in calls)  # the augmented batch in [0, 1]
    assert result["loss"] == pytest.approx(5.0)


def test_under_ddp_the_step_calls_the_wrapper_around_the_model(monkeypatch):
    """A gloo group of one process stands in for torchrun: the state wraps the CPU model in DDP (no device ids)."""
    from tests.helpers.processes import free_port
    from tumor_train.distributed import Placement

    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        cfg = replace(TrainConfig(), width=4, batch_size=4)
        place = Placement(torch.device("cpu"), world=2)
        state = TrainingState.create(cfg, model_args_for("compact", 4, 4, 0.1), 2, place)
        assert isinstance(state.trainer, nn.parallel.DistributedDataParallel) and state.trainer.module is state.model
        assert state.trainer.device_ids is None
    finally:
        torch.distributed.destroy_process_group()
