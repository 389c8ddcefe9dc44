"""Test helpers, by role: datasets, processes, comparisons, dicom, files, checkpoints, onnx_fakes."""
