"""Torch-free inference runtime: onnxruntime, numpy, pillow and click only.

`preprocess` holds the one deterministic image transform that training also uses;
`metrics` holds the F2 and sensitivity arithmetic that every stage reports;
`contract` the names and keys the stages share; `errors` the error type and exit codes.
"""

from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("tumor-kit")  # one literal: pyproject.toml's
except _metadata.PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"
