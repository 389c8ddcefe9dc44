"""The training report: history CSV and the plots, read back from the figures (labels, marks, colours)."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image

from tumor_train import report


@pytest.fixture
def figures(monkeypatch):
    """save_figure captured: {file name: figure}, closed by the test's end."""
    saved = {}
    monkeypatch.setattr(report, "save_figure", lambda fig, path: saved.update({path.name: fig}))
    yield saved
    for fig in saved.values():
        report.plt.close(fig)


def history(n=8, val=True):
    return [{"epoch": e, "lr": 0.1, "train_loss": 1 / e, "train_accuracy": 0.5 + e / 20, "train_f2": 0.4 + e / 20,
             "val_loss": 1 / e if val else None, "val_accuracy": 0.6 + e / 40 if val else None,
             "val_f2": 0.55 + e / 40 if val else None, "seconds": 1.5, "extra": "dropped"} for e in range(1, n + 1)]


def test_history_csv_has_the_fields_in_order_and_drops_the_rest(tmp_path):
    report.write_history(history(2), tmp_path / "h.csv")
    rows = list(csv.DictReader(open(tmp_path / "h.csv")))
    assert list(rows[0]) == report.HISTORY_FIELDS and len(rows) == 2
    assert rows[1]["epoch"] == "2" and rows[1]["val_f2"] == str(0.55 + 2 / 40)


def test_curves_mark_the_kept_epoch_and_name_what_each_line_is(tmp_path, figures):
    report.plot_curves(history(), tmp_path, best_epoch=5)
    assert sorted(figures) == ["accuracy.png", "f2.png", "loss.png"]
    ax = figures["f2.png"].axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "train macro F2 (augmented batches)", "validation macro F2 (EMA weights)", "kept: epoch 5"]
    assert ax.get_ylabel() == "macro F2" and ax.get_xlabel() == "epoch"
    assert list(ax.lines[2].get_xdata()) == [5, 5]
    assert ax.get_ylim() == pytest.approx((0.55 + 3 / 40 - 0.05, 1.0))  # from the last three quarters of the run
    loss = figures["loss.png"].axes[0]
    assert loss.get_ylabel() == "loss" and [t.get_text() for t in loss.get_legend().get_texts()][:2] == [
        "train: label-smoothed cross-entropy", "validation: plain cross-entropy (EMA weights)"]
    assert figures["accuracy.png"].axes[0].get_ylabel() == "accuracy"
    assert list(ax.lines[1].get_ydata()) == [h["val_f2"] for h in history()]


def test_a_final_fit_has_no_validation_curve_and_no_mark_without_a_best_epoch(tmp_path, figures):
    report.plot_curves(history(val=False), tmp_path, best_epoch=None)
    ax = figures["f2.png"].axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["train macro F2 (augmented batches)"]
    assert len(ax.lines) == 1 and ax.get_ylim() == pytest.approx((0.95, 1.0))


def test_confusion_matrix_cells_read_the_counts_with_contrasting_text(tmp_path, figures):
    report.plot_confusion(np.array([[8, 2], [1, 9]]), ["a", "b"], tmp_path / "cm.png", title="Test")
    ax = figures["cm.png"].axes[0]
    cells = {(t.get_position(), t.get_text()): t.get_color() for t in ax.texts}
    assert cells == {((0, 0), "8"): "white", ((1, 0), "2"): "black", ((0, 1), "1"): "black", ((1, 1), "9"): "white"}
    assert ax.get_title() == "Test confusion matrix (EMA weights, FP32)"
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("predicted", "true")
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b"] == [t.get_text() for t in ax.get_yticklabels()]


def test_prediction_grid_shows_mistakes_in_red_first(tmp_path, figures):
    images = np.zeros((10, 8, 8), np.uint8)
    true = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
    pred = np.array([1, 0, 0, 0, 0, 1, 1, 1, 1, 0])  # two mistakes: images 0 and 9
    report.plot_predictions(images, true, pred, ["a", "b"], tmp_path / "p.png", count=6)
    titled = [ax for ax in figures["p.png"].axes if ax.get_title()]
    assert len(titled) == 6 and len(figures["p.png"].axes) == 8  # two rows of four, two left empty
    colours = [ax.title.get_color() for ax in titled]
    assert colours[:2] == ["red", "red"] and colours[2:] == ["black"] * 4
    assert sorted(ax.get_title() for ax in titled[:2]) == ["true a\npred b", "true b\npred a"]


def test_save_figure_writes_a_png_atomically(tmp_path):
    fig, ax = report.plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [0, 1])
    report.save_figure(fig, tmp_path / "x.png")
    assert Image.open(tmp_path / "x.png").format == "PNG" and [p.name for p in tmp_path.iterdir()] == ["x.png"]
    assert not report.plt.get_fignums()  # the figure was closed
