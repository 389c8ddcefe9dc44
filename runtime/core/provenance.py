"""Which images a model was trained on, carried in its metadata ("training_files"): "<class>/<file name>" for
each, sorted, newline-joined, xz-compressed and base64-encoded (5,708 Kaggle images take about 3 KB).
`tumor-infer --evaluate` uses them to say when it scores images the model has seen, where a high score
measures memory, not accuracy.

Class and file name, not paths: the build machine's folders stay out of the model, and a copied file still
counts (in any sub-folder of its class folder). The class is part of the key because data sets reuse names
across classes (img_001.jpg in each).
"""

from __future__ import annotations

import base64
import json
import lzma
from collections.abc import Iterable
from pathlib import Path

METADATA_KEY = "training_files"  # listed in contract.OPTIONAL_METADATA


def key(class_name: str, path) -> str:
    """The key of one image: its class and its file name."""
    return f"{class_name}/{Path(str(path)).name}"


def encode(keys: Iterable[str]) -> str:
    """The metadata value for these keys (`key`)."""
    unique = sorted(set(keys))
    packed = base64.b64encode(lzma.compress("\n".join(unique).encode("utf-8"))).decode("ascii")
    return json.dumps({"count": len(unique), "names_xz_base64": packed})


def decode(value: str) -> frozenset[str]:
    """The names in a metadata value; ValueError if it is damaged or disagrees with its own count."""
    try:
        record = json.loads(value)
        text = lzma.decompress(base64.b64decode(record["names_xz_base64"], validate=True)).decode("utf-8")
        names = frozenset(text.split("\n")) - {""}
        count = int(record["count"])
    except (ValueError, KeyError, TypeError, lzma.LZMAError, RecursionError) as exc:
        raise ValueError(f"its {METADATA_KEY} record is damaged ({type(exc).__name__})") from None
    if len(names) != count:
        raise ValueError(f"its {METADATA_KEY} record lists {len(names)} names but says {count}")
    return names


def seen_in_training(paths: Iterable[str], labels: Iterable[int], classes: list[str], keys: frozenset[str]) -> int:
    """How many of the labelled `paths` are training images (same class, same file name)."""
    return sum(key(classes[label], path) in keys for path, label in zip(paths, labels))
