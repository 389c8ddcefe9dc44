"""Load a self-describing ONNX model: the one session factory, metadata, graph and manifest checks.

Everything the runtime needs (classes, input size, mean/std, tumor threshold) is read
from the model's `metadata_props`, written by tumor-export; no other file is required.
A model whose graph disagrees with its metadata (input size, number of outputs) is refused
at load, never used with probabilities under the wrong names.
"""

from __future__ import annotations

import functools
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tumor_runtime.contract import DEFAULT_MODEL, MANIFEST, PROBABILITIES  # older or foreign models: first output
from tumor_runtime.errors import KitError
from tumor_runtime.fileio import sha256_file
from tumor_runtime.preprocess import CROPS
from tumor_runtime.validate import finite_in_range

MAX_INPUT_SIZE = 4096


class ModelError(KitError):
    """A model that cannot be used: missing, not ONNX, not a tumor-kit model, inconsistent, or tampered with."""


@dataclass(frozen=True)
class ModelInfo:
    classes: list[str]
    input_size: int
    mean: float
    std: float
    negative_class: str
    tumor_threshold: float
    arch: str
    metadata: dict
    crop: str = "none"  # "brain": cut to the head before resizing (preprocess.brain_box); older models: none
    ood: object = None  # tumor_runtime.ood.OodModel, or None for models exported without the score

    @classmethod
    def from_metadata(cls, meta: dict) -> "ModelInfo":
        try:
            classes = json.loads(meta["classes"])  # RecursionError below: a metadata bomb
            info = cls(classes=classes, input_size=int(meta["input_size"]), mean=float(meta["mean"]),
                       std=float(meta["std"]), negative_class=str(meta["negative_class"]),
                       tumor_threshold=float(meta["tumor_threshold"]), arch=meta.get("arch", "unknown"),
                       metadata=dict(meta), crop=str(meta.get("crop", "none")), ood=ood_of(meta))
        except (KeyError, ValueError, TypeError, RecursionError) as exc:
            raise ModelError(f"model metadata is incomplete ({exc}); export it with tumor-export") from None
        info.check()
        return info

    @functools.cached_property
    def training_names(self) -> frozenset[str] | None:
        """The names of the images the model trained on (`tumor_runtime.provenance`); None if not recorded."""
        from tumor_runtime import provenance

        value = self.metadata.get(provenance.METADATA_KEY)
        if value is None:
            return None
        try:
            return provenance.decode(value)
        except ValueError as exc:
            raise ModelError(f"model metadata: {exc}") from None

    def check(self) -> None:
        """Refuse metadata that would give silently wrong inputs or labels."""
        if (not isinstance(self.classes, list) or len(self.classes) < 2
                or not all(isinstance(c, str) and c for c in self.classes) or len(set(self.classes)) != len(self.classes)):
            raise ModelError(f"model metadata lists invalid classes {self.classes!r}")
        if not 0 < self.input_size <= MAX_INPUT_SIZE:
            raise ModelError(f"model metadata input_size {self.input_size} is not in 1..{MAX_INPUT_SIZE}")
        if self.negative_class not in self.classes:
            raise ModelError(f"model metadata negative_class {self.negative_class!r} is not one of its classes "
                             f"{self.classes}: the tumor columns could not be computed")
        if self.crop not in CROPS:
            raise ModelError(f"model metadata asks for crop {self.crop!r}, which this runtime does not know "
                             f"({', '.join(CROPS)}): upgrade tumor-kit")
        if not (math.isfinite(self.mean) and math.isfinite(self.std) and 0 <= self.mean <= 1 and 0 < self.std <= 1):
            raise ModelError(f"model metadata mean {self.mean} / std {self.std} is invalid (pixels are scaled to [0, 1]: the mean must be in [0, 1] and the std in (0, 1])")
        try:
            finite_in_range("model metadata tumor_threshold", self.tumor_threshold, 0.0, 1.0)
        except ValueError as exc:
            raise ModelError(str(exc)) from None
        self.training_names  # a damaged record is refused at load, not at the first --evaluate


def ood_of(meta: dict):
    """The out-of-distribution score in the metadata, None without one; ModelError for a damaged one."""
    if "ood" not in meta:
        return None
    from tumor_runtime.ood import OodModel

    try:
        return OodModel.from_metadata(meta["ood"])
    except ValueError as exc:
        raise ModelError(f"model metadata: {exc}") from None


def default_model_path() -> Path:
    """The shipped int8 model: inside the installed package, or artifacts/ of a source checkout."""
    try:
        from importlib.resources import files

        packaged = Path(str(files("tumor_runtime.artifacts") / DEFAULT_MODEL))
        if packaged.is_file():
            return packaged
    except (ModuleNotFoundError, TypeError):
        pass
    return Path(__file__).resolve().parents[1] / "artifacts" / DEFAULT_MODEL


def read_manifest(folder: Path) -> dict | None:
    """manifest.json of `folder` as {"files": {name: sha256}, "replacing": {name: sha256}}, or None if absent.

    "replacing" lists the hashes of files that an export is about to replace: while it
    renames, both the old and the new file are vouched for (see tumor_export.pipeline).
    """
    manifest = folder / MANIFEST
    if not manifest.exists():
        return None
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
        files, replacing = data["files"], data.get("replacing", {})
        if not isinstance(files, dict) or not isinstance(replacing, dict):
            raise TypeError
        if not all(isinstance(v, str) for v in [*files.values(), *replacing.values()]):
            raise TypeError
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
        raise ModelError(f"{manifest} is not a valid manifest (unreadable, or not {{\"files\": {{name: sha256}}}})") from None
    return {"files": files, "replacing": replacing}


def verify_manifest(path: Path) -> None:
    """If a manifest.json lies beside the model, it must list the model and its sha256 must match. A symlink
    is judged by the manifest beside the file it points to (where the export wrote both)."""
    path = Path(os.path.realpath(path))
    manifest = read_manifest(path.parent)
    if manifest is None:
        return
    accepted = {manifest["files"].get(path.name), manifest["replacing"].get(path.name)} - {None}
    if not accepted:
        raise ModelError(f"{path.name} is not listed in {path.parent / MANIFEST}: refusing a model the export "
                         "did not vouch for (pass verify=False / remove the manifest to use it anyway)")
    if sha256_file(path) not in accepted:
        raise ModelError(f"{path} does not match the sha256 in {path.parent / MANIFEST}: refusing a modified or "
                         "corrupt model")


def available_cores() -> int:
    """The cores this process may use: its CPU affinity, capped by a container's CPU quota (cgroup v2
    cpu.max), not the host's core count."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_limit()
    return max(1, min(cores, quota)) if quota else cores


def cgroup_cpu_limit(path: str = "/sys/fs/cgroup/cpu.max") -> int | None:
    """ceil(quota / period) from cgroup v2's cpu.max ("200000 100000" -> 2); None without a limit."""
    try:
        quota, period = open(path).read().split()[:2]
        return None if quota == "max" else max(1, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        return None


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
    if len(shape) != 4 or any(isinstance(got, int) and want is not None and got != want
                              for got, want in zip(shape, expected)):
        raise ModelError(f"the model's input shape {shape} does not match its metadata "
                         f"(N, 1, {info.input_size}, {info.input_size})")
    try:
        probs = session.run([output_name(session)], {inputs[0].name: np.zeros((1, 1, info.input_size,
                                                                                info.input_size), np.float32)})[0]
    except Exception as exc:
        raise ModelError(f"the model does not run on a (1, 1, {info.input_size}, {info.input_size}) input as its "
                         f"metadata says ({type(exc).__name__})") from None
    if probs.shape != (1, len(info.classes)):
        raise ModelError(f"the model gives {probs.shape[-1] if probs.ndim else 0} outputs per image but its "
                         f"metadata names {len(info.classes)} classes")
    if not np.isfinite(probs).all():
        raise ModelError("the model gives non-finite outputs on a blank image")


TORCH_FILE_STARTS = (b"PK\x03\x04", b"\x80\x02")  # torch.save's zip container; its older pickle format


def refuse_torch_file(path: Path) -> None:
    """ModelError pointing to tumor-export when `path` is a torch file (model.pth, checkpoint.pth) rather than
    ONNX: the manifest or the ONNX parser would otherwise give a message that does not say what to do."""
    with open(path, "rb") as handle:
        start = handle.read(4)
    if start.startswith(TORCH_FILE_STARTS):
        raise ModelError(f"{path} is a torch checkpoint, not an ONNX model: export it with tumor-export "
                         f"--checkpoint {path} --int8, then pass the model.int8.onnx it writes")


def open_session(path: str | os.PathLike | None = None, threads: int | None = None, verify: bool = True,
                 backend: str = "onnxruntime"):
    """(session, ModelInfo) for a checked, vouched-for tumor-kit model; the session is ONNX Runtime's, or
    OpenVINO's behind the same interface (`tumor_runtime.backends`)."""
    from tumor_runtime.backends import OpenVinoSession, choose

    path = Path(path) if path is not None else default_model_path()
    if not path.is_file():
        raise ModelError(f"model {path} does not exist; pass --model or export one with tumor-export")
    refuse_torch_file(path)
    if verify:
        verify_manifest(path)
    chosen = choose(backend)
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
