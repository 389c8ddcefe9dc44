"""The training report: history CSV and the plots, read back from the figures (labels, marks, colours)."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image

from tumor_train import plots


@pytest.fixture
def figures(monkeypatch):
    """save_figure captured: {file name: figure}, closed by the test's end."""
    saved = {}
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: saved.update({path.name: fig}))
    yield saved
    for fig in saved.values():
        plots.plt.close(fig)


def history(n=8, val=True):
    return [
        {
            "epoch": e,
            "lr": 0.1,
            "train_loss": 1 / e,
            "train_accuracy": 0.5 + e / 20,
            "train_f2": 0.4 + e / 20,
            "val_loss": 1 / e if val else None,
            "val_accuracy": 0.6 + e / 40 if val else None,
            "val_f2": 0.55 + e / 40 if val else None,
            "seconds": 1.5,
            "extra": "dropped",
        }
        for e in range(1, n + 1)
    ]


def test_history_csv_has_the_fields_in_order_and_drops_the_rest(tmp_path):
    plots.write_history(history(2), tmp_path / "h.csv")
    rows = list(csv.DictReader(open(tmp_path / "h.csv")))
    assert list(rows[0]) == plots.HISTORY_FIELDS and len(rows) == 2
    assert rows[1]["epoch"] == "2" and rows[1]["val_f2"] == str(0.55 + 2 / 40)


def test_curves_mark_the_kept_epoch_and_name_what_each_line_is(tmp_path, figures):
    plots.plot_curves(history(), tmp_path, best_epoch=5)
    assert sorted(figures) == ["accuracy.png", "f2.png", "loss.png"]
    ax = figures["f2.png"].axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "train macro F2 (augmented batches)",
        "validation macro F2 (EMA weights)",
        "kept: epoch 5",
    ]
    assert ax.get_ylabel() == "macro F2" and ax.get_xlabel() == "epoch"
    assert list(ax.lines[2].get_xdata()) == [5, 5]
    assert ax.get_ylim() == pytest.approx((0.55 + 3 / 40 - 0.05, 1.0))  # from the last three quarters of the run
    loss = figures["loss.png"].axes[0]
    assert loss.get_ylabel() == "loss" and [t.get_text() for t in loss.get_legend().get_texts()][:2] == [
        "train: label-smoothed cross-entropy",
        "validation: plain cross-entropy (EMA weights)",
    ]
    assert figures["accuracy.png"].axes[0].get_ylabel() == "accuracy"
    assert list(ax.lines[1].get_ydata()) == [h["val_f2"] for h in history()]


def test_a_final_fit_has_no_validation_curve_and_no_mark_without_a_best_epoch(tmp_path, figures):
    plots.plot_curves(history(val=False), tmp_path, best_epoch=None)
    ax = figures["f2.png"].axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["train macro F2 (augmented batches)"]
    assert len(ax.lines) == 1 and ax.get_ylim() == pytest.approx((0.95, 1.0))


def test_confusion_matrix_cells_read_the_counts_with_contrasting_text(tmp_path, figures):
    plots.plot_confusion(np.array([[8, 2], [1, 9]]), ["a", "b"], tmp_path / "cm.png", title="Test")
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
    plots.plot_predictions(images, true, pred, ["a", "b"], tmp_path / "p.png", count=6)
    titled = [ax for ax in figures["p.png"].axes if ax.get_title()]
    assert len(titled) == 6 and len(figures["p.png"].axes) == 8  # two rows of four, two left empty
    colours = [ax.title.get_color() for ax in titled]
    assert colours[:2] == ["red", "red"] and colours[2:] == ["black"] * 4
    assert sorted(ax.get_title() for ax in titled[:2]) == ["true a\npred b", "true b\npred a"]


def test_save_figure_writes_a_png_atomically(tmp_path):
    fig, ax = plots.plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [0, 1])
    plots.save_figure(fig, tmp_path / "x.png")
    assert Image.open(tmp_path / "x.png").format == "PNG" and [p.name for p in tmp_path.iterdir()] == ["x.png"]
    assert fig.number not in plots.plt.get_fignums()  # the figure was closed


def test_png_files_carry_their_resolution_and_only_the_saved_figure_is_closed(tmp_path):
    first, ax = plots.plt.subplots(figsize=(2, 2))
    ax.plot([0, 1])
    second = plots.plt.figure()
    plots.save_figure(first, tmp_path / "first.png")
    open_figures = plots.plt.get_fignums()
    plots.plt.close(second)
    assert first.number not in open_figures and second.number in open_figures
    dpi = Image.open(tmp_path / "first.png").info["dpi"]
    assert dpi == pytest.approx((110, 110), abs=0.5)


def test_curves_plot_against_epoch_numbers_with_readable_legends(tmp_path, figures):
    rows = history()[2:]  # a resumed history starts after epoch 1
    plots.plot_curves(rows, tmp_path, best_epoch=4)
    for name, where in (("f2.png", 4), ("accuracy.png", 4), ("loss.png", 1)):  # lower right / upper right
        ax = figures[name].axes[0]
        assert list(ax.lines[0].get_xdata()) == [h["epoch"] for h in rows]
        assert list(ax.lines[1].get_xdata()) == [h["epoch"] for h in rows]
        assert ax.get_legend()._loc == where
        assert {t.get_fontsize() for t in ax.get_legend().get_texts()} == {8}
        mark = ax.lines[2]
        assert (mark.get_color(), mark.get_linestyle(), mark.get_linewidth()) == ("gray", "--", 1)
    assert [t.get_text() for t in figures["accuracy.png"].axes[0].get_legend().get_texts()][:2] == [
        "train (augmented batches)",
        "validation (EMA weights)",
    ]
    low, high = figures["loss.png"].axes[0].get_ylim()  # the loss axis is its own scale, not cut to [x, 1]
    assert high != 1.0 and high >= max(h["train_loss"] for h in rows) and low <= min(h["val_loss"] for h in rows)


def test_confusion_cells_are_centred_on_a_blue_scale_with_white_only_above_half(tmp_path, figures):
    plots.plot_confusion(np.array([[4, 2], [0, 3]]), ["a", "b"], tmp_path / "cm.png")
    ax = figures["cm.png"].axes[0]
    assert ax.images[0].get_cmap().name == "Blues"
    assert {(t.get_ha(), t.get_va()) for t in ax.texts} == {("center", "center")}
    colours = {t.get_text(): t.get_color() for t in ax.texts}
    assert colours == {"4": "white", "2": "black", "0": "black", "3": "white"}  # 2 is exactly half of 4: black
    assert ax.get_title() == "Validation confusion matrix (EMA weights, FP32)"


def test_prediction_tiles_show_true_gray_levels_hide_axes_and_default_to_sixteen(tmp_path, figures):
    images = np.full((40, 8, 8), 30, np.uint8)  # a dark image must stay dark: no contrast stretch
    true = np.zeros(40, int)
    pred = np.zeros(40, int)
    pred[:12] = 1  # twelve mistakes: only eight (half of 16) are shown
    plots.plot_predictions(images, true, pred, ["a", "b"], tmp_path / "p.png")
    axes = figures["p.png"].axes
    titled = [ax for ax in axes if ax.get_title()]
    assert len(axes) == 16 and len(titled) == 16
    assert [ax.title.get_color() for ax in titled].count("red") == 8
    assert all(not ax.axison for ax in axes)
    tile = titled[0].images[0]
    assert tile.get_cmap().name == "gray" and tile.get_clim() == (0, 255)
    assert {ax.title.get_fontsize() for ax in titled} == {8}
    chosen = [ax.get_title() for ax in titled]
    plots.plot_predictions(images, true, pred, ["a", "b"], tmp_path / "q.png", seed=0)
    assert [ax.get_title() for ax in figures["q.png"].axes if ax.get_title()] == chosen


def test_the_tile_choice_follows_the_seed(tmp_path, figures):
    images = np.arange(40, dtype=np.uint8)[:, None, None] * np.ones((40, 4, 4), np.uint8)
    true, pred = np.zeros(40, int), np.zeros(40, int)
    for seed in (0, 1):
        plots.plot_predictions(images, true, pred, ["a", "b"], tmp_path / f"s{seed}.png", count=4, seed=seed)
    shown = [
        [int(ax.images[0].get_array()[0, 0]) for ax in figures[f"s{seed}.png"].axes if ax.images] for seed in (0, 1)
    ]
    assert len(shown[0]) == 4 and shown[0] != shown[1]
    plots.plot_predictions(images[:0], true[:0], pred[:0], ["a", "b"], tmp_path / "none.png", count=4)
    assert len(figures["none.png"].axes) == 4  # one empty row, not a crash
