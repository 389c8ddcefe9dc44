"""Where tumor-infer's time goes: each stage of an image's path, timed on one thread, per image.

`staged_input` walks `load_gray`'s steps one by one (a test holds it to load_gray's output, so the two cannot
drift apart), and `stage_costs` adds the thumbnail, the network at batch 32 on one thread, the OOD score and the
result rows. The sum is one image's core time; cores ÷ that is the most images per second the machine allows,
whatever the threading: the physical limit the end-to-end figures are measured against.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

STAGES = (
    "read and decode",
    "gray and colour check",
    "content check",
    "brain box",
    "crop and resize",
    "OOD thumbnail",
    "normalize",
    "network (batch 32, 1 thread)",
    "OOD descriptors and score",
    "probabilities and result rows",
)
BATCH = 32


def timed(clock: dict[str, float], stage: str, work: Callable):
    """work() with its wall time added to clock[stage] (one thread: wall time is core time)."""
    start = time.perf_counter()
    result = work()
    clock[stage] = clock.get(stage, 0.0) + time.perf_counter() - start
    return result


def staged_input(path: Path, size: int, crop: str, clock: dict[str, float]) -> np.ndarray:
    """`load_gray(path, size, crop)` for an image file, step by step, each step's time added to `clock`."""
    from tumor_runtime.imaging.decode import open_image, to_gray
    from tumor_runtime.imaging.transform import brain_box, check_content

    img = timed(clock, STAGES[0], lambda: open_image(path, size if crop == "none" else None))
    gray = timed(clock, STAGES[1], lambda: to_gray(img))

    def check():
        histogram = gray.histogram() if crop == "brain" else None
        check_content(gray, histogram)
        return histogram

    histogram = timed(clock, STAGES[2], check)
    box = timed(clock, STAGES[3], lambda: brain_box(np.asarray(gray), histogram) if crop == "brain" else None)

    def crop_and_resize() -> np.ndarray:
        cut = gray.crop(box) if box is not None else gray
        return np.asarray(cut if cut.size == (size, size) else cut.resize((size, size), Image.Resampling.BILINEAR))

    return timed(clock, STAGES[4], crop_and_resize)


def stage_costs(model_path: Path, files: list[Path]) -> dict[str, float]:
    """Microseconds per image of each of STAGES for the model at `model_path` over `files`, on one thread."""
    from tumor_runtime.core.contract import FEATURES_OUTPUT
    from tumor_runtime.core.scoring import calibrated
    from tumor_runtime.imaging.descriptors import descriptors_of_thumbnails, thumbnail
    from tumor_runtime.imaging.transform import normalize
    from tumor_runtime.inference.classifier import Classifier

    clf = Classifier.load(model_path, threads=1, verify=False)
    info, clock = clf.info, {}
    grays = np.stack([staged_input(f, info.input_size, info.crop, clock) for f in files])
    thumbs = [timed(clock, STAGES[5], lambda g=g: thumbnail(g)) for g in grays] if info.ood else []
    outputs = [clf.output_name] + ([FEATURES_OUTPUT] if info.ood else [])
    for start in range(0, len(grays), BATCH):
        batch = grays[start : start + BATCH]
        x = timed(clock, STAGES[6], lambda b=batch: normalize(b, info.mean, info.std))
        out = timed(clock, STAGES[7], lambda x=x: clf.session.run(outputs, {clf.input_name: x}))
        if info.ood:
            small = np.stack(thumbs[start : start + BATCH])
            timed(clock, STAGES[8], lambda o=out, s=small: info.ood.score(o[1], descriptors_of_thumbnails(s)))
        timed(clock, STAGES[9], lambda o=out: [clf.record("x", p) for p in calibrated(o[0], info.temperature)])
    return {stage: clock.get(stage, 0.0) / len(files) * 1e6 for stage in STAGES}
