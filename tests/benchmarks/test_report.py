"""The benchmark harness: a named bench set and results that name the CPU."""

from __future__ import annotations

import pytest

from tests.helpers.datasets import make_dataset

pytestmark = pytest.mark.faults  # the bad-input and fault sweep: pytest -m faults


def test_23_bench_set_is_named(tmp_path):
    from benchmarks.conftest import choose_bench_set

    files, labels, classes, description = choose_bench_set(None, 400, shared=tmp_path / "absent")
    assert "artifacts/samples" in description and "--bench-data" in description
    assert len(files) == len(labels) >= 8
    chosen = make_dataset(tmp_path / "b", per_class=2)
    files, _, _, description = choose_bench_set(str(chosen), 400, shared=tmp_path / "absent")
    assert str(chosen) in description and len(files) == 8


def test_24_results_name_the_cpu_and_its_features():
    from benchmarks.conftest import machine_info
    from benchmarks.report import machine_lines

    info = machine_info()
    assert info["cpu"] and isinstance(info["features"], list)
    text = "\n".join(machine_lines(info))
    assert info["cpu"] in text and "int8/bf16 features" in text and "depend" in text


def test_the_large_folder_table_compares_decoding_and_the_baseline():
    from benchmarks.report import large_folder_lines

    def row(seconds):
        return ({"median": seconds}, {"images": 4000})

    rows = {
        "onnx-int8": {"end_to_end_large_threads": row(4.0), "end_to_end_large_processes": row(3.2)},
        "baseline-int8": {"end_to_end_large_threads": row(4.0), "end_to_end_large_processes": row(2.0)},
    }
    text = "\n".join(large_folder_lines(rows))
    assert "(4,000 images)" in text and "| onnx-int8 | 1,000 | 1,250 | 1.25x |" in text
    assert "| baseline-int8 | 1,000 | 2,000 | 2.00x |" in text
    assert "against the baseline as it ran before them (threads): 1.25x" in text
    assert "against the baseline also given processes: 0.62x" in text
    assert large_folder_lines({"onnx-int8": {}}) == []


def test_the_share_of_bench_images_a_model_trained_on(tmp_path):
    from benchmarks.conftest import seen_in_training
    from benchmarks.report import seen_line

    root = tmp_path / "data"
    files = [root / "Training" / "glioma" / f"{i}.jpg" for i in range(4)] + [tmp_path / "elsewhere.jpg"]
    for f in files:
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"x")
    data = {"train_dir": str(root / "Training"), "root": str(root)}
    held_out = {"data": data | {"val_files": ["Training/glioma/0.jpg", "Training/glioma/1.jpg"]}}
    assert seen_in_training(files, held_out) == 2 / 5  # two held out, one outside the training folder
    assert seen_in_training(files[:4], {"data": data | {"val_files": []}}) == 1.0  # a final fit saw them all
    assert seen_in_training(files, {"data": {}}) == 0.0 and seen_in_training([], held_out) == 0.0

    def table(seen):
        return {"compact": {"onnx-int8": {"f2": ({}, {"seen_in_training": seen})}}}

    assert "trained on 100% of these images (a final fit)" in seen_line(table(1.0))[0]
    assert seen_line(table(0.0)) == [] and seen_line(table(None)) == []


def test_the_speed_goals_print_each_ratio_against_its_limit():
    from benchmarks.report import goal_lines

    def row(seconds, images=400):
        return ({"median": seconds}, {"images": images})

    rows = {
        "onnx-int8": {
            "end_to_end": row(0.2),  # 2,000 img/s
            "end_to_end_large_processes": row(4.0, 4000),
            "latency": ({"median": 0.0005}, {}),
            "startup": ({"median": 0.35}, {}),
        },
        "baseline-int8": {"end_to_end": row(0.5), "end_to_end_large_processes": row(6.0, 4000)},
    }
    http = [
        {"concurrency": 1, "requests_per_second": 400, "p50_ms": 1.2},
        {"concurrency": 8, "requests_per_second": 1600},
        {"concurrency": 8, "requests_per_second": 1000, "workers": "0"},
    ]
    text = "\n".join(goal_lines(rows, http))
    assert "| tumor-infer end to end, 400 images, shipped ÷ baseline-int8 | 2.50x | ≥ 2.00x | met |" in text
    assert "| tumor-infer end to end, 4,000 images, shipped ÷ baseline-int8 | 1.50x | ≥ 2.00x | missed |" in text
    assert "| tumor-serve, one process (default): requests/s at concurrency 8 ÷ tumor-infer img/s | 0.80x |" in text
    assert "| tumor-serve, `--workers 0`: one per core: requests/s at concurrency 8 ÷ tumor-infer img/s | 0.50x" in text
    assert (
        "(default): p50 at concurrency 1 (ms; limit: the model's 1-image latency + 1 ms) | 1.20 ms | ≤ 1.50 ms" in text
    )
    assert "one per core: p50" not in text  # not measured for that server
    assert "| start-up to first result (s) | 0.35 s | ≤ 0.30 s | missed |" in text
    assert goal_lines({}, []) == []


def test_a_run_of_some_benchmarks_only_still_makes_a_report(tmp_path, capsys):
    """A subset (for example -k end_to_end) has no F2 parity row: the header says so instead of a KeyError."""
    import json

    from benchmarks.conftest import machine_info
    from benchmarks.report import main

    bench = {
        "stats": {"median": 0.5, "iqr": 0.01},
        "extra_info": {"model": "compact", "variant": "onnx-int8", "kind": "end_to_end", "images": 400}
        | {"machine": machine_info()},
    }
    (tmp_path / "r.json").write_text(json.dumps({"benchmarks": [bench]}))
    main(str(tmp_path / "r.json"))
    text = capsys.readouterr().out
    assert "F2 parity was not measured in this run." in text and "| onnx-int8 | – | – | – | 800 | – |" in text
