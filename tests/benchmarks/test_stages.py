"""The per-stage cost table (`benchmarks/stages.py`): its steps are load_gray's, and the report's arithmetic."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tests.helpers.datasets import SAMPLES


@pytest.mark.parametrize("size, crop", [(160, "brain"), (227, "none"), (96, "brain")])
def test_the_staged_steps_give_load_gray_s_pixels(tmp_path, size, crop):
    from benchmarks.stages import STAGES, staged_input
    from tumor_runtime.imaging.transform import load_gray

    files = sorted(SAMPLES.rglob("*.jpg"))
    rgb = [f for f in files if Image.open(f).mode == "RGB"]
    gray = [f for f in files if Image.open(f).mode == "L"]
    assert rgb and gray  # both kinds of slice the dataset has
    framed = np.zeros((300, 260), np.uint8)  # a head in a larger frame: a real crop, partly past the frame
    framed[20:280, 10:250] = np.asarray(Image.open(gray[0]).resize((240, 260)))
    Image.fromarray(framed).save(tmp_path / "framed.png")
    clock: dict[str, float] = {}
    for path in [*rgb[:2], *gray[:2], tmp_path / "framed.png"]:
        assert np.array_equal(staged_input(path, size, crop, clock), load_gray(path, size, crop))
    assert set(clock) <= set(STAGES[:5]) and clock[STAGES[0]] > 0


def test_the_stage_table_sums_each_model_and_gives_the_limit():
    from benchmarks.report import stage_lines

    def stages(scale):
        return {"decode": 200.0 * scale, "network": 300.0 * scale}

    rows = {
        "onnx-int8": {
            "stages": ({}, {"stages": stages(1), "cores": 2, "images": 400}),
            "end_to_end": ({"median": 0.4}, {"images": 400}),  # 1,000 img/s
        },
        "baseline-int8": {
            "stages": ({}, {"stages": stages(2), "cores": 2, "images": 400}),
            "end_to_end": ({"median": 0.8}, {"images": 400}),  # 500 img/s
        },
    }
    text = "\n".join(stage_lines(rows))
    assert "| decode | 200 | 400 |" in text and "| **one image's core time** | **500** | **1,000** |" in text
    assert "| 4,000 | 2,000 |" in text  # 2 cores ÷ 500 us and ÷ 1,000 us
    assert "| 1,000 (25%) | 500 (25%) |" in text and "2.00x the baseline" in text
    assert stage_lines({"onnx-int8": rows["onnx-int8"]}) == []  # without the baseline's stages: no table
