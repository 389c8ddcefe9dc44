"""Cross-validation's bookkeeping (`train/cv.py`) with a stand-in for training: folds, summary, resume, plot."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.datasets import make_dataset
from tumor_runtime.core.errors import UsageError
from tumor_runtime.core.scoring import summarize
from tumor_train import cv
from tumor_train.config import TrainConfig
from tumor_train.data import DataError
from tumor_train.plots import plt


def record(fold, f2, accuracy=0.9, sensitivity=1.0, best=3):
    return {
        "fold": fold,
        "best_epoch": best,
        "validation_images": 10,
        "f2_macro": f2,
        "accuracy": accuracy,
        "tumor_sensitivity": sensitivity,
    }


def test_fold_record_takes_the_validation_figures_and_the_best_epoch():
    metrics = {
        "best_epoch": 7,
        "validation": {"n_images": 12, "f2_macro": 0.5, "accuracy": 0.25, "tumor_sensitivity": None, "other": 1},
    }
    assert cv.fold_record(2, metrics) == {
        "fold": 2,
        "best_epoch": 7,
        "validation_images": 12,
        "f2_macro": 0.5,
        "accuracy": 0.25,
        "tumor_sensitivity": None,
    }


def test_load_failures_name_the_training_split(tmp_path, fake_training):
    data = make_dataset(tmp_path / "data", per_class=4)
    for path in (data / "pituitary").iterdir():
        path.write_bytes(b"junk")
    cfg = replace(TrainConfig(), data=str(data), out=str(tmp_path / "cv"), image_size=32, width=8)
    with pytest.warns(UserWarning), pytest.raises(DataError, match="^no readable train images for class pituitary"):
        cv.run_cv(cfg, 2)


def test_the_folds_follow_the_seed(tmp_path, fake_training):
    data = make_dataset(tmp_path / "data", per_class=6)
    for seed in (0, 0, 1):
        cv.run_cv(
            replace(
                TrainConfig(),
                data=str(data),
                out=str(tmp_path / f"cv{len(fake_training)}"),
                image_size=32,
                width=8,
                seed=seed,
            ),
            2,
        )
    first, again, other = ([str(p) for p in prepared.val.paths] for _, prepared, _ in fake_training[::2])
    assert first == again and first != other


def test_summary_is_mean_and_sample_std_skipping_missing_values():
    folds = [
        record(1, 0.9, sensitivity=None, best=2),
        record(2, 0.8, sensitivity=0.5, best=4),
        record(3, 0.7, sensitivity=None, best=6),
    ]
    summary = cv.summarize_folds(folds)
    assert summary["f2_macro"] == {"mean": pytest.approx(0.8), "std": pytest.approx(0.1)}
    assert summary["best_epoch"] == {"mean": 4.0, "std": 2.0}
    assert summary["tumor_sensitivity"] == {"mean": 0.5, "std": 0.0}  # one value: no spread
    assert set(summary) == {"f2_macro", "accuracy", "tumor_sensitivity", "best_epoch"}
    none = cv.summarize_folds([record(1, 0.9, sensitivity=None)])
    assert none["tumor_sensitivity"] == {"mean": None, "std": 0.0}


def test_check_folds_names_the_fold_without_validation_or_without_a_class():
    labels = np.array([0, 0, 1, 1])
    cv.check_folds([(np.array([0, 2]), np.array([1, 3])), (np.array([1, 3]), np.array([0, 2]))], labels, ["a", "b"])
    with pytest.raises(DataError) as caught:
        cv.check_folds([(np.array([0, 2]), np.array([1, 3])), (np.array([0, 1]), np.array([2, 3]))], labels, ["a", "b"])
    assert str(caught.value) == (
        "2-fold cross-validation needs more images: fold 2 would have 2 validation images "
        "and no training image of b; use fewer folds"
    )
    with pytest.raises(DataError) as caught:
        cv.check_folds([(np.array([0, 1, 2, 3]), np.array([], int))], labels, ["a", "b"])
    assert str(caught.value) == (
        "1-fold cross-validation needs more images: fold 1 would have 0 validation images; use fewer folds"
    )


@pytest.fixture
def fake_training(monkeypatch):
    """train_on replaced by a stand-in that scores each fold perfectly; the list of (config, data, placement)
    it was called with."""
    calls = []

    def fake_train_on(cfg, prepared, place=None, resume=False):
        calls.append((cfg, prepared, place))
        assert resume == (Path(cfg.out) / "checkpoint.pth").is_file()
        labels = prepared.val.labels
        return {
            "validation": summarize(labels, labels, prepared.classes) | {"n_images": len(labels)},
            "best_epoch": len(calls),
        }

    monkeypatch.setattr(cv, "train_on", fake_train_on)
    return calls


def test_run_cv_trains_each_fold_into_its_folder_and_writes_the_report(tmp_path, fake_training, capsys):
    data = make_dataset(tmp_path / "data", per_class=6)
    cfg = replace(TrainConfig(), data=str(data), out=str(tmp_path / "cv"), image_size=32, width=8)
    report = cv.run_cv(cfg, 3)
    assert [c.out for c, _, _ in fake_training] == [str(tmp_path / "cv" / f"fold-{k}") for k in (1, 2, 3)]
    for k, (_, prepared, _) in enumerate(fake_training, start=1):
        assert prepared.info == {"train_dir": str(data), "cv_fold": k, "cv_folds": 3, "skipped_files": []}
        assert prepared.root == data and prepared.train_dir == data and prepared.test is None
        assert prepared.classes == ["glioma", "meningioma", "notumor", "pituitary"]
        assert len(prepared.train.labels) + len(prepared.val.labels) == 24 and prepared.train.images.shape[1:] == (
            32,
            32,
        )
        assert prepared.val_files == [str(p.relative_to(data)) for p in prepared.val.paths]
    assert all(place is not None and place.device.type == "cpu" for _, _, place in fake_training)
    assert (tmp_path / "cv" / "cv.json").read_text() == json.dumps(report, indent=2)
    assert [f["fold"] for f in report["folds"]] == [1, 2, 3]
    printed = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in printed if line.startswith("fold")] == ["fold 1/3", "fold 2/3", "fold 3/3"]
    assert all(
        " train / " in line and line.endswith(" validation images") for line in printed if line.startswith("fold")
    )
    assert report["k"] == 3 and report["complete"] is True and report["config"]["image_size"] == 32
    assert [f["best_epoch"] for f in report["folds"]] == [1, 2, 3]
    assert report["summary"]["best_epoch"] == {"mean": 2.0, "std": 1.0}
    assert (tmp_path / "cv" / "cv.png").stat().st_size > 1000


def test_run_cv_reuses_only_the_same_fold_and_resumes_an_interrupted_one(tmp_path, fake_training, capsys):
    data = make_dataset(tmp_path / "data", per_class=6)
    cfg = replace(TrainConfig(), data=str(data), out=str(tmp_path / "cv"), image_size=32, width=8)
    cv.run_cv(cfg, 2)
    fold1, fold2 = tmp_path / "cv" / "fold-1", tmp_path / "cv" / "fold-2"
    assert json.loads((fold1 / cv.FOLD_RECORD).read_text())["val_files"] == sorted(fake_training[0][1].val_files)
    (fold1 / "metrics.json").write_text(
        json.dumps(
            {
                "best_epoch": 42,
                "validation": {"n_images": 8, "f2_macro": 0.5, "accuracy": 0.5, "tumor_sensitivity": 0.5},
            }
        )
    )
    (fold2 / "checkpoint.pth").write_bytes(b"an interrupted fold's checkpoint")
    fake_training.clear()
    report = cv.run_cv(replace(cfg, threads=1), 2)  # the machine's options may change
    assert len(fake_training) == 1 and fake_training[0][0].out.endswith("fold-2")
    assert report["folds"][0]["best_epoch"] == 42 and report["folds"][0]["f2_macro"] == 0.5
    printed = capsys.readouterr().out
    assert f"fold 1/2: reusing {fold1 / 'metrics.json'}" in printed and "(resuming its checkpoint)" in printed
    with pytest.raises(UsageError, match=r"fold-1 holds a fold trained with other options: --epochs 60: "):
        cv.run_cv(replace(cfg, epochs=3), 2)
    with pytest.raises(UsageError, match=r"fold-1 holds a fold of a 2-fold run: --overwrite"):
        cv.run_cv(cfg, 3)  # 3-fold folds overlap 2-fold ones: reusing them would leak
    fake_training.clear()
    (fold2 / "checkpoint.pth").unlink()  # the fake asserts resume exactly when a checkpoint is there
    assert cv.run_cv(cfg, 3, overwrite=True)["k"] == 3 and len(fake_training) == 3


def test_a_fold_folder_without_a_record_is_refused(tmp_path, fake_training):
    data = make_dataset(tmp_path / "data", per_class=6)
    (tmp_path / "cv" / "fold-1").mkdir(parents=True)
    (tmp_path / "cv" / "fold-1" / "metrics.json").write_text("{}")
    with pytest.raises(UsageError, match=r"holds a fold of an older run \(it has no fold record\)"):
        cv.run_cv(replace(TrainConfig(), data=str(data), out=str(tmp_path / "cv"), image_size=32, width=8), 2)
    assert fake_training == []


def test_run_cv_refuses_torchrun_and_bad_options_before_reading_data(tmp_path, monkeypatch, fake_training):
    cfg = replace(TrainConfig(), data=str(tmp_path / "absent"), out=str(tmp_path / "cv"))
    monkeypatch.setattr(cv, "launched_by_torchrun", lambda: True)
    with pytest.raises(
        UsageError, match="^--cv runs its folds one after another in one process: start it without torchrun$"
    ):
        cv.run_cv(cfg, 3)
    with pytest.raises(ValueError, match="^lr must be"):
        cv.run_cv(replace(cfg, lr=-1.0), 3)
    assert fake_training == [] and not (tmp_path / "cv").exists()


def test_the_plot_labels_its_axes_and_gives_mean_and_std_in_the_legend(tmp_path, monkeypatch):
    captured = {}
    monkeypatch.setattr("tumor_train.plots.save_figure", lambda fig, path: captured.update(fig=fig, path=path))
    cv.plot_cv([record(1, 0.9), record(2, 0.8, sensitivity=None)], tmp_path / "cv.png")
    ax = captured["fig"].axes[0]
    assert captured["path"] == tmp_path / "cv.png"
    assert ax.get_xlabel() == "fold (its own held-out validation part)" and ax.get_ylabel() == "score"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["fold 1", "fold 2"]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["f2 macro: 0.8500 ± 0.0707", "accuracy: 0.9000 ± 0.0000", "tumor sensitivity: 1.0000 ± 0.0000"]
    assert ax.get_legend().get_title().get_text() == "mean ± std over folds"
    assert ax.get_title() == "Grouped 2-fold cross-validation"
    assert ax.get_ylim() == pytest.approx((0.74, 1.0))
    bars = [p.get_height() for p in ax.patches]
    assert bars[:2] == [0.9, 0.8] and np.isnan(bars[-1])
    # three bars per fold, side by side around the fold's tick: F2 left, accuracy centred, sensitivity right
    assert [round(p.get_x() + p.get_width() / 2, 2) for p in ax.patches] == [-0.27, 0.73, 0.0, 1.0, 0.27, 1.27]
    assert {round(p.get_width(), 2) for p in ax.patches} == {0.27}
    assert tuple(captured["fig"].get_size_inches()) == (6.0, 3.5)
    plt.close(captured["fig"])


def test_a_figure_without_any_value_labels_its_bars_by_name(tmp_path, monkeypatch):
    captured = {}
    monkeypatch.setattr("tumor_train.plots.save_figure", lambda fig, path: captured.update(fig=fig))
    cv.plot_cv([record(1, 0.9, sensitivity=None)], tmp_path / "cv.png")
    legend = [t.get_text() for t in captured["fig"].axes[0].get_legend().get_texts()]
    assert legend == ["f2 macro: 0.9000 ± 0.0000", "accuracy: 0.9000 ± 0.0000", "tumor sensitivity"]
    plt.close(captured["fig"])


def test_a_figure_of_folds_without_any_score_spans_zero_to_one(tmp_path, monkeypatch):
    captured = {}
    monkeypatch.setattr("tumor_train.plots.save_figure", lambda fig, path: captured.update(fig=fig))
    cv.plot_cv([record(1, None, accuracy=None, sensitivity=None)], tmp_path / "cv.png")
    ax = captured["fig"].axes[0]
    assert ax.get_ylim() == (0.0, 1.0) and ax.get_legend().get_title().get_fontsize() == 8
    plt.close(captured["fig"])


def finish_folds(folder: Path, folds: int) -> None:
    """What a finished --cv run leaves in each fold folder beside its fold record (the fake writes neither)."""
    for k in range(1, folds + 1):
        (folder / f"fold-{k}" / "metrics.json").write_text("{}")
        (folder / f"fold-{k}" / "model.pth").write_bytes(b"a fold's teacher")


def test_a_cv_folder_of_teachers_gives_each_fold_the_teacher_that_never_saw_its_validation(tmp_path, fake_training):
    """One shared teacher trained on all the images has seen every fold's validation images: the student's
    fold scores would leak. A teacher's own --cv folder on the same folds gives fold k its fold-k model."""
    data = make_dataset(tmp_path / "data", per_class=6)
    cfg = replace(TrainConfig(), data=str(data), out=str(tmp_path / "teacher"), image_size=32, width=8)
    cv.run_cv(cfg, 3)
    finish_folds(tmp_path / "teacher", 3)
    fake_training.clear()
    student = replace(cfg, out=str(tmp_path / "student"), teachers=[str(tmp_path / "teacher")])
    cv.run_cv(student, 3)
    assert [c.teachers for c, _, _ in fake_training] == [
        [str(tmp_path / "teacher" / f"fold-{k}" / "model.pth")] for k in (1, 2, 3)
    ]
    record = json.loads((tmp_path / "student" / "fold-1" / cv.FOLD_RECORD).read_text())
    assert record["recipe"]["teachers"] == [str(tmp_path / "teacher")]  # the folder, as given: reruns reuse


def test_a_teacher_folder_of_other_folds_or_an_unfinished_fold_is_refused(tmp_path, fake_training):
    data = make_dataset(tmp_path / "data", per_class=6)
    cfg = replace(TrainConfig(), data=str(data), out=str(tmp_path / "teacher"), image_size=32, width=8)
    cv.run_cv(cfg, 2)  # 2 folds: fold 1 of a 3-fold student validates other images
    finish_folds(tmp_path / "teacher", 2)
    student = replace(cfg, out=str(tmp_path / "student"), teachers=[str(tmp_path / "teacher")])
    with pytest.raises(UsageError, match=r"its fold-1 validated other images than this run's fold 1"):
        cv.run_cv(student, 3)
    (tmp_path / "teacher" / "fold-2" / "model.pth").unlink()
    with pytest.raises(UsageError, match=r"its fold-2 is not finished"):
        cv.run_cv(replace(student, out=str(tmp_path / "student2")), 2)


def test_only_the_chosen_folds_train_and_a_later_full_run_reuses_them(tmp_path, fake_training):
    """--cv-fold: two processes (or machines) share the folds of one run; the full run afterwards trains only the
    rest and writes the complete record."""
    data = make_dataset(tmp_path / "data", per_class=6)
    cfg = replace(TrainConfig(), data=str(data), out=str(tmp_path / "cv"), image_size=32, width=8)
    part = cv.run_cv(cfg, 3, only={2})
    assert [c.out for c, _, _ in fake_training] == [str(tmp_path / "cv" / "fold-2")]
    assert [f["fold"] for f in part["folds"]] == [2] and part["complete"] is False
    assert not (tmp_path / "cv" / "fold-1").exists()
    metrics = {
        "best_epoch": 42,
        "validation": {"n_images": 8, "f2_macro": 0.5, "accuracy": 0.5, "tumor_sensitivity": 1},
    }
    (tmp_path / "cv" / "fold-2" / "metrics.json").write_text(json.dumps(metrics))  # what a real fold leaves
    fake_training.clear()
    full = cv.run_cv(cfg, 3)
    assert [c.out for c, _, _ in fake_training] == [str(tmp_path / "cv" / f"fold-{k}") for k in (1, 3)]
    assert [f["fold"] for f in full["folds"]] == [1, 2, 3] and full["complete"] is True
    assert full["folds"][1]["best_epoch"] == 42
