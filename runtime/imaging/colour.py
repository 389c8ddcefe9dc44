"""Colour: MRI slices are grayscale, so a colourful image is not a slice.

A photo, a colour screenshot or a colour map converted to gray looks enough like a slice that the network
and the out-of-distribution score can pass it (a colour portrait scored 0.55 of the flag's threshold). Its
colour gives it away for the price of one look at a sample of its pixels, so such an input is refused with
its own error row before it is classified. Measured with `colourfulness` (Hasler & Süsstrunk, 2003) on the
32 px sample the runtime takes: the 5,708 training slices, some stored as RGB JPEGs with a faint tint, reach
16.1 (99.9 % under 13.2); the colour photos of the out-of-distribution set's sources 33 to 119.
"""

from __future__ import annotations

import numpy as np

from tumor_runtime.core.errors import ImageError

COLOUR_LIMIT = 24.0  # 1.5 times the most colourful training slice; photos start at about 33
REFUSAL = "a colour image"  # how the error row starts
SAMPLE_SIDE = 32  # colourfulness is measured on about this many rows and columns of the frame (cheap)


def colourfulness(rgb: np.ndarray) -> float:
    """uint8 (H, W, 3) -> Hasler-Süsstrunk colourfulness: spread and mean of the red-green and yellow-blue
    opponent channels, sqrt(s_rg^2 + s_yb^2) + 0.3 sqrt(m_rg^2 + m_yb^2), on about SAMPLE_SIDE rows and
    columns of it. 0 for a gray image. Integer arithmetic: on 32 x 32 pixels numpy's per-call cost is all."""
    step = max(1, min(rgb.shape[0], rgb.shape[1]) // SAMPLE_SIDE)
    pixels = rgb[::step, ::step, :3].reshape(-1, 3).astype(np.int32)
    rg = pixels[:, 0] - pixels[:, 1]
    yb2 = pixels[:, 0] + pixels[:, 1] - 2 * pixels[:, 2]  # twice the yellow-blue channel
    return float(np.sqrt(rg.var() + yb2.var() / 4) + 0.3 * np.hypot(rg.mean(), yb2.mean() / 2))


def refuse_colour(rgb: np.ndarray) -> None:
    """ImageError for a colourful uint8 (H, W, 3) image: it is not an MRI slice."""
    value = colourfulness(rgb)
    if value > COLOUR_LIMIT:
        raise ImageError(
            f"{REFUSAL} (colourfulness {value:.0f}; MRI slices stay under {COLOUR_LIMIT:.0f}): not an MRI "
            "slice. If it is one, save it in grayscale to classify it"
        )
