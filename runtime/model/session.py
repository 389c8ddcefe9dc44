"""Load a self-describing ONNX model: the one session factory, metadata, graph and manifest checks.

Everything the runtime needs (classes, input size, mean/std, tumor threshold) is read
from the model's `metadata_props`, written by tumor-export; no other file is required.
A model whose graph disagrees with its metadata (input size, number of outputs) is refused
at load, never used with probabilities under the wrong names.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from tumor_runtime.core.contract import (  # older or foreign models: first output
    PROBABILITIES,
)
from tumor_runtime.core.errors import ModelError
from tumor_runtime.core.system import available_cores
from tumor_runtime.model.info import ModelInfo
from tumor_runtime.model.manifest import default_model_path, verify_manifest


def create_session(path: str | os.PathLike, threads: int | None = None, spinning: bool = False):
    """The one place an onnxruntime.InferenceSession is made: CPU, explicit threads, full optimisation.

    `spinning=False` turns off busy-waiting between ops: the decode threads share these cores
    (measured on a 2-core Xeon: 904 -> 1,118 images/s end to end).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = min(threads or available_cores(), available_cores())
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: keep stderr for per-file messages
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def output_name(session) -> str:
    names = [o.name for o in session.get_outputs()]
    return PROBABILITIES if PROBABILITIES in names else names[0]


def check_graph(session, info: ModelInfo) -> None:
    """The graph must take (N, 1, size, size) and give (N, classes) finite probabilities."""
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise ModelError(f"the model has {len(inputs)} inputs; a tumor-kit model has one image input")
    shape = inputs[0].shape
    expected = (None, 1, info.input_size, info.input_size)  # None: any batch size
    if len(shape) != 4 or any(
        isinstance(got, int) and want is not None and got != want for got, want in zip(shape, expected)
    ):
        raise ModelError(
            f"the model's input shape {shape} does not match its metadata (N, 1, {info.input_size}, {info.input_size})"
        )
    try:
        probs = session.run(
            [output_name(session)], {inputs[0].name: np.zeros((1, 1, info.input_size, info.input_size), np.float32)}
        )[0]
    except Exception as exc:
        raise ModelError(
            f"the model does not run on a (1, 1, {info.input_size}, {info.input_size}) input as its "
            f"metadata says ({type(exc).__name__})"
        ) from None
    if probs.shape != (1, len(info.classes)):
        raise ModelError(
            f"the model gives {probs.shape[-1] if probs.ndim else 0} outputs per image but its "
            f"metadata names {len(info.classes)} classes"
        )
    if not np.isfinite(probs).all():
        raise ModelError("the model gives non-finite outputs on a blank image")


TORCH_FILE_STARTS = (b"PK\x03\x04", b"\x80\x02")  # torch.save's zip container; its older pickle format


def refuse_torch_file(path: Path) -> None:
    """ModelError pointing to tumor-export when `path` is a torch file (model.pth, checkpoint.pth) rather than
    ONNX: the manifest or the ONNX parser would otherwise give a message that does not say what to do."""
    with open(path, "rb") as handle:
        start = handle.read(4)
    if start.startswith(TORCH_FILE_STARTS):
        raise ModelError(
            f"{path} is a torch checkpoint, not an ONNX model: export it with tumor-export "
            f"--checkpoint {path} --int8, then pass the model.int8.onnx it writes"
        )


def open_session(
    path: str | os.PathLike | None = None, threads: int | None = None, verify: bool = True, backend: str = "onnxruntime"
):
    """(session, ModelInfo) for a checked, vouched-for tumor-kit model; the session is ONNX Runtime's, or
    OpenVINO's behind the same interface (`tumor_runtime.model.backends`)."""
    from tumor_runtime.model.backends import OpenVinoSession, choose_backend

    path = Path(path) if path is not None else default_model_path()
    if not path.is_file():
        raise ModelError(f"model {path} does not exist; pass --model or export one with tumor-export")
    refuse_torch_file(path)
    if verify:
        verify_manifest(path)
    chosen = choose_backend(backend)
    try:
        if chosen == "openvino":
            session = OpenVinoSession(path, min(threads or available_cores(), available_cores()))
        else:
            session = create_session(path, threads)
    except Exception as exc:
        raise ModelError(f"{path} is not a loadable ONNX model ({type(exc).__name__})") from None
    info = ModelInfo.from_metadata(session.get_modelmeta().custom_metadata_map)
    check_graph(session, info)
    return session, info
