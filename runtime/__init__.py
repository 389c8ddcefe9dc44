"""Torch-free inference runtime: onnxruntime, numpy, pillow and click only.

The layers, bottom up: `core` (what every stage shares), `imaging` (a file to the model's input), `model` (the
exported artifact), `inference` (the Python API), and the front-ends `cli` and `serving` (docs/architecture.md).
The Python API is re-exported here, loaded on first use so that `tumor-infer --version` stays light:
`from tumor_runtime import Classifier`.
"""

from importlib import import_module

_API = {
    "Classifier": "tumor_runtime.inference.classifier",
    "KitError": "tumor_runtime.core.errors",
    "ModelError": "tumor_runtime.core.errors",
    "ImageError": "tumor_runtime.core.errors",
    "evaluate_records": "tumor_runtime.core.scoring",
    "ray_records": "tumor_runtime.inference.ray_batch",
}
__all__ = ["__version__", *_API]


def installed_version() -> str:
    """pyproject.toml's version, as installed (one literal); read on first use: importlib.metadata costs 20 ms
    of every command's start-up."""
    from importlib import metadata

    try:
        return metadata.version("tumor-kit")
    except metadata.PackageNotFoundError:  # imported from a source tree that was never installed
        return "0+unknown"


def __getattr__(name: str):  # PEP 562: the API's modules (and the version) load when first named
    if name == "__version__":
        globals()["__version__"] = version = installed_version()
        return version
    if name in _API:
        return getattr(import_module(_API[name]), name)
    raise AttributeError(f"module 'tumor_runtime' has no attribute {name!r}")
