"""ImageNet weights for `--pretrained imagenet`, read the way torchvision reads them: from the torch hub cache
(`$TORCH_HOME/hub/checkpoints/`, the folder `torch.hub.get_dir()` names), through the weights API.

Nothing here downloads: on a machine without the file the run stops with one line saying how to place it
(`tumor-train --pretrained-file PATH`, or `tools/pretrained.sh`). A placed file is checked against the hash
prefix torchvision puts in the file name (`mobilenet_v2-b0353104.pth`: its sha256 starts `b0353104`), as
torchvision's own download would check it.

The weights are torchvision's ImageNet MobileNetV2 (BSD-3-Clause code; the weights carry ImageNet's terms:
non-commercial research and education).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import torch

from tumor_runtime.core.errors import OptionError
from tumor_runtime.core.fileio import sha256_file

HASH_IN_NAME = re.compile(r"-([a-f0-9]{6,})\.")  # torchvision's rule: the sha256 prefix after the last '-'


def weights_enum():
    from torchvision.models import MobileNet_V2_Weights

    return MobileNet_V2_Weights.IMAGENET1K_V1


def cache_file() -> Path:
    """Where torchvision looks for the MobileNetV2 ImageNet weights before it would download them."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(weights_enum().url).name


def expected_prefix(name: str) -> str:
    found = HASH_IN_NAME.search(name)
    assert found, name  # torchvision's weight files all carry the prefix
    return found.group(1)


def check_hash(path: Path) -> None:
    prefix = expected_prefix(cache_file().name)
    if not sha256_file(path).startswith(prefix):
        raise OptionError(f"{path} is not torchvision's {cache_file().name}: its sha256 does not start {prefix}")


def place(source: str | Path) -> Path:
    """Copy `source` (a downloaded mobilenet_v2-b0353104.pth) into the hub cache after checking its hash;
    returns the cache path. A file already there with the right hash is kept."""
    source, target = Path(source), cache_file()
    if not source.is_file():
        raise OptionError(f"--pretrained-file {source}: no such file")
    check_hash(source)
    if target.is_file() and sha256_file(target) == sha256_file(source):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    shutil.copyfile(source, partial)
    partial.replace(target)  # never a half-copied file where torchvision looks
    return target


def imagenet_mobilenet_v2() -> dict[str, torch.Tensor]:
    """The ImageNet state dict, from the hub cache only (OptionError with the fix when it is not there)."""
    target = cache_file()
    if not target.is_file():
        raise OptionError(
            f"--pretrained imagenet needs torchvision's ImageNet weights at {target} and this kit "
            "never downloads: place them with tumor-train --pretrained-file PATH (or "
            "tools/pretrained.sh), or train with --pretrained none"
        )
    check_hash(target)
    return weights_enum().get_state_dict(progress=False, check_hash=True)
