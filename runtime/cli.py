"""`tumor-infer`: classify MRI slices with an ONNX model, torch-free."""

from __future__ import annotations

import contextlib
import json
import os
import sys

import click


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("paths", nargs=-1, type=click.Path())
@click.option("--model", "-m", type=click.Path(dir_okay=False),
              help="ONNX model exported by tumor-export [default: the shipped int8 model].")
@click.option("--recursive", "-r", is_flag=True, help="Also look in subfolders of the folders given.")
@click.option("--format", "fmt", default="table", show_default=True, type=click.Choice(["table", "csv", "json", "jsonl"]))
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="Write results here (atomically) instead of stdout.")
@click.option("--evaluate", is_flag=True,
              help="PATHS is one folder with a subfolder per class: print macro/weighted F2, accuracy, "
                   "tumour sensitivity and the confusion matrix.")
@click.option("--tumor-threshold", type=click.FloatRange(0, 1),
              help="Flag a tumour when P(tumour) = 1 - P(notumor) reaches this [default: stored in the model].")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1))
@click.option("--threads", type=click.IntRange(1), help="Inference and decoding threads [default: all cores available].")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def main(paths, model, recursive, fmt, output, evaluate, tumor_threshold, batch_size, threads, quiet) -> None:
    """Classify brain MRI slices (JPEG, PNG, BMP, TIFF) as glioma, meningioma, notumor or pituitary.

    PATHS are image files and folders. Exit code 0: all classified; 1: some files could
    not be read (each gets an error row); 2: usage error. For research and education,
    not for diagnosis.
    """
    from tumor_runtime.classifier import Classifier
    from tumor_runtime.inputs import UsageError, collect, labelled
    from tumor_runtime.model import ModelError

    try:
        classifier = Classifier.load(model, threads=threads, batch_size=batch_size, tumor_threshold=tumor_threshold)
        if evaluate:
            if len(paths) != 1:
                raise UsageError("--evaluate takes exactly one folder")
            files, labels = labelled(paths[0], classifier.info.classes)
        else:
            files, labels = collect(list(paths), recursive), None
    except (ModelError, UsageError) as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(2)
    records = run(classifier, files, quiet)
    try:
        if evaluate:
            failed = evaluate_and_print(classifier, records, labels, fmt, output)
        else:
            failed = write_records(classifier, records, fmt, output)
    except BrokenPipeError:  # e.g. `tumor-infer dir/ | head`: stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
    sys.exit(1 if failed else 0)


def run(classifier, files, quiet: bool):
    """Yield records with a progress bar on stderr (only on a terminal), errors reported as they come."""
    show = not quiet and sys.stderr.isatty() and len(files) > classifier.batch_size
    bar = click.progressbar(length=len(files), label="classifying", file=sys.stderr) if show else None
    with bar if bar is not None else contextlib.nullcontext():
        for rec in classifier.iter_predict(files):
            if rec["error"]:
                click.echo(f"\nerror: {rec['path']}: {rec['error']}" if show else f"error: {rec['path']}: {rec['error']}",
                           err=True)
            if bar is not None:
                bar.update(1)
            yield rec


@contextlib.contextmanager
def destination(output: str | None):
    if output is None:
        yield sys.stdout
        return
    from tumor_runtime.fileio import atomic_path

    with atomic_path(output) as tmp, open(tmp, "w", encoding="utf-8", newline="") as stream:
        yield stream


def write_records(classifier, records, fmt: str, output: str | None) -> int:
    from tumor_runtime.output import Writer

    failed = 0
    with destination(output) as stream:
        writer = Writer(stream, fmt, classifier.info.classes)
        for rec in records:
            failed += rec["error"] is not None
            writer.write(rec)
        writer.close()
    return failed


def evaluate_and_print(classifier, records, labels, fmt: str, output: str | None) -> int:
    from tumor_runtime.metrics import summarize
    from tumor_runtime.output import evaluation_text

    classes = classifier.info.classes
    y_true, y_pred, failed = [], [], 0
    for rec, label in zip(records, labels):
        if rec["error"]:
            failed += 1
            continue
        y_true.append(label)
        y_pred.append(classes.index(rec["label"]))
    stats = summarize(y_true, y_pred, classes, classifier.info.negative_class)
    result = {key: stats[key] for key in ("f2_macro", "f2_weighted", "accuracy", "tumor_sensitivity",
                                          "confusion_matrix", "classes", "n_images")} | {"n_errors": failed}
    with destination(output) as stream:
        stream.write(json.dumps(result, indent=2) + "\n" if fmt in ("json", "jsonl") else evaluation_text(result))
    return failed
