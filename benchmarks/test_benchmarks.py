"""Size, latency, throughput and F2 parity of every variant. Run: pytest --benchmark-only.

Write the tables with: python benchmarks/report.py .benchmarks/latest.json > benchmarks/RESULTS.md
(after: pytest --benchmark-only --benchmark-json=.benchmarks/latest.json).
"""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.conftest import ARTIFACTS, cores, full_run, machine_info

MODELS = ["compact", "alexnet"]
VARIANTS = [
    "torch-fp32",
    "torch-dynamic-int8",
    "onnx-fp32",
    "onnx-int8",
    "openvino-fp32",
    "openvino-int8",
    "baseline-int8",
]


def case_id(model: str, variant: str) -> str:
    """Say in the name what a plain `pytest` (CI) does not run: AlexNet, and OpenVINO where not installed."""
    suffix = "-benchmark-only" if model == "alexnet" else ""
    return f"{model}-{variant}{'-if-installed' if variant.startswith('openvino') else ''}{suffix}"


CASES = [
    pytest.param(m, v, id=case_id(m, v))
    for m in MODELS
    for v in VARIANTS
    if not (m == "alexnet" and v == "baseline-int8")
]
INT8_LIMIT_BYTES = 1.2e6  # the shipped int8 file's budget


@pytest.fixture(scope="session")
def shipped_ckpt():
    import torch

    return torch.load(ARTIFACTS / "model.pth", weights_only=True)


ALEXNET_SIZE = 227  # the reference's input, whatever the shipped model takes


@pytest.fixture(scope="session")
def inputs_for(bench_set):
    """variant or preprocess dict -> the bench images as that model's float inputs (N, 1, S, S), built once."""
    from tumor_export.calibration import load_inputs

    cache = {}

    def get(pre) -> np.ndarray:
        pre = getattr(pre, "preprocess", pre)
        key = (pre["size"], pre["mean"], pre["std"], pre["crop"])
        if key not in cache:
            cache[key] = load_inputs(bench_set[0], *key)
        return cache[key]

    return get


@pytest.fixture(scope="session")
def model_variants(request, inputs_for, shipped_ckpt, tmp_path_factory):
    from benchmarks.variants import alexnet_variants, inputs_of, shipped_variants

    found = {"compact": shipped_variants(ARTIFACTS)}
    if full_run(request.config):
        pre = inputs_of(shipped_ckpt["preprocess"]) | {"size": ALEXNET_SIZE, "crop": "none"}
        found["alexnet"] = alexnet_variants(tmp_path_factory.mktemp("alexnet"), inputs_for(pre)[:32], shipped_ckpt, pre)
    return found


@pytest.fixture
def variant(request, model_variants, model, name):
    if model not in model_variants:
        pytest.skip("the reference AlexNet is measured only by pytest --benchmark-only")
    if name not in model_variants[model]:
        pytest.skip(f"{name} is not installed (optional peer)")
    return model_variants[model][name]


def record(benchmark, variant, **extra) -> None:
    benchmark.extra_info.update({"model": variant.model, "variant": variant.name, **extra, "machine": machine_info()})


@pytest.mark.parametrize("model, name", CASES)
def test_file_size(benchmark, variant, model_variants):
    size = benchmark.pedantic(lambda: variant.path.stat().st_size, rounds=1, iterations=1)
    record(benchmark, variant, kind="size", bytes=size)
    fp32 = model_variants[variant.model]["torch-fp32"].path.stat().st_size
    if variant.name in ("onnx-int8", "baseline-int8"):
        assert size < 0.35 * fp32  # static int8 of every layer: about a quarter of FP32
    if variant.name == "onnx-int8" and variant.model == "compact":
        assert size <= INT8_LIMIT_BYTES
    if variant.name == "torch-fp32":  # 4 bytes per weight, plus the container
        import torch

        state = torch.load(variant.path, weights_only=True)
        state = state.get("state_dict", state)
        weights = sum(t.numel() * t.element_size() for t in state.values() if torch.is_tensor(t))
        assert weights <= size < 1.05 * weights + 65_536
    elif variant.name.endswith("fp32"):
        assert 0.95 < size / fp32 < 1.05  # the same weights, only the container differs
    if variant.name == "torch-dynamic-int8":  # only the Linear layers shrink, to a quarter
        assert size < fp32 and (size < 0.35 * fp32 if variant.model == "alexnet" else size > 0.5 * fp32)


@pytest.mark.parametrize("model, name", CASES)
def test_single_image_latency(benchmark, variant, inputs_for):
    run = variant.runner(1)
    x = inputs_for(variant)[:1]
    run(x)  # warm-up outside the timing (first-call allocations, kernel selection)
    probs = benchmark(run, x)
    record(benchmark, variant, kind="latency", threads=1, batch=1)
    assert probs.shape == (1, 4) and abs(float(probs.sum()) - 1) < 1e-3


@pytest.mark.parametrize("model, name", CASES)
def test_batch32_throughput(benchmark, variant, inputs_for):
    run = variant.runner(cores())
    inputs = inputs_for(variant)
    x = np.resize(inputs, (32, *inputs.shape[1:]))
    run(x)
    probs = benchmark(run, x)
    record(benchmark, variant, kind="throughput", threads=cores(), batch=32)
    assert probs.shape == (32, 4) and np.allclose(probs.sum(1), 1, atol=1e-3)
    alone = variant.runner(1)(x[:1])[0]  # a batch answers each image as a batch of one does
    assert probs[0].argmax() == alone.argmax() and np.abs(probs[0] - alone).max() < 0.02


@pytest.mark.parametrize(
    "model, name",
    [
        pytest.param(m, v, id=case_id(m, v))
        for m in MODELS
        for v in ("onnx-fp32", "onnx-int8", "openvino-int8", "baseline-int8")
        if not (m == "alexnet" and v == "baseline-int8")
    ],
)
def test_end_to_end_folder(benchmark, variant, bench_set):
    """tumor-infer's Classifier over the bench JPEGs: decoding, preprocessing and inference together."""
    from tumor_runtime.inference.classifier import Classifier

    backend = "openvino" if variant.name.startswith("openvino") else "onnxruntime"  # the kit's own runtime on it
    clf = Classifier.load(variant.path, threads=cores(), batch_size=32, verify=False, backend=backend)
    files = bench_set[0]
    records = benchmark.pedantic(lambda: list(clf.iter_predict(files)), rounds=3, iterations=1, warmup_rounds=1)
    record(benchmark, variant, kind="end_to_end", threads=cores(), images=len(files))
    assert len(records) == len(files) and all(r["error"] is None for r in records)


@pytest.mark.parametrize("model, name", [pytest.param("compact", v, id=v) for v in ("onnx-int8", "baseline-int8")])
def test_stage_costs_per_image(benchmark, variant, bench_set):
    """Each stage of an image's path on one thread (`benchmarks/stages.py`): the per-stage table of RESULTS.md and
    the physical limit, cores ÷ one image's core time, that the end-to-end rates are measured against."""
    from benchmarks.stages import STAGES, stage_costs

    files = bench_set[0]
    costs = benchmark.pedantic(lambda: stage_costs(variant.path, files), rounds=1, iterations=1, warmup_rounds=1)
    record(benchmark, variant, kind="stages", stages=costs, cores=cores(), images=len(files))
    assert list(costs) == list(STAGES) and all(v >= 0 for v in costs.values())
    assert costs["read and decode"] > 0 and costs["network (batch 32, 1 thread)"] > 0


LARGE_REPEAT = 10  # the bench set ten times over: a folder large enough for tumor-infer to decode in processes


@pytest.mark.parametrize("processes", [False, True], ids=["threads", "processes"])
@pytest.mark.parametrize("model, name", [pytest.param("compact", v, id=v) for v in ("onnx-int8", "baseline-int8")])
def test_end_to_end_large_folder(benchmark, variant, bench_set, request, processes):
    """A large folder decoded in threads and in worker processes (`runtime/imaging/pool.py`; tumor-infer chooses
    processes past `PROCESS_MIN_ITEMS` files), for the shipped model and the baseline alike."""
    from tumor_runtime.inference.classifier import Classifier

    clf = Classifier.load(variant.path, threads=cores(), batch_size=32, verify=False)
    files = bench_set[0] * (LARGE_REPEAT if full_run(request.config) else 2)
    records = benchmark.pedantic(
        lambda: list(clf.iter_predict(files, processes=processes)), rounds=3, iterations=1, warmup_rounds=1
    )
    record(
        benchmark,
        variant,
        kind=f"end_to_end_large_{'processes' if processes else 'threads'}",
        threads=cores(),
        images=len(files),
    )
    assert [r["path"] for r in records] == [str(f) for f in files] and all(r["error"] is None for r in records)


def test_end_to_end_with_heatmaps(benchmark, bench_set):
    """The shipped int8 model with heat-maps on (CAM output fetched, normalised and upsampled per image);
    RESULTS.md prints its throughput beside the plain end-to-end row, so the overhead is a ratio."""
    from tumor_runtime.inference.classifier import Classifier

    clf = Classifier.load(ARTIFACTS / "model.int8.onnx", threads=cores(), batch_size=32, verify=False)
    files = bench_set[0]
    records = benchmark.pedantic(
        lambda: list(clf.iter_predict(files, heatmaps=True)), rounds=3, iterations=1, warmup_rounds=1
    )
    benchmark.extra_info.update(
        {
            "model": "compact",
            "variant": "onnx-int8",
            "kind": "end_to_end_heatmaps",
            "threads": cores(),
            "images": len(files),
            "machine": machine_info(),
        }
    )
    size = clf.info.input_size
    assert len(records) == len(files) and all(r["cam"].shape == (size, size) for r in records)
    plain = clf.predict(files[:8])
    assert [r["probabilities"] for r in plain] == [r["probabilities"] for r in records[:8]]  # maps change nothing


RAY_REPEAT = 10  # the bench set ten times over: a job long enough that Ray's per-run actor start-up is amortised


def test_end_to_end_on_ray(benchmark, bench_set, request):
    """`tumor-infer --ray auto` on this machine (one actor with every core) against the plain run: the overhead of
    the Ray path, actor start-up included in every round (the local Ray instance is started in the warm-up)."""
    pytest.importorskip("ray")
    from tumor_runtime.inference.ray_batch import ray_records

    files = bench_set[0] * (RAY_REPEAT if full_run(request.config) else 1)
    records = benchmark.pedantic(
        lambda: list(ray_records(files, threads=cores())), rounds=2, iterations=1, warmup_rounds=1
    )
    benchmark.extra_info.update(
        {
            "model": "compact",
            "variant": "onnx-int8",
            "kind": "end_to_end_ray",
            "threads": cores(),
            "images": len(files),
            "machine": machine_info(),
        }
    )
    assert [r["path"] for r in records] == [str(f) for f in files] and all(r["error"] is None for r in records)


def predict_all(variant, inputs: np.ndarray) -> np.ndarray:
    run = variant.runner(cores())
    return np.concatenate([run(inputs[i : i + 32]) for i in range(0, len(inputs), 32)])


@pytest.fixture(scope="session")
def fp32_reference(model_variants, inputs_for):
    """Torch FP32 probabilities per model, computed once and shared by every parity case."""
    cache = {}

    def get(model: str, name: str = "torch-fp32") -> np.ndarray:
        if (model, name) not in cache:
            variant = model_variants[model][name]
            cache[model, name] = predict_all(variant, inputs_for(variant))
        return cache[model, name]

    return get


@pytest.mark.parametrize("model, name", CASES)
def test_f2_parity(benchmark, variant, fp32_reference, bench_set, inputs_for, shipped_ckpt):
    from benchmarks.conftest import seen_in_training
    from tumor_runtime.core.scoring import summarize

    _, labels, classes = bench_set
    probs = benchmark.pedantic(predict_all, args=(variant, inputs_for(variant)), rounds=1, iterations=1)
    # torch FP32 is the reference of every other variant; it is itself checked against ONNX FP32.
    reference = fp32_reference(variant.model, "onnx-fp32" if variant.name == "torch-fp32" else "torch-fp32")
    stats = summarize(labels, probs.argmax(1), classes)
    agreement = float((probs.argmax(1) == reference.argmax(1)).mean())
    record(
        benchmark,
        variant,
        kind="f2",
        images=len(labels),
        f2_macro=stats["f2_macro"],
        tumor_sensitivity=stats["tumor_sensitivity"],
        agreement_with_fp32=agreement,
        max_probability_diff=float(np.abs(probs - reference).max()),
        seen_in_training=None
        if variant.name == "baseline-int8" or variant.model != "compact"
        else seen_in_training(bench_set[0], shipped_ckpt),
    )
    if variant.name == "baseline-int8":  # the previous model: its own answers, scored against the labels only
        assert stats["f2_macro"] > 0.9
    elif variant.model == "compact":  # trained weights: every variant must agree with FP32
        assert agreement >= 0.97
    elif "int8" in variant.name:  # random weights: near-equal logits, so int8 noise may flip argmax; not the
        assert float(np.abs(probs - reference).max()) < 0.05  # probabilities (a wrong scale would move them)
    else:
        assert agreement >= 0.97


# VmHWM, not ru_maxrss: Linux carries ru_maxrss across fork and exec, so a child of a big
# pytest process would report the parent's peak. tumor-infer's decoding processes (large folders)
# count too: a thread samples the proportional set size (Pss: a page shared by n processes counts
# 1/n in each) of the process and its children every 20 ms; the figure is the larger of the two.
PEAK_RSS_WRAPPER = """
import atexit, glob, sys, threading, time
out = sys.argv.pop(1)
def kib(path, key):
    try:
        return int(next(line.split()[1] for line in open(path) if line.startswith(key)))
    except (OSError, StopIteration, ValueError):
        return 0
def children():
    found = []
    for name in glob.glob("/proc/self/task/*/children"):
        found += open(name).read().split()
    return found
sampled = [0]
def sample():
    while True:
        total = kib("/proc/self/smaps_rollup", "Pss:") + sum(kib(f"/proc/{c}/smaps_rollup", "Pss:") for c in children())
        sampled[0] = max(sampled[0], total)
        time.sleep(0.02)
threading.Thread(target=sample, daemon=True).start()
def peak():
    open(out, "w").write(str(max(kib("/proc/self/status", "VmHWM:"), sampled[0]) * 1024))
atexit.register(peak)
from tumor_runtime.cli.infer import main
sys.argv[0] = "tumor-infer"
main()
"""


def run_cli(args: list[str], rss_file: str) -> str:
    """tumor-infer in a fresh process, which writes its own peak resident memory (bytes) to `rss_file`;
    returns its stdout."""
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-c", PEAK_RSS_WRAPPER, rss_file, *args],
        check=True,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    ).stdout


def test_cli_start_up_to_first_result(benchmark, bench_set, tmp_path):
    """Wall time of `tumor-infer one.jpg`: interpreter start, imports, model load, one result."""
    import json

    rss = str(tmp_path / "rss")
    out = benchmark.pedantic(
        run_cli, args=([str(bench_set[0][0]), "--format", "jsonl"], rss), rounds=5, iterations=1, warmup_rounds=1
    )
    benchmark.extra_info.update(
        {
            "model": "compact",
            "variant": "onnx-int8",
            "kind": "startup",
            "peak_rss_bytes": int(open(rss).read()),
            "machine": machine_info(),
        }
    )
    row = json.loads(out)
    assert row["error"] is None and row["label"] in bench_set[2]


def test_cli_peak_memory_is_flat(benchmark, request, bench_set, tmp_path):
    """Peak RSS of tumor-infer over folders of 1,000 and 10,000 JPEGs (links to the bench images): the
    larger run may not need more than 25 % more memory (plain pytest: 40 and 400 images)."""
    counts = (1_000, 10_000) if full_run(request.config) else (40, 400)
    files, peaks = bench_set[0], {}
    for count in counts:
        folder, rss = tmp_path / f"folder{count}", str(tmp_path / f"rss{count}")
        folder.mkdir()
        for i in range(count):
            (folder / f"{i:05d}.jpg").symlink_to(files[i % len(files)].resolve())
        if count == counts[-1]:
            benchmark.pedantic(run_cli, args=([str(folder), "--format", "jsonl"], rss), rounds=1, iterations=1)
        else:
            run_cli([str(folder), "--format", "jsonl"], rss)
        peaks[count] = int(open(rss).read())
    benchmark.extra_info.update(
        {
            "model": "compact",
            "variant": "onnx-int8",
            "kind": "memory",
            "images": counts[-1],
            "peak_rss_bytes": peaks[counts[-1]],
            "peak_rss_small_bytes": peaks[counts[0]],
            "machine": machine_info(),
        }
    )
    assert peaks[counts[-1]] <= 1.25 * peaks[counts[0]], peaks
