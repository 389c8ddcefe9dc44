"""An evaluation set of inputs that are not brain MRI slices, built offline from what installed packages ship.

Sources (each a name -> list of 2-D uint8 arrays or file paths):
- dicom: the single-frame images in pydicom's test files (CT, MR of other anatomy, ultrasound, colour
  screenshots, dose maps), when pydicom is installed;
- photos: scikit-learn's sample photos and matplotlib's sample pictures, in gray, whole and as 224 px crops;
- colour photos: the same pictures whole and in colour (refused by the runtime's colour check);
- maps: matplotlib's elevation and bathymetry grids rendered as images;
- synthetic: noise (uniform, Gaussian, salt and pepper), gradients, checkerboards, stripes, rendered text,
  random shapes, smooth blobs;
- broken_slices: real slices made unreadable: intensity inverted, saturated (wrong window), a corner
  zoomed fourfold, a 2 x 2 mosaic, drowned in noise.
The in-distribution side is the kit's labelled slices (the fixed validation split, or the samples).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SIZE = 224


def dicom_images() -> list[Path]:
    try:
        import pydicom
    except ImportError:
        return []
    from tumor_runtime.core.errors import ImageError
    from tumor_runtime.imaging.colour import REFUSAL
    from tumor_runtime.imaging.dicom import DicomFrame, frames_of, load_frame

    found = []
    for path in sorted((Path(pydicom.__file__).parent / "data" / "test_files").glob("*.dcm")):
        try:
            if len(frames_of(path)) != 1:
                continue
            load_frame(DicomFrame(path, None))
        except ImageError as exc:  # a file the runtime cannot read is left out; one it refuses as colour is caught
            if not str(exc).startswith(REFUSAL):
                continue
        except (OSError, ValueError):
            continue
        found.append(path)
    return found


def crops(image: np.ndarray, count: int, rng: np.random.Generator) -> list[np.ndarray]:
    h, w = image.shape[:2]
    side = min(h, w, SIZE)
    out = []
    for _ in range(count):
        top, left = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        out.append(image[top : top + side, left : left + side])
    return out


def pictures() -> list[np.ndarray]:
    """RGB (H, W, 3): scikit-learn's sample photos and matplotlib's sample pictures (a portrait among them)."""
    found = []
    try:
        from sklearn.datasets import load_sample_images

        found += list(load_sample_images().images)
    except ImportError:
        pass
    try:
        import matplotlib

        folder = Path(matplotlib.__file__).parent / "mpl-data" / "sample_data"
        for name in ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png", "logo2.png"):
            if (folder / name).is_file():
                found.append(np.asarray(Image.open(folder / name).convert("RGB")))
    except ImportError:
        pass
    return found


def photos(rng: np.random.Generator) -> list[np.ndarray]:
    """The pictures in gray, whole and as four 224 px crops each: what the out-of-distribution score must catch."""
    out = []
    for picture in pictures():
        out.append(np.asarray(Image.fromarray(picture).convert("L")))
        out += [np.asarray(Image.fromarray(c).convert("L")) for c in crops(picture, 4, rng)]
    return out


def maps() -> list[np.ndarray]:
    try:
        import matplotlib
    except ImportError:
        return []
    folder = Path(matplotlib.__file__).parent / "mpl-data" / "sample_data"
    out = []
    for name, key in (("topobathy.npz", "topo"), ("jacksboro_fault_dem.npz", "elevation")):
        if (folder / name).is_file():
            grid = np.load(folder / name)[key].astype(np.float64)
            scaled = (grid - grid.min()) / max(1e-9, np.ptp(grid)) * 255
            out.append(np.asarray(Image.fromarray(scaled.astype(np.uint8)).resize((SIZE, SIZE))))
    return out


def synthetic(rng: np.random.Generator) -> list[np.ndarray]:
    out = [
        rng.integers(0, 256, (SIZE, SIZE), dtype=np.uint8),
        np.clip(rng.normal(128, 40, (SIZE, SIZE)), 0, 255).astype(np.uint8),
        np.where(rng.random((SIZE, SIZE)) < 0.05, 255, 0).astype(np.uint8),
    ]
    ramp = np.linspace(0, 255, SIZE)
    out += [np.tile(ramp, (SIZE, 1)).astype(np.uint8), np.tile(ramp, (SIZE, 1)).T.astype(np.uint8)]
    yy, xx = np.mgrid[:SIZE, :SIZE]
    out.append((255 * np.hypot(yy - SIZE / 2, xx - SIZE / 2) / (SIZE * 0.71)).astype(np.uint8))
    for cell in (8, 28, 56):
        out.append((((yy // cell + xx // cell) % 2) * 255).astype(np.uint8))
    for period in (6, 20):
        out.append(((np.sin(xx * 2 * np.pi / period) + 1) * 127).astype(np.uint8))
    for seed in range(4):
        page = Image.new("L", (SIZE, SIZE), 255 if seed % 2 else 0)
        draw = ImageDraw.Draw(page)
        local = np.random.default_rng(seed)
        for line in range(14):
            words = " ".join(
                "".join(chr(97 + c) for c in local.integers(0, 26, local.integers(2, 9))) for _ in range(5)
            )
            draw.text((4, 4 + 15 * line), words, fill=0 if seed % 2 else 255)
        out.append(np.asarray(page))
    for seed in range(4):
        canvas = Image.new("L", (SIZE, SIZE), 0)
        draw = ImageDraw.Draw(canvas)
        local = np.random.default_rng(100 + seed)
        for _ in range(8):
            x0, y0 = local.integers(0, SIZE - 40, 2)
            box = [int(x0), int(y0), int(x0 + local.integers(20, 120)), int(y0 + local.integers(20, 120))]
            (draw.ellipse if local.random() < 0.5 else draw.rectangle)(box, fill=int(local.integers(60, 256)))
        out.append(np.asarray(canvas))
    blobs = np.asarray(
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).resize((SIZE, SIZE), Image.BICUBIC)
    )
    return out + [blobs]


def broken_slices(slices: list[np.ndarray]) -> list[np.ndarray]:
    out = []
    rng = np.random.default_rng(7)
    for gray in slices:
        gray = np.asarray(Image.fromarray(gray).resize((SIZE, SIZE)))
        h = SIZE // 4
        out += [
            255 - gray,
            np.clip(gray.astype(np.int32) * 4, 0, 255).astype(np.uint8),
            np.asarray(Image.fromarray(gray[h : 2 * h, h : 2 * h]).resize((SIZE, SIZE))),
            np.asarray(Image.fromarray(np.block([[gray, gray[:, ::-1]], [gray[::-1], gray]])).resize((SIZE, SIZE))),
            np.clip(gray + rng.normal(0, 90, gray.shape), 0, 255).astype(np.uint8),
        ]
    return out


def non_brain_sources(slices: list[np.ndarray], seed: int = 0) -> dict[str, list]:
    """{source name: inputs (arrays or paths)} of inputs that are not brain MRI slices."""
    rng = np.random.default_rng(seed)
    return {
        "dicom (pydicom test files)": dicom_images(),
        "photos": photos(rng),
        "colour photos": pictures(),  # whole, in colour, as a user would give them (the runtime refuses colour)
        "maps": maps(),
        "synthetic": synthetic(rng),
        "broken slices": broken_slices(slices),
    }


def auroc(inside: np.ndarray, outside: np.ndarray) -> float:
    """Probability that an outside score exceeds an inside one (ties count half): the ROC area."""
    inside, outside = np.asarray(inside, float), np.asarray(outside, float)
    greater = (outside[:, None] > inside[None]).mean()
    ties = (outside[:, None] == inside[None]).mean()
    return float(greater + 0.5 * ties)


def evaluate(classifier, in_distribution: list, slices_for_breaking: list[np.ndarray]) -> dict:
    """Scores and catch rates at the model's threshold, per source; the input checks that refuse a file
    outright (too small, constant) count as caught."""

    def scores(items):
        rows = classifier.predict(items)
        return (
            np.array([r["ood_score"] if r["error"] is None else np.inf for r in rows]),
            np.array([r["error"] is None and r["in_distribution"] for r in rows], bool),
        )

    inside, kept = scores(in_distribution)
    result = {"in_distribution": {"images": len(inside), "flagged": float(1 - kept.mean())}, "sources": {}}
    every = []
    for name, items in non_brain_sources(slices_for_breaking).items():
        if not items:
            continue
        outside, passed = scores(items)
        every.append(outside)
        result["sources"][name] = {
            "images": len(outside),
            "caught": float(1 - passed.mean()),
            "auroc": auroc(inside, outside),
        }
    everything = np.concatenate(every)
    result["all"] = {
        "images": len(everything),
        "caught": float(np.mean(everything >= 1.0)),
        "auroc": auroc(inside, everything),
    }
    return result


def table(result: dict) -> str:
    """The evaluation as the Markdown table the model card shows: the slices flagged, then what each source
    of non-slices has caught and its ROC area against the slices."""
    inside = result["in_distribution"]
    lines = [
        f"In distribution: {inside['images']} slices, {inside['flagged']:.2%} flagged "
        f"({result.get('in_distribution_set', 'given')}).",
        "",
        "| source | images | caught | ROC area |",
        "|---|---|---|---|",
    ]
    for name, row in [*result["sources"].items(), ("all", result["all"])]:
        lines.append(f"| {name} | {row['images']} | {row['caught']:.1%} | {row['auroc']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    """python -m benchmarks.ood_set [MODEL] [--json]: the table for the model card (needs ../shared for the real
    slices); --json prints every figure and the thresholds instead."""
    import json
    import sys

    from benchmarks.conftest import choose_bench_set
    from tumor_runtime.imaging.transform import load_gray
    from tumor_runtime.inference.classifier import Classifier

    args = [a for a in sys.argv[1:] if a != "--json"]
    clf = Classifier.load(args[0] if args else None)
    files, _, _, description = choose_bench_set(None, 100_000)
    breakable = [load_gray(f, SIZE) for f in files[:: max(1, len(files) // 20)][:20]]
    result = evaluate(clf, files, breakable) | {
        "in_distribution_set": description,
        "thresholds": clf.card()["out_of_distribution"]["thresholds"],
    }
    print(json.dumps(result, indent=2) if "--json" in sys.argv[1:] else table(result))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    main()
