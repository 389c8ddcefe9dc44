"""tumor-export's options: defaults, and values that would silently disable a check."""

from __future__ import annotations

import pytest

from tumor_export.options import ExportOptions


def test_options_refuse_a_nan_drop_and_a_zero_calibration_size(tmp_path):
    ExportOptions(tmp_path).check()
    with pytest.raises(ValueError, match=r"^--max-f2-drop must be a finite number in \[0.0, 1.0\], got nan$"):
        ExportOptions(tmp_path, max_f2_drop=float("nan")).check()
    with pytest.raises(ValueError, match=r"^--calibration-size must be an integer in \[1, 1000000\], got 0$"):
        ExportOptions(tmp_path, calibration_size=0).check()
    defaults = ExportOptions(tmp_path)
    assert (
        defaults.calibration_size,
        defaults.calibration_method,
        defaults.activation_type,
        defaults.max_f2_drop,
        defaults.seed,
        defaults.int8,
    ) == (256, "percentile", "u8", 0.005, 0, False)
