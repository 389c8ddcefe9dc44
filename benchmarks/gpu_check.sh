#!/usr/bin/env bash
# Prove the CUDA path on a machine with a GPU: short, self-contained, real data.
#   benchmarks/gpu_check.sh [DATA]      (DATA: the dataset root, default ../shared/data/brain-tumor-mri)
# Trains the compact model for 5 epochs and the reference AlexNet for 1 epoch on one GPU, prints
# seconds per epoch, checks that the training loss falls, and with 2+ GPUs compares a 2-process
# DDP run (torchrun, NCCL) with the 1-GPU run. Needs the project importable (pip install -e . or
# PYTHONPATH with the stage folders) and torch with CUDA.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${1:-../shared/data/brain-tumor-mri}"
OUT="${GPU_CHECK_OUT:-runs/gpu-check}"
rm -rf "$OUT"
python - <<'PY' || exit 2
import sys
import torch
if not torch.cuda.is_available():
    sys.exit("gpu_check.sh: no CUDA device here (torch.cuda.is_available() is False): run it on a machine with a GPU")
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.device_count()} GPU(s): "
      f"{torch.cuda.get_device_name(0)}")
PY
python -m tumor_train --data "$DATA" --out "$OUT/compact" --epochs 5 --device cuda >/dev/null
python -m tumor_train --data "$DATA" --out "$OUT/alexnet" --arch alexnet --lr 3e-4 --epochs 1 --device cuda >/dev/null
if [ "$(python -c 'import torch; print(torch.cuda.device_count())')" -ge 2 ]; then
    python -m torch.distributed.run --nproc_per_node 2 -m tumor_train --data "$DATA" --out "$OUT/ddp" --epochs 5 \
        --device cuda >/dev/null
fi
python - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
for name in ("compact", "alexnet", "ddp"):
    path = out / name / "metrics.json"
    if not path.is_file():
        continue
    m = json.loads(path.read_text())
    losses = [h["train_loss"] for h in m["history"]]
    print(f"{name:8s} {m['placement']['device_name'] if 'device_name' in m['placement'] else m['placement']['device']}"
          f" x{m['placement']['world_size']}: {m['seconds_per_epoch']:.2f} s/epoch, train loss {losses[0]:.3f} -> "
          f"{losses[-1]:.3f}, validation macro F2 {m['validation']['f2_macro']:.4f}")
    if len(losses) > 1:
        assert losses[-1] < losses[0], f"{name}: the training loss did not fall"
PY
