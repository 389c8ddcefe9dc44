"""Fitting the out-of-distribution score to an exported model (`export/ood_fit.py`), on a stand-in model."""

from __future__ import annotations

import shutil

import numpy as np

from tests.helpers.datasets import CLASSES, make_dataset
from tests.helpers.onnx_fakes import features_model
from tumor_export import ood_fit
from tumor_export.metadata import read_metadata
from tumor_runtime.imaging.descriptors import image_descriptors
from tumor_runtime.imaging.transform import load_gray, normalize
from tumor_runtime.model.ood import OodModel
from tumor_runtime.model.session import create_session

PRE = {"size": 32, "mean": 0.3, "std": 0.2, "crop": "none"}


def test_the_training_sample_reads_known_class_folders_with_their_labels(tmp_path):
    data = make_dataset(tmp_path / "d", per_class=3)
    (data / "other").mkdir()
    (data / "glioma" / "broken.jpg").write_bytes(b"\xff\xd8\xff junk")
    shutil.copy(next((data / "glioma").glob("img_*.jpg")), data / "other" / "x.jpg")
    excluded = {(data / "pituitary" / "img_000.jpg").resolve()}
    gray, labels = ood_fit.training_sample(data, CLASSES, PRE, seed=0, exclude=excluded)
    assert gray.dtype == np.uint8 and gray.shape == (11, 32, 32)  # 12 images, minus the excluded one
    assert sorted(labels.tolist()) == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3]
    first = sorted((data / "glioma").glob("img_*.jpg"))[0]
    assert np.array_equal(gray[0], load_gray(first, 32, "none")) and labels[0] == 0
    empty, none = ood_fit.training_sample(data / "other", CLASSES, PRE, seed=0, exclude=set())
    assert empty.shape == (0, 32, 32) and none.size == 0  # a folder outside the classes gives nothing


def test_measurements_are_the_models_features_and_the_descriptors_in_any_batch_size(tmp_path):
    path = features_model(tmp_path / "m.onnx")
    gray = np.random.default_rng(1).integers(0, 256, (7, 32, 32), dtype=np.uint8)
    features, descriptors = ood_fit.measurements(path, gray, PRE, batch=3)
    expected = create_session(path).run(["features"], {"image": normalize(gray, 0.3, 0.2)})[0]
    np.testing.assert_allclose(features, expected, rtol=1e-6, atol=1e-6)
    assert features.shape == (7, 16) and np.array_equal(descriptors, image_descriptors(gray))
    again = ood_fit.measurements(path, gray, PRE)
    np.testing.assert_allclose(again[0], features, rtol=1e-6, atol=1e-6)


def test_attach_writes_a_score_the_runtime_reads_and_reports_what_it_fitted(tmp_path):
    path = features_model(tmp_path / "m.onnx")
    rng = np.random.default_rng(2)
    labels = np.repeat(np.arange(4), 30)
    gray = np.clip(rng.normal(60 + 30 * labels[:, None, None], 20, (120, 32, 32)), 0, 255).astype(np.uint8)
    validation = np.clip(rng.normal(90, 30, (40, 32, 32)), 0, 255).astype(np.uint8)
    before = read_metadata(path)
    report = ood_fit.attach(path, (gray, labels), validation, PRE)
    meta = read_metadata(path)
    assert {k: v for k, v in meta.items() if k != "ood"} == before
    model = OodModel.from_metadata(meta["ood"])
    scores = model.score(*ood_fit.measurements(path, validation, PRE))
    assert report == {
        "method": "mahalanobis-ppca on pooled features and image descriptors",
        "training_images": 120,
        "validation_images": 40,
        "validation_flagged": float(model.flags(scores).mean()),
    }
    assert report["validation_flagged"] == 0.0  # 40 images: the 99.75 % quantile is their largest distance
    assert scores.max() < 1.0 and scores.max() > 0.5
