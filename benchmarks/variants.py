"""The variants compared: torch FP32, torch dynamic int8, ONNX FP32 and ONNX int8 (and OpenVINO if present).

Each variant gives `runner(threads)`: a function from float inputs (N, 1, 227, 227) to
class probabilities, with the thread count pinned before timing starts.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tumor_runtime.core.contract import INPUT_NAME, PROBABILITIES


@dataclass
class Variant:
    model: str  # "compact" (the shipped model) or "alexnet" (the reference, random weights)
    name: str  # torch-fp32, torch-dynamic-int8, onnx-fp32, onnx-int8, openvino-fp32, openvino-int8
    path: Path  # the file a deployment would ship
    runner: Callable[[int], Callable[[np.ndarray], np.ndarray]]
    preprocess: dict  # {"size", "mean", "std", "crop"}: the inputs this variant takes (the baseline differs)


def torch_runner(model):
    import torch

    def make(threads: int):
        torch.set_num_threads(threads)

        def run(x: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return torch.softmax(model(torch.from_numpy(x)), 1).numpy()

        return run

    return make


def onnx_runner(path: Path):
    from tumor_runtime.model.session import create_session

    def make(threads: int):
        session = create_session(path, threads, spinning=True)  # as measured before: spinning allowed
        return lambda x: session.run([PROBABILITIES], {INPUT_NAME: x})[0]

    return make


def openvino_runner(path: Path, precision: str):
    import openvino as ov

    def make(threads: int):
        # OpenVINO runs FP32 models in bf16 on AMX CPUs unless told otherwise: pin f32 for a fair FP32 row.
        config = {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": precision}
        compiled = ov.Core().compile_model(str(path), "CPU", config)
        output = compiled.output(PROBABILITIES)
        return lambda x: compiled(x)[output]

    return make


def build_variants(
    model_name: str, model, fp32_onnx: Path, int8_onnx: Path, torch_file: Path, quantized_file: Path, pre: dict
) -> dict[str, Variant]:
    from tumor_train.dynamic_int8 import quantize_linear

    found = {
        "torch-fp32": Variant(model_name, "torch-fp32", torch_file, torch_runner(model.eval()), pre),
        "torch-dynamic-int8": Variant(
            model_name, "torch-dynamic-int8", quantized_file, torch_runner(quantize_linear(copy.deepcopy(model))), pre
        ),
        "onnx-fp32": Variant(model_name, "onnx-fp32", fp32_onnx, onnx_runner(fp32_onnx), pre),
        "onnx-int8": Variant(model_name, "onnx-int8", int8_onnx, onnx_runner(int8_onnx), pre),
    }
    try:
        import openvino  # noqa: F401  (optional peer runtime)

        found["openvino-fp32"] = Variant(model_name, "openvino-fp32", fp32_onnx, openvino_runner(fp32_onnx, "f32"), pre)
        found["openvino-int8"] = Variant(model_name, "openvino-int8", int8_onnx, openvino_runner(int8_onnx, "f32"), pre)
    except ImportError:
        pass
    return found


BASELINE_INT8 = Path(__file__).resolve().parent / "baseline" / "model.int8.onnx"  # the model shipped before


def shipped_variants(artifacts: Path) -> dict[str, Variant]:
    from tumor_train.model_file import load_model

    model, ckpt = load_model(artifacts / "model.pth")
    found = build_variants(
        "compact",
        model,
        artifacts / "model.onnx",
        artifacts / "model.int8.onnx",
        artifacts / "model.pth",
        artifacts / "model_quantized.pth",
        inputs_of(ckpt["preprocess"]),
    )
    if BASELINE_INT8.is_file():  # today's model against the previous one, on the same machine and run
        found["baseline-int8"] = Variant(
            "compact", "baseline-int8", BASELINE_INT8, onnx_runner(BASELINE_INT8), onnx_inputs(BASELINE_INT8)
        )
    return found


def inputs_of(pre: dict) -> dict:
    return {
        "size": int(pre["size"]),
        "mean": float(pre["mean"]),
        "std": float(pre["std"]),
        "crop": pre.get("crop", "none"),
    }


def onnx_inputs(path: Path) -> dict:
    """The preprocessing an exported model declares in its metadata (older models: no crop)."""
    from tumor_export.metadata import read_metadata

    meta = read_metadata(path)
    return inputs_of(
        {"size": meta["input_size"], "mean": meta["mean"], "std": meta["std"], "crop": meta.get("crop", "none")}
    )


def alexnet_variants(folder: Path, calibration: np.ndarray, shipped_ckpt: dict, pre: dict) -> dict[str, Variant]:
    """The reference AlexNet with seeded random weights, exported and quantized the kit's way."""
    import torch

    from tumor_export.calibration import ArrayReader
    from tumor_export.metadata import model_metadata, write_metadata
    from tumor_export.onnx_export import export_fp32
    from tumor_export.static_int8 import prepare_graph, quantize_int8
    from tumor_train.dynamic_int8 import save_quantized
    from tumor_train.model_file import save_atomic
    from tumor_train.models import build_model

    torch.manual_seed(0)
    model = build_model("alexnet", num_classes=4).eval()
    save_atomic({"arch": "alexnet", "state_dict": model.state_dict()}, folder / "alexnet.pth")
    save_quantized(model, "alexnet", {"num_classes": 4}, folder / "alexnet_quantized.pth")
    export_fp32(model, 227, folder / "alexnet.onnx")
    prepare_graph(folder / "alexnet.onnx", folder / "alexnet.pre.onnx")
    quantize_int8(folder / "alexnet.pre.onnx", folder / "alexnet.int8.onnx", ArrayReader(calibration, INPUT_NAME))
    meta = model_metadata(shipped_ckpt | {"arch": "alexnet", "preprocess": shipped_ckpt["preprocess"] | pre}, 0.5)
    for name in ("alexnet.onnx", "alexnet.int8.onnx"):
        write_metadata(folder / name, meta)
    return build_variants(
        "alexnet",
        model,
        folder / "alexnet.onnx",
        folder / "alexnet.int8.onnx",
        folder / "alexnet.pth",
        folder / "alexnet_quantized.pth",
        pre,
    )
