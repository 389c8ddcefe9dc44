"""Regenerate artifacts/heatmaps.png: the shipped model's heat-map overlay of one sample slice per class.

python tools/heatmaps_figure.py [MODEL] [OUT]
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

from PIL import Image

from tumor_runtime.inference.classifier import Classifier
from tumor_runtime.inference.heatmap import overlay_png

REPO = Path(__file__).resolve().parents[1]


def main(model: str | None = None, out: str = str(REPO / "artifacts" / "heatmaps.png")) -> None:
    clf = Classifier.load(model)
    samples = [sorted((REPO / "artifacts" / "samples" / name).glob("*.jpg"))[0] for name in clf.info.classes]
    tiles = [Image.open(io.BytesIO(overlay_png(rec))) for rec in clf.predict(samples, heatmaps=True)]
    sheet = Image.new(
        "RGB", (sum(t.width for t in tiles) + 8 * (len(tiles) - 1), max(t.height for t in tiles)), "white"
    )
    x = 0
    for tile in tiles:
        sheet.paste(tile, (x, 0))
        x += tile.width + 8
    sheet.save(out)
    print(f"wrote {out} from {clf.path}")


if __name__ == "__main__":
    main(*sys.argv[1:])
