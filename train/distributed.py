"""Where training runs: the device (`--device auto|cpu|cuda|cuda:N`) and, under torchrun, the
DistributedDataParallel set-up (NCCL on GPUs, gloo on CPUs).

Under `torchrun --nproc_per_node N -m tumor_train ...` every process reads the same seeded
epoch order and takes every N-th image of each global batch (`--batch-size` is the global
batch: the effective batch does not change with N, so neither does the learning rate; to
train with a bigger global batch, raise --batch-size and scale --lr linearly with it).
Gradients are averaged by DDP, so the replicas stay identical; the weight average (EMA) and
validation run the same on every rank, and only rank 0 writes files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from tumor_runtime.core.errors import KitError


class DeviceError(KitError):
    """A device that is not there, reported in one line."""


@dataclass(frozen=True)
class Placement:
    device: torch.device
    rank: int = 0  # this process among all (0 writes the files)
    world: int = 1  # number of processes
    local_rank: int = 0  # this process on its node (its GPU)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def describe(self) -> dict:
        info = {
            "device": str(self.device),
            "world_size": self.world,
            "torch": str(torch.__version__),
            "cuda": torch.version.cuda,
        }
        if self.device.type == "cuda":
            info["device_name"] = torch.cuda.get_device_name(self.device)
        return info


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """auto: CUDA when available, else CPU. cuda / cuda:N without a GPU: DeviceError."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if not (name == "cuda" or (name.startswith("cuda:") and name[5:].isdigit())):
        raise DeviceError(f"--device {name!r}: choose auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise DeviceError(
            f"--device {name}: no CUDA device is available here (torch {torch.__version__}, "
            f"built with CUDA {torch.version.cuda}); use --device cpu"
        )
    index = int(name[5:]) if ":" in name else local_rank
    if index >= torch.cuda.device_count():
        raise DeviceError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    return torch.device("cuda", index)


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device_name: str) -> Placement:
    """The device, and the process group when torchrun started several processes."""
    if not launched_by_torchrun():
        return Placement(resolve_device(device_name))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Placement(device, torch.distributed.get_rank(), torch.distributed.get_world_size(), local_rank)


def teardown() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def shard(index: torch.Tensor, place: Placement) -> slice:
    """This rank's rows of a global batch: every world-th, starting at the rank."""
    return slice(place.rank, None, place.world)
