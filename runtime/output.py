"""Result writers: a readable table, CSV, a JSON array or JSON lines, streamed row by row."""

from __future__ import annotations

import csv
import json
from typing import IO


class Writer:
    """Write records one at a time to `stream` in `fmt` (table, csv, json, jsonl)."""

    def __init__(self, stream: IO[str], fmt: str, classes: list[str]):
        self.stream, self.fmt, self.classes, self.count = stream, fmt, classes, 0
        if fmt == "csv":
            self.csv = csv.writer(stream, lineterminator="\n")
            self.csv.writerow(["path", "label", "confidence", "tumor_probability", "tumor",
                               *[f"p_{c}" for c in classes], "error"])
        elif fmt == "json":
            stream.write("[")
        elif fmt == "table":
            stream.write(f"{'path':<48} {'label':<12} {'confidence':>10} {'P(tumour)':>9}  tumour\n")

    def write(self, rec: dict) -> None:
        if self.fmt == "jsonl":
            self.stream.write(json.dumps(rec) + "\n")
        elif self.fmt == "json":
            self.stream.write(("," if self.count else "") + "\n  " + json.dumps(rec))
        elif self.fmt == "csv":
            probs = rec["probabilities"] or {}
            self.csv.writerow([rec["path"], rec["label"] or "", _num(rec["confidence"]), _num(rec["tumor_probability"]),
                               "" if rec["tumor"] is None else str(rec["tumor"]).lower(),
                               *[_num(probs.get(c)) for c in self.classes], rec["error"] or ""])
        else:
            self.stream.write(_table_row(rec))
        self.count += 1

    def close(self) -> None:
        if self.fmt == "json":
            self.stream.write("\n]\n" if self.count else "]\n")


def _num(value) -> str:
    return "" if value is None else f"{value:.6f}"


def _table_row(rec: dict) -> str:
    path = rec["path"] if len(rec["path"]) <= 48 else "..." + rec["path"][-45:]
    if rec["error"]:
        return f"{path:<48} ERROR: {rec['error']}\n"
    flag = "YES" if rec["tumor"] else "no"
    return f"{path:<48} {rec['label']:<12} {rec['confidence']:>10.4f} {rec['tumor_probability']:>9.4f}  {flag}\n"


def evaluation_text(result: dict) -> str:
    classes, cm = result["classes"], result["confusion_matrix"]
    width = max(10, *map(len, classes)) + 1
    lines = [f"images {result['n_images']}  errors {result['n_errors']}",
             f"macro F2      {result['f2_macro']:.4f}", f"weighted F2   {result['f2_weighted']:.4f}",
             f"accuracy      {result['accuracy']:.4f}",
             f"tumour sensitivity {result['tumor_sensitivity'] if result['tumor_sensitivity'] is None else format(result['tumor_sensitivity'], '.4f')}",
             "", "confusion matrix (rows true, columns predicted)",
             " " * width + "".join(f"{c:>{width}}" for c in classes)]
    lines += [f"{c:<{width}}" + "".join(f"{v:>{width}}" for v in row) for c, row in zip(classes, cm)]
    return "\n".join(lines) + "\n"
