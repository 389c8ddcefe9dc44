"""Where tumor-infer's rows go: the output target (-o, written atomically) or stdout, heat-map files, the progress
bar with its per-file errors, the row and evaluation writers' drivers, and the closing line naming what was written."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import click

from tumor_runtime.cli.writers import Writer, evaluation_output, one_line
from tumor_runtime.core.errors import EXIT_OK, EXIT_PARTIAL, ModelError, UsageError
from tumor_runtime.core.fileio import atomic_path, atomic_write_bytes
from tumor_runtime.core.provenance import seen_in_training
from tumor_runtime.core.scoring import evaluate_records
from tumor_runtime.core.signals import DeferredInterrupts
from tumor_runtime.inference.heatmap import heatmap_name, overlay_png
from tumor_runtime.inference.records import NO_CAM


class Counted:
    """The rows as they pass, counted: what the closing line reports."""

    def __init__(self, rows):
        self.rows, self.count, self.heatmaps = rows, 0, 0

    def __iter__(self):
        for rec in self.rows:
            self.count += 1
            self.heatmaps += bool(rec.get("heatmap"))
            yield rec


def say_written(counted: Counted, target: Path | None, heatmaps: str | None, evaluate: bool) -> None:
    """One line on stderr naming what was written where, when it went to files (stdout speaks for itself)."""
    parts = []
    if target is not None:
        parts.append(
            f"the evaluation of {counted.count} row(s) to {target}"
            if evaluate
            else f"{counted.count} row(s) to {target}"
        )
    if heatmaps:
        parts.append(f"{counted.heatmaps} heat-map(s) to {heatmaps.rstrip('/')}/ (<file name>.<hash>.heatmap.png)")
    if parts:
        click.echo(f"Wrote {' and '.join(parts)}.", err=True)


def output_target(output: str | None, inputs: list) -> Path | None:
    """The regular file that -o names (symlinks followed), or None for stdout; refuses anything else."""

    if output is None or output == "-":
        return None
    if output.endswith(("/", os.sep)) or os.path.isdir(output):
        raise UsageError(f"--output {output} names a folder; give a file name, e.g. {output.rstrip('/')}/results.csv")
    target = Path(os.path.realpath(output))
    if target.exists() and not target.is_file():
        raise UsageError(
            f"--output {output} is not a regular file (a folder, device or pipe); use '-' and a redirection for those"
        )
    existing = next((p for p in target.parents if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise UsageError(f"--output {output}: {existing} is a file, not a folder")
    if target.exists():
        mine = os.stat(target)
        for item in inputs:
            with contextlib.suppress(OSError, TypeError):
                other = os.stat(item)
                if (other.st_dev, other.st_ino) == (mine.st_dev, mine.st_ino):
                    raise UsageError(f"--output {output} is one of the inputs; refusing to overwrite a scan")
    return target


@contextlib.contextmanager
def destination(target: Path | None):
    """stdout, or an atomic temporary file renamed onto `target` only when everything was written.

    File names that are not UTF-8 are written back as their original bytes (surrogateescape)."""
    if target is None:
        with contextlib.suppress(AttributeError, ValueError):
            sys.stdout.reconfigure(errors="surrogateescape")  # type: ignore[union-attr]  # a TextIOWrapper
        yield sys.stdout
        sys.stdout.flush()  # a full disk shows up here, inside the error handling
        return

    with atomic_path(target) as tmp, open(tmp, "w", encoding="utf-8", errors="surrogateescape", newline="") as stream:
        yield stream


def heatmap_folder(folder: str, classifier) -> None:
    """Refuse before any work: a model without heat-maps, or a folder that cannot be written."""

    if not classifier.has_cam:
        raise ModelError(NO_CAM)
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot write heat-maps to {folder}: {exc.strerror or exc}") from None


def write_heatmap(rec: dict, folder: str) -> None:
    """DIR/<name>.<hash>.png for a classified input; the record gets its path under "heatmap"."""

    png = overlay_png(rec)
    rec["heatmap"] = None
    if png is not None:
        target = Path(folder) / heatmap_name(rec["path"])
        atomic_write_bytes(target, png)
        rec["heatmap"] = str(target)


def progress(classifier, files, rows, quiet: bool, heatmaps: str | None = None):
    """Yield the `rows` of `files` with a progress bar on stderr (only on a terminal), errors reported as they come."""
    show = not quiet and sys.stderr.isatty() and len(files) > classifier.batch_size
    bar = click.progressbar(length=len(files), label="classifying", file=sys.stderr) if show else None
    with bar if bar is not None else contextlib.nullcontext():
        for rec in rows:
            if heatmaps:
                write_heatmap(rec, heatmaps)
            if rec["error"]:
                name = one_line(rec["path"].encode("utf-8", "backslashreplace").decode("utf-8"))
                click.echo(f"{chr(10) if show else ''}error: {name}: {rec['error']}", err=True)
            if bar is not None:
                bar.update(1)
            yield rec


def write_records(classifier, records, fmt: str, stream) -> int:
    """Stream rows; on an interrupt the JSON array is still closed, so stdout stays valid JSON."""

    failed = flagged = 0
    writer = Writer(stream, fmt, classifier.info.classes)
    try:
        with DeferredInterrupts() as interrupts:
            for rec in records:
                interrupts.check()
                failed += rec["error"] is not None
                flagged += rec.get("in_distribution") is False
                writer.write(rec)
            interrupts.check()
    finally:
        writer.close()
    if flagged:
        click.echo(
            f"warning: {flagged} input(s) do not look like the brain MRI slices the model was trained on "
            "(in_distribution false): their classes are not to be trusted",
            err=True,
        )
    # A flag does not change the exit code: it is in every row and counted on stderr, and with 0.5 % of real
    # slices flagged by design, a large folder would otherwise always exit 1 and the code would mean nothing.
    return EXIT_PARTIAL if failed else EXIT_OK


def write_evaluation(classifier, records, labels, fmt: str, stream) -> int:

    info, paths = classifier.info, []

    def noting_paths(rows):
        for rec in rows:
            paths.append(rec["path"])
            yield rec

    records = noting_paths(records)
    result = evaluate_records(records, labels, info.classes, info.negative_class, classifier.tumor_threshold)
    if info.training_names is not None:
        result["seen_in_training"] = seen_in_training(paths, labels, info.classes, info.training_names)
    stream.write(evaluation_output(result, fmt))
    if result.get("seen_in_training"):
        click.echo(
            f"note: {result['seen_in_training']} of the {len(paths)} images scored have the class and file "
            "name of images this model was trained on: on those the score measures what it remembers, not "
            "how it does on new slices",
            err=True,
        )
    return EXIT_PARTIAL if result["n_errors"] else EXIT_OK
