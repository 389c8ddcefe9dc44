"""Layer 1: a file, bytes or array to the uint8 slice the model sees: the format table, listing, decoding, DICOM,
the transform, the OOD image descriptors and the decode pool."""
