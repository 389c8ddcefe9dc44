"""Fixtures of the export's tests."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.checkpoints import model_checkpoint
from tests.helpers.datasets import make_dataset
from tumor_train.model_file import save_atomic


@pytest.fixture
def small(tmp_path):
    """(checkpoint path, dataset root): a model.pth whose recorded data and validation files exist."""
    root = make_dataset(tmp_path / "data", per_class=6)
    path = model_checkpoint(tmp_path / "run" / "model.pth", size=32, crop="none")
    ckpt = torch.load(path, weights_only=True)
    val = [f"{c}/img_00{i}.jpg" for c in ("glioma", "meningioma", "notumor", "pituitary") for i in (0, 1)]
    save_atomic(ckpt | {"data": {"root": str(root), "train_dir": str(root), "val_files": val}}, path)
    return path, root
