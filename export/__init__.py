"""Export stage: ONNX FP32 (checked), ONNX Runtime static int8 (QDQ), parity gate, metadata.

`onnx_export` (torch -> ONNX and its checks), `calibration` (the reproducible image sample),
`static_int8` (static int8 with node exclusions), `gate` (F2 parity and the fallback search),
`metadata` (what the .onnx file says about itself), `pipeline` (the whole export), `cli`.
The screening threshold is chosen by `tumor_runtime.core.scoring`.
"""
