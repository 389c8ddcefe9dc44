"""Device selection and DistributedDataParallel on the CPU (gloo): the GPU path shares this code but
needs a GPU to run (benchmarks/gpu_check.sh)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner

from tests.helpers.datasets import make_dataset
from tests.helpers.processes import free_port
from tumor_train import distributed
from tumor_train.cli import main
from tumor_train.distributed import DeviceError, Placement, resolve_device, shard

TINY = ["--epochs", "2", "--width", "8", "--threads", "1"]
OUTPUTS = {
    "accuracy.png",
    "f2.png",
    "checkpoint.pth",
    "confusion_matrix.png",
    "history.csv",
    "loss.png",
    "metrics.json",
    "model.pth",
    "model_quantized.pth",
    "predictions.png",
}


def relative_difference(a: dict, b: dict) -> float:
    keys = [k for k in a if a[k].is_floating_point()]
    num = sum(((a[k] - b[k]) ** 2).sum().item() for k in keys)
    return math.sqrt(num / sum((b[k] ** 2).sum().item() for k in keys))


def test_explicit_cpu_device_is_recorded(tmp_path):
    data = make_dataset(tmp_path / "d", per_class=8)
    result = CliRunner().invoke(
        main, ["--data", str(data), "--out", str(tmp_path / "o"), "--device", "cpu", "--epochs", "1", "--width", "8"]
    )
    assert result.exit_code == 0, result.output
    placement = json.loads((tmp_path / "o" / "metrics.json").read_text())["placement"]
    assert placement["device"] == "cpu" and placement["world_size"] == 1 and placement["torch"] == torch.__version__


@pytest.mark.parametrize("device", ["cuda", "cuda:3", "tpu"])
def test_unavailable_device_is_one_line_exit_2(tmp_path, device):
    if device.startswith("cuda") and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    result = CliRunner().invoke(main, ["--data", str(tmp_path), "--out", str(tmp_path / "o"), "--device", device])
    assert result.exit_code == 2 and "Traceback" not in result.stderr
    assert [line for line in result.stderr.splitlines() if line.startswith("Error")] == [
        next(line for line in result.stderr.splitlines() if line.startswith("Error: --device"))
    ]
    assert not (tmp_path / "o").exists()


def torchrun(args, nproc: int = 2) -> subprocess.CompletedProcess:
    port = free_port()
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc_per_node={nproc}",
            "--master_addr=127.0.0.1",
            f"--master_port={port}",
            "-m",
            "tumor_train",
            *map(str, args),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_two_process_gloo_run_matches_one_process(tmp_path):
    """What is equal by construction: the global batches (order and augmentation) of a 2-process run and a
    1-process run with the same --batch-size, and the optimizer steps. What differs: batch norm sees each
    rank's half batch (CPUs have no SyncBatchNorm), so the weights agree to a few percent, not bit for bit:
    after 2 epochs the relative L2 difference is under 5 %, while another seed differs by over 50 %."""
    data = make_dataset(tmp_path / "d", per_class=6)
    ddp = torchrun(["--data", data, "--out", tmp_path / "ddp", "--device", "cpu", *TINY])
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert {p.name for p in (tmp_path / "ddp").iterdir()} == OUTPUTS  # rank 0 alone wrote, once each
    assert ddp.stdout.count("Best epoch") == 1
    metrics = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert metrics["placement"]["world_size"] == 2 and [h["epoch"] for h in metrics["history"]] == [1, 2]
    for seed in ("0", "1"):
        single = CliRunner().invoke(
            main, ["--data", str(data), "--out", str(tmp_path / f"one{seed}"), "--device", "cpu", "--seed", seed, *TINY]
        )
        assert single.exit_code == 0, single.output
    weights = {
        name: torch.load(tmp_path / name / "checkpoint.pth", weights_only=True)["model"]
        for name in ("ddp", "one0", "one1")
    }
    assert relative_difference(weights["ddp"], weights["one0"]) < 0.05
    assert relative_difference(weights["one1"], weights["one0"]) > 0.5
    state = torch.load(tmp_path / "ddp" / "checkpoint.pth", weights_only=True)
    assert state["world_size"] == 2 and state["epoch"] == 2


def test_distributed_resume_and_out_required(tmp_path):
    data = make_dataset(tmp_path / "d", per_class=8)
    out = tmp_path / "ddp"
    assert torchrun(["--data", data, "--out", out, "--device", "cpu", *TINY]).returncode == 0
    (out / "metrics.json").unlink()
    resumed = torchrun(["--out", out, "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "All 2 epochs are done" in resumed.stdout and (out / "metrics.json").is_file()
    no_out = torchrun(["--data", data, "--device", "cpu", *TINY])
    assert no_out.returncode != 0 and "give --out" in no_out.stderr


# The placement rules, in-process (CUDA faked where it is not here).


def test_auto_is_the_cpu_without_cuda_and_cuda_with_it(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu") and resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == torch.device("cuda", 0)
    assert resolve_device("cuda", local_rank=1) == torch.device("cuda", 1)  # torchrun: each rank its GPU
    assert resolve_device("cuda:1", local_rank=0) == torch.device("cuda", 1)
    with pytest.raises(DeviceError) as caught:
        resolve_device("cuda:2")
    assert str(caught.value) == "--device cuda:2: only 2 CUDA device(s) here"


@pytest.mark.parametrize("name", ["gpu", "cuda:", "cuda:x", "CPU", "cuda1"])
def test_a_device_name_outside_the_forms_is_refused(name):
    with pytest.raises(DeviceError) as caught:
        resolve_device(name)
    assert str(caught.value) == f"--device {name!r}: choose auto, cpu, cuda or cuda:N"


def test_cuda_without_a_gpu_says_what_this_torch_has(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError) as caught:
        resolve_device("cuda:0")
    assert str(caught.value) == (
        f"--device cuda:0: no CUDA device is available here (torch {torch.__version__}, "
        f"built with CUDA {torch.version.cuda}); use --device cpu"
    )


def test_torchrun_is_recognised_by_its_world_size(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not distributed.launched_by_torchrun()
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert not distributed.launched_by_torchrun()
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert distributed.launched_by_torchrun()
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert distributed.setup("cpu") == Placement(torch.device("cpu"))


def test_each_rank_takes_every_world_th_row_and_only_rank_0_is_main():
    rows = torch.arange(10)
    assert rows[shard(rows, Placement(torch.device("cpu"), rank=1, world=3))].tolist() == [1, 4, 7]
    assert rows[shard(rows, Placement(torch.device("cpu")))].tolist() == list(range(10))
    assert Placement(torch.device("cpu")).is_main and not Placement(torch.device("cpu"), rank=1, world=2).is_main
    described = Placement(torch.device("cpu"), world=2).describe()
    assert described == {"device": "cpu", "world_size": 2, "torch": str(torch.__version__), "cuda": torch.version.cuda}


def test_teardown_without_a_process_group_does_nothing():
    assert not torch.distributed.is_initialized()
    distributed.teardown()


@pytest.fixture
def fake_process_group(monkeypatch):
    """torchrun's environment for rank 3 of 4 (local rank 1) and a process group that only records its backend."""
    for name, value in {"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"}.items():
        monkeypatch.setenv(name, value)
    backends, state = [], {"up": False}
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: state["up"])
    monkeypatch.setattr(
        torch.distributed, "init_process_group", lambda backend: (backends.append(backend), state.update(up=True))
    )
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 3)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 4)
    return backends


def test_under_torchrun_cpus_join_a_gloo_group_with_their_rank(fake_process_group):
    assert distributed.setup("cpu") == Placement(torch.device("cpu"), rank=3, world=4, local_rank=1)
    assert fake_process_group == ["gloo"]
    distributed.setup("cpu")  # a group already made is joined, not made twice
    assert fake_process_group == ["gloo"]


def test_under_torchrun_each_gpu_process_takes_its_local_rank_s_gpu(fake_process_group, monkeypatch):
    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: f"Fake GPU {device.index}")
    place = distributed.setup("auto")
    assert place == Placement(torch.device("cuda", 1), rank=3, world=4, local_rank=1)
    assert chosen == [torch.device("cuda", 1)] and fake_process_group == ["nccl"]
    assert place.describe() == {
        "device": "cuda:1",
        "world_size": 4,
        "torch": str(torch.__version__),
        "cuda": torch.version.cuda,
        "device_name": "Fake GPU 1",
    }


def test_under_torchrun_without_a_local_rank_the_first_gpu_is_taken(fake_process_group, monkeypatch):
    monkeypatch.delenv("LOCAL_RANK")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    assert distributed.setup("cuda").device == torch.device("cuda", 0)
