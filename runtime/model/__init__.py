"""Layer 2: the exported ONNX artifact: what it declares (info), whether to trust it (manifest), how it runs
(session, backends) and its out-of-distribution score."""
