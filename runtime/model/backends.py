"""Inference backends for the same ONNX file: ONNX Runtime (the default install) or OpenVINO (the
[openvino] extra), behind the small session interface the classifier uses.

`auto` picks OpenVINO where it is installed and the CPU has the int8 instructions its convolution
kernels use and ONNX Runtime's do not (AMX, or AVX-512 VNNI): measured 2.5x faster at batch 1 on a
2-core Xeon with AMX, 1.3x on an AMD EPYC with AVX-512 VNNI. Elsewhere (AVX2 only, ARM) it picks
ONNX Runtime, the backend the export's parity gate measured. Either way the answer is checked to be
the same: the tests run both backends on the same slices (same labels, probabilities within 0.02).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

from tumor_runtime.core.system import cpu_flags, installed, missing_extra

BACKENDS = ("auto", "onnxruntime", "openvino")
OPENVINO_CPU_FLAGS = ("amx_int8", "avx512_vnni")  # where OpenVINO's int8 convolutions beat ONNX Runtime's
MISSING_OPENVINO = missing_extra("the openvino backend", "openvino")


def openvino_caveat(backend: str) -> str | None:
    """The warning for an explicit --backend openvino on a CPU without int8 dot-product instructions: there, on
    1,200 real slices, OpenVINO's int8 results differed from ONNX Runtime's by up to 0.11 in probability (36 above
    0.02, 3 flag flips); `auto` never picks it on such a CPU."""
    if backend != "openvino" or cpu_flags() & set(OPENVINO_CPU_FLAGS):
        return None
    return (
        "--backend openvino on a CPU without AVX-512 VNNI or AMX: its int8 results can differ from ONNX "
        "Runtime's (the reference) by up to 0.11 in probability here; --backend auto or onnxruntime avoids it"
    )


def choose_backend(backend: str) -> str:
    """The backend `auto` stands for on this machine (or `backend` itself); ValueError for an unknown name."""
    from tumor_runtime.core.errors import OptionError, UsageError

    if backend not in BACKENDS:
        raise OptionError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    if backend == "openvino" and not installed("openvino"):
        raise UsageError(MISSING_OPENVINO)
    if backend == "auto":
        fast = installed("openvino") and cpu_flags() & set(OPENVINO_CPU_FLAGS)
        return "openvino" if fast else "onnxruntime"
    return backend


@dataclass(frozen=True)
class Port:
    """An input or output as ONNX Runtime describes it: name and shape (None for a dynamic size)."""

    name: str
    shape: list


class OpenVinoSession:
    """The ONNX file compiled by OpenVINO for the CPU, answering like an onnxruntime.InferenceSession
    (get_inputs, get_outputs, run, get_modelmeta) so the classifier does not care which it has."""

    def __init__(self, path: str | os.PathLike, threads: int):
        import openvino as ov

        core = ov.Core()
        model = core.read_model(str(path))
        # f32 precision: on AMX CPUs OpenVINO would otherwise run the float parts in bf16 (a silent change)
        self.compiled = core.compile_model(
            model, "CPU", {"INFERENCE_NUM_THREADS": int(threads), "INFERENCE_PRECISION_HINT": "f32"}
        )
        self.metadata = onnx_metadata(Path(path))
        self.local = threading.local()  # one infer request per thread: requests are not shared

    def get_inputs(self) -> list[Port]:
        return [
            Port(p.get_any_name(), [d.get_length() if d.is_static else None for d in p.get_partial_shape()])
            for p in self.compiled.inputs
        ]

    def get_outputs(self) -> list[Port]:
        return [
            Port(p.get_any_name(), [d.get_length() if d.is_static else None for d in p.get_partial_shape()])
            for p in self.compiled.outputs
        ]

    def run(self, names, feeds: dict) -> list:
        request = getattr(self.local, "request", None)
        if request is None:
            request = self.local.request = self.compiled.create_infer_request()
        (value,) = feeds.values()
        results = request.infer({0: value})
        by_name = {port.get_any_name(): results[port] for port in self.compiled.outputs}
        return [by_name[name].copy() for name in names]

    def get_modelmeta(self):
        return _Meta(self.metadata)


@dataclass(frozen=True)
class _Meta:
    custom_metadata_map: dict


def onnx_metadata(path: Path) -> dict[str, str]:
    """The file's metadata_props, read with ONNX Runtime (already installed; OpenVINO does not expose them)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    return dict(
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map
    )
