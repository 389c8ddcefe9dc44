"""What the stages agree on, in one place: ONNX names, metadata keys, the manifest, file names, versions.

Torch-free, so every stage may import it (runtime at the ground, train above it, export above
that). The labelled-folder and image-listing rules live in `inputs` (`labelled`, `images_in`),
the pixel transform in `preprocess`, the error type and exit codes in `errors`.
"""

from __future__ import annotations

# The ONNX graph every exported model has.
INPUT_NAME = "image"  # float32 (N, 1, S, S), normalised by the metadata's mean and std
PROBABILITIES = "probabilities"  # (N, classes) softmax; the runtime reads this output by name
LOGITS = "logits"  # (N, classes)
CAM_OUTPUT = "cam"  # (N, classes, h, w) class activation maps, for models with a global-average-pool head
FEATURES_OUTPUT = "features"  # (N, k) the pooled features the head reads: the out-of-distribution score's input
OUTPUT_NAMES = (PROBABILITIES, LOGITS)  # always there; CAM_OUTPUT where the architecture gives it

# metadata_props: written by tumor_export.metadata, read by tumor_runtime.model.info.ModelInfo.
REQUIRED_METADATA = ("classes", "input_size", "mean", "std", "negative_class", "tumor_threshold")
OPTIONAL_METADATA = (
    "training_files",
    "arch",
    "grayscale",
    "resize",
    "crop",
    "tumor_classes",
    "precision",
    "trained_with",
    "exported_with",
    "calibration",
    "ood",
)

# The files of an exported model folder.
CROPS = ("none", "brain")  # the model metadata's "crop": the whole frame (models before it), or `brain_box`
FP32_MODEL, INT8_MODEL = "model.onnx", "model.int8.onnx"
MODEL_FILES = (FP32_MODEL, INT8_MODEL)
DEFAULT_MODEL = INT8_MODEL  # what the runtime loads when no model is named
MANIFEST = "manifest.json"  # {"files": {name: sha256}} (+ "replacing" while an export commits)
EXPORT_REPORT = "export_report.json"  # what tumor-export measured and wrote
# tumor-train's outputs in its --out folder
MODEL_FILE = "model.pth"  # the trained model: arch, arguments, weights, classes, preprocessing (export reads it)
RESUME_FILE = "checkpoint.pth"  # resumable state, rewritten atomically after every epoch
QUANTIZED_FILE = "model_quantized.pth"  # the reference's dynamic int8 model
METRICS = "metrics.json"  # the run's configuration, scores and timings
HISTORY = "history.csv"  # one row per epoch
CV_REPORT = "cv.json"  # a --cv run's folds and their mean and spread
FOLD_RECORD = "fold.json"  # in each OUT/fold-<k>/: what the fold is, so a rerun reuses only the same fold
