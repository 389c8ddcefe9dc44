"""Export stage: ONNX FP32 (checked), ONNX Runtime static int8 (QDQ), parity gate, metadata.

`onnx_export` (torch -> ONNX and its checks), `calibration` (the reproducible image sample),
`quantize` (static int8 with node exclusions), `gate` (F2 parity and the fallback search),
`threshold` (the screening threshold), `pipeline` (the whole export), `cli`.
"""
