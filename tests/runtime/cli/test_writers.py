"""The result writers, format by format: exact headers, cells, escapes and the evaluation summary.

The outputs are the kit's interface to spreadsheets and scripts, so their text is the contract
and is spelled out here in full.
"""

from __future__ import annotations

import csv
import io
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tumor_runtime.cli.writers import (
    OOD_WARNING,
    Writer,
    csv_cell,
    evaluation_output,
    one_line,
)

CLASSES = ["glioma", "notumor"]
GOOD = {
    "path": "a/b.jpg",
    "label": "glioma",
    "confidence": 0.75,
    "tumor_probability": 0.8125,
    "tumor": True,
    "probabilities": {"glioma": 0.75, "notumor": 0.1875},
    "ood_score": 1.5,
    "in_distribution": True,
    "dicom": None,
    "error": None,
}
ODD = GOOD | {
    "path": "c.png",
    "label": "notumor",
    "confidence": 0.5,
    "tumor_probability": 0.25,
    "tumor": False,
    "in_distribution": False,
    "dicom": {"sop_instance_uid": "1.2", "series_instance_uid": "3.4", "instance_number": 7},
}
BROKEN = {
    "path": "=bad.jpg",
    "label": None,
    "confidence": None,
    "tumor_probability": None,
    "tumor": None,
    "probabilities": None,
    "error": "not an image",
}


def written(fmt: str, records: list[dict]) -> str:
    stream = io.StringIO()
    writer = Writer(stream, fmt, CLASSES)
    for rec in records:
        writer.write(rec)
    writer.close()
    assert writer.count == len(records)
    return stream.getvalue()


def test_csv_header_rows_and_error_row():
    assert written("csv", [GOOD, ODD, BROKEN]).splitlines() == [
        "path,label,confidence,tumor_probability,tumor,p_glioma,p_notumor,ood_score,in_distribution,"
        "sop_instance_uid,series_instance_uid,instance_number,error",
        "a/b.jpg,glioma,0.750000,0.812500,true,0.750000,0.187500,1.500000,true,,,,",
        "c.png,notumor,0.500000,0.250000,false,0.750000,0.187500,1.500000,false,1.2,3.4,7,",
        "'=bad.jpg,,,,,,,,,,,,not an image",
    ]


def test_csv_escapes_a_formula_in_the_error_message_too():
    row = next(csv.reader(io.StringIO(written("csv", [BROKEN | {"error": "+cmd"}]).splitlines()[1])))
    assert row[-1] == "'+cmd"


def test_json_is_an_array_of_the_records_and_jsonl_a_record_per_line():
    assert json.loads(written("json", [GOOD, BROKEN])) == [GOOD, BROKEN]
    assert written("json", [GOOD, BROKEN]) == "[\n  " + json.dumps(GOOD) + ",\n  " + json.dumps(BROKEN) + "\n]\n"
    assert written("json", []) == "[]\n"
    assert written("jsonl", [GOOD, BROKEN]) == json.dumps(GOOD) + "\n" + json.dumps(BROKEN) + "\n"


def test_table_rows_flag_tumors_out_of_distribution_and_errors():
    lines = written("table", [GOOD, ODD, BROKEN]).splitlines()
    assert lines[0] == f"{'path':<48} {'label':<12} {'confidence':>10} {'P(tumor)':>9}  tumor"
    assert lines[1] == f"{'a/b.jpg':<48} {'glioma':<12} {'0.7500':>10} {'0.8125':>9}  YES"
    assert lines[2] == f"{'c.png':<48} {'notumor':<12} {'0.5000':>10} {'0.2500':>9}  no   {OOD_WARNING}"
    assert lines[3] == f"{'=bad.jpg':<48} ERROR: not an image"
    assert len(lines) == 4


def test_table_shortens_long_paths_from_the_left_and_escapes_control_characters():
    long_path = "d/" * 30 + "slice.jpg"
    row = written("table", [GOOD | {"path": long_path}]).splitlines()[1]
    assert row.startswith("..." + long_path[-45:] + " ")
    assert len(long_path[-45:]) + 3 == 48
    assert (
        written("table", [BROKEN | {"path": "a\nb", "error": "x\ty"}]).splitlines()[1]
        == "a\\nb".ljust(48) + " ERROR: x\\ty"
    )
    exact = "p" * 48
    assert written("table", [GOOD | {"path": exact}]).splitlines()[1].startswith(exact + " glioma")


@given(st.text())
def test_one_line_never_leaves_a_control_character(text):
    shown = one_line(text)
    assert not any(ord(c) < 32 or ord(c) == 127 for c in shown)
    if not any(ord(c) < 32 or ord(c) == 127 for c in text):
        assert shown == text


@pytest.mark.parametrize("text", ["=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx"])
def test_csv_cell_defuses_every_formula_start(text):
    assert csv_cell(text) == "'" + text
    assert csv_cell("x" + text) == "x" + text


RESULT = {
    "classes": ["glioma", "notumor"],
    "confusion_matrix": [[9, 1], [0, 10]],
    "n_images": 20,
    "n_errors": 2,
    "n_out_of_distribution": 1,
    "f2_macro": 0.95,
    "f2_weighted": 0.9375,
    "accuracy": 0.95,
    "tumor_sensitivity": 0.9,
    "per_class": {
        "glioma": {"precision": 1.0, "recall": 0.9, "f2": 0.918367, "support": 9},
        "notumor": {"precision": 0.909091, "recall": 1.0, "f2": 0.980392, "support": 11},
    },
    "screening": {"threshold": 0.5, "sensitivity": 1.0, "false_alarm_rate": None},
}


def test_evaluation_text_lists_every_figure_and_the_confusion_matrix():
    assert evaluation_output(RESULT, "table").splitlines() == [
        "images 20  errors 2  out of distribution 1",
        "macro F2      0.9500",
        "weighted F2   0.9375",
        "accuracy      0.9500",
        "tumor sensitivity (argmax) 0.9000",
        "tumor flag at threshold 0.5000: sensitivity 1.0000, false alarms n/a",
        "",
        "confusion matrix (rows true, columns predicted)",
        " " * 11 + "     glioma    notumor",
        "glioma               9          1",
        "notumor              0         10",
    ]


def test_evaluation_text_without_screening_or_ood_count():
    bare = {k: v for k, v in RESULT.items() if k not in ("screening", "n_out_of_distribution")}
    lines = evaluation_output(bare, "table").splitlines()
    assert lines[0] == "images 20  errors 2  out of distribution 0"
    assert not any(line.startswith("tumor flag") for line in lines)
    wide = bare | {"classes": ["a_very_long_class", "b"]}
    assert evaluation_output(wide, "table").splitlines()[-2].startswith("a_very_long_class  ")


def test_evaluation_csv_rows_per_class_then_macro_and_weighted_then_every_figure():
    """The CSV says all the table says: the errors, the out-of-distribution count and the screening flag too."""
    assert evaluation_output(RESULT, "csv").splitlines() == [
        "class,precision,recall,f2,support,value",
        "glioma,1.000000,0.900000,0.918367,9,",
        "notumor,0.909091,1.000000,0.980392,11,",
        "macro,,,0.950000,20,",
        "weighted,,,0.937500,20,",
        "accuracy,,,,,0.950000",
        "tumor_sensitivity,,,,,0.900000",
        "errors,,,,,2",
        "out_of_distribution,,,,,1",
        "screening_threshold,,,,,0.500000",
        "screening_sensitivity,,,,,1.000000",
        "screening_false_alarm_rate,,,,,",
    ]


def test_evaluation_json_and_jsonl_carry_the_whole_result():
    assert evaluation_output(RESULT, "json") == json.dumps(RESULT, indent=2) + "\n"
    assert evaluation_output(RESULT, "jsonl") == json.dumps(RESULT) + "\n"
