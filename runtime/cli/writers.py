"""Result writers: a readable table, CSV, a JSON array or JSON lines, streamed row by row."""

from __future__ import annotations

import csv
import io
import json
from typing import IO

OOD_WARNING = "WARNING: does not look like a brain MRI slice (out of distribution)"
DICOM_COLUMNS = ("sop_instance_uid", "series_instance_uid", "instance_number")  # empty for other files


class Writer:
    """Write records one at a time to `stream` in `fmt` (table, csv, json, jsonl)."""

    def __init__(self, stream: IO[str], fmt: str, classes: list[str]):
        self.stream, self.fmt, self.classes, self.count = stream, fmt, classes, 0
        if fmt == "csv":
            self.csv = csv.writer(stream, lineterminator="\n")
            self.csv.writerow(
                [
                    "path",
                    "label",
                    "confidence",
                    "tumor_probability",
                    "tumor",
                    *[f"p_{c}" for c in classes],
                    "ood_score",
                    "in_distribution",
                    *DICOM_COLUMNS,
                    "error",
                ]
            )
        elif fmt == "json":
            stream.write("[")
        elif fmt == "table":
            stream.write(f"{'path':<48} {'label':<12} {'confidence':>10} {'P(tumor)':>9}  tumor\n")

    def write(self, rec: dict) -> None:
        if self.fmt == "jsonl":
            self.stream.write(json.dumps(rec) + "\n")
        elif self.fmt == "json":
            self.stream.write(("," if self.count else "") + "\n  " + json.dumps(rec))
        elif self.fmt == "csv":
            probs, dicom = rec["probabilities"] or {}, rec.get("dicom") or {}
            self.csv.writerow(
                [
                    csv_cell(rec["path"]),
                    rec["label"] or "",
                    _num(rec["confidence"]),
                    _num(rec["tumor_probability"]),
                    "" if rec["tumor"] is None else str(rec["tumor"]).lower(),
                    *[_num(probs.get(c)) for c in self.classes],
                    _num(rec.get("ood_score")),
                    _bool(rec.get("in_distribution")),
                    *["" if dicom.get(k) is None else dicom[k] for k in DICOM_COLUMNS],
                    csv_cell(rec["error"] or ""),
                ]
            )
        else:
            self.stream.write(_table_row(rec))
        self.count += 1

    def close(self) -> None:
        if self.fmt == "json":
            self.stream.write("\n]\n" if self.count else "]\n")


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(text: str) -> str:
    """A file name or message for a CSV cell: one that a spreadsheet would run as a formula gets a leading
    apostrophe (OWASP's CSV-injection rule)."""
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def one_line(text: str) -> str:
    """A name for the table: control characters (a newline in a file name) shown escaped, never obeyed."""
    return "".join(repr(c)[1:-1] if ord(c) < 32 or ord(c) == 127 else c for c in text)


def _bool(value) -> str:
    return "" if value is None else str(value).lower()


def _num(value) -> str:
    return "" if value is None else f"{value:.6f}"


def _table_row(rec: dict) -> str:
    path = one_line(rec["path"])
    path = path if len(path) <= 48 else "..." + path[-45:]
    if rec["error"]:
        return f"{path:<48} ERROR: {one_line(rec['error'])}\n"
    flag = "YES" if rec["tumor"] else "no"
    row = f"{path:<48} {rec['label']:<12} {rec['confidence']:>10.4f} {rec['tumor_probability']:>9.4f}  {flag}"
    if rec.get("in_distribution") is False:
        row += f"   {OOD_WARNING}"
    return row + "\n"


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def evaluation_text(result: dict) -> str:
    classes, cm = result["classes"], result["confusion_matrix"]
    width = max(10, *map(len, classes)) + 1
    lines = [
        f"images {result['n_images']}  errors {result['n_errors']}  "
        f"out of distribution {result.get('n_out_of_distribution', 0)}",
        f"macro F2      {_fmt(result['f2_macro'])}",
        f"weighted F2   {_fmt(result['f2_weighted'])}",
        f"accuracy      {_fmt(result['accuracy'])}",
        f"tumor sensitivity (argmax) {_fmt(result['tumor_sensitivity'])}",
    ]
    if "screening" in result:
        s = result["screening"]
        lines.append(
            f"tumor flag at threshold {s['threshold']:.4f}: sensitivity {_fmt(s['sensitivity'])}, "
            f"false alarms {_fmt(s['false_alarm_rate'])}"
        )
    if "seen_in_training" in result:
        lines.append(
            f"images the model trained on {result['seen_in_training']} of "
            f"{result['n_images'] + result['n_errors']} (by class and file name)"
        )
    lines += [
        "",
        "confusion matrix (rows true, columns predicted)",
        " " * width + "".join(f"{c:>{width}}" for c in classes),
    ]
    lines += [f"{c:<{width}}" + "".join(f"{v:>{width}}" for v in row) for c, row in zip(classes, cm)]
    return "\n".join(lines) + "\n"


def evaluation_csv(result: dict) -> str:
    """One row per class (precision, recall, F2, support), the macro and weighted F2 rows, then one row per
    figure of the summary in the `value` column: what the table and JSON say, nothing left out."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["class", "precision", "recall", "f2", "support", "value"])
    for name in result["classes"]:
        row = result["per_class"][name]
        writer.writerow([name, _num(row["precision"]), _num(row["recall"]), _num(row["f2"]), row["support"], ""])
    writer.writerow(["macro", "", "", _num(result["f2_macro"]), result["n_images"], ""])
    writer.writerow(["weighted", "", "", _num(result["f2_weighted"]), result["n_images"], ""])
    figures = [
        ("accuracy", _num(result["accuracy"])),
        ("tumor_sensitivity", _num(result["tumor_sensitivity"])),
        ("errors", result["n_errors"]),
        ("out_of_distribution", result.get("n_out_of_distribution", "")),
    ]
    if "screening" in result:
        s = result["screening"]
        figures += [
            ("screening_threshold", _num(s["threshold"])),
            ("screening_sensitivity", _num(s["sensitivity"])),
            ("screening_false_alarm_rate", _num(s["false_alarm_rate"])),
        ]
    if "seen_in_training" in result:
        figures.append(("seen_in_training", result["seen_in_training"]))
    for name, value in figures:
        writer.writerow([name, "", "", "", "", value])
    return buffer.getvalue()


def evaluation_output(result: dict, fmt: str) -> str:
    """The evaluation summary in any of the four formats."""
    if fmt == "json":
        return json.dumps(result, indent=2) + "\n"
    if fmt == "jsonl":
        return json.dumps(result) + "\n"
    if fmt == "csv":
        return evaluation_csv(result)
    return evaluation_text(result)
