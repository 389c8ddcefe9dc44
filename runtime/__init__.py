"""Torch-free inference runtime: onnxruntime, numpy, pillow and click only.

`preprocess` holds the one deterministic image transform that training also uses;
`metrics` holds the F2 and sensitivity arithmetic that every stage reports.
"""

__version__ = "0.1.0"
