"""`tumor-infer`: classify MRI slices with an ONNX model, torch-free."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path

import click

from tumor_runtime import __version__
from tumor_runtime.cli_common import FiniteFloat
from tumor_runtime.validate import MAX_BATCH_SIZE

FORMATS = ["table", "csv", "json", "jsonl"]


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("paths", nargs=-1, type=click.Path())
@click.option("--model", "-m", type=click.Path(dir_okay=False),
              help="ONNX model exported by tumor-export [default: the shipped int8 model].")
@click.option("--recursive", "-r", is_flag=True, help="Also look in subfolders of the folders given.")
@click.option("--format", "fmt", default="table", show_default=True, type=click.Choice(FORMATS))
@click.option("--output", "-o", type=click.Path(dir_okay=False, allow_dash=True),
              help="Write results to this regular file (atomically; through a symlink to its file) instead of "
                   "stdout; '-' is stdout. Never one of the inputs.")
@click.option("--evaluate", is_flag=True,
              help="PATHS is one folder with a subfolder per class: print macro/weighted F2, accuracy, "
                   "tumor sensitivity, the tumor flag's sensitivity and false alarms, and the confusion matrix.")
@click.option("--tumor-threshold", type=FiniteFloat(0, 1),
              help="Flag a tumor when P(tumor) = 1 - P(notumor) reaches this [default: stored in the model].")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1, MAX_BATCH_SIZE))
@click.option("--threads", type=click.IntRange(0), default=0,
              help="Inference threads and decoding workers (threads; processes for more than 1,000 files); 0 = the "
                   "cores available (CPU affinity and container limit), which is also the maximum.  [default: 0]")
@click.option("--heatmaps", type=click.Path(file_okay=False),
              help="Write one overlay PNG per classified input into this folder: the slice, the predicted class's "
                   "activation map, and a legend (label, confidence, P(tumor)). Needs a model with a 'cam' output.")
@click.option("--model-info", is_flag=True, help="Print the model's card (classes, input, threshold, precision, "
                                                 "sha256, provenance) as JSON and exit.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.option("--backend", default="onnxruntime", show_default=True, type=click.Choice(["auto", "onnxruntime", "openvino"]),
              help="Inference engine for the same ONNX file: openvino needs the [openvino] extra; auto takes it where "
                   "it is installed and the CPU has AMX or AVX-512 VNNI, else onnxruntime.")
@click.option("--ray", "ray_address", metavar="auto|ADDRESS",
              help="Classify on a Ray cluster ([ray] extra): auto joins the cluster in RAY_ADDRESS, else starts a "
                   "private one on this machine for the run; ADDRESS is a cluster's HOST:PORT or ray://HOST:10001 "
                   "(e.g. 127.0.0.1:6379 for a local `ray start --head`). Same rows as a local run; --threads is "
                   "then the CPUs of each Ray actor [0 = 2]. Inputs must be readable at the same path on every node.")
@click.version_option(__version__, "--version", prog_name="tumor-infer")
def main(paths, model, recursive, fmt, output, evaluate, tumor_threshold, batch_size, threads, heatmaps, model_info,
         quiet, backend, ray_address) -> None:
    """Classify brain MRI slices (JPEG, PNG, BMP, TIFF) as glioma, meningioma, notumor or pituitary.

    PATHS are image files, DICOM files and folders. Every row says whether the input looks
    like the brain slices the model knows (in_distribution; stderr counts the ones that do not).
    Exit code 0: all classified; 1: some inputs could not be read (each gets an error row) or
    the results could not be written; 2: usage error; 70: internal error; 130: interrupted.
    For research and education, not for diagnosis.
    """
    from tumor_runtime.cli_common import fail, guarded, interrupted_exit_code, raise_on_sigterm

    raise_on_sigterm()
    try:
        sys.exit(guarded(run_command, paths, model, recursive, fmt, output, evaluate, tumor_threshold, batch_size,
                         threads, heatmaps, model_info, quiet, backend, ray_address, passthrough=(OSError,)))
    except KeyboardInterrupt as exc:
        click.echo("Stopped: interrupted; no output file was written" if output not in (None, "-") else
                   "Stopped: interrupted", err=True)
        sys.exit(interrupted_exit_code(exc))
    except BrokenPipeError:  # e.g. `tumor-infer dir/ | head`: stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
    except OSError as exc:  # a full disk, a vanished folder: the results could not be written
        fail(f"could not write the results: {exc.strerror or exc}", 1)


def run_command(paths, model, recursive, fmt, output, evaluate, tumor_threshold, batch_size, threads, heatmaps,
                model_info, quiet, backend="onnxruntime", ray_address=None) -> int:
    from tumor_runtime.cli_common import fail
    from tumor_runtime.classifier import Classifier
    from tumor_runtime.errors import KitError, RunStopped, UsageError
    from tumor_runtime.inputs import collect, labelled
    from tumor_runtime.backends import openvino_caveat
    from tumor_runtime.ray_batch import ray_records

    try:
        if ray_address is not None and (heatmaps or evaluate):
            raise UsageError("--ray classifies only: run --heatmaps and --evaluate without --ray")
        classifier = Classifier.load(model, threads=threads or None, batch_size=batch_size,
                                     tumor_threshold=tumor_threshold, backend=backend)
        caveat = openvino_caveat(backend)
        if caveat:
            click.echo(f"warning: {caveat}", err=True)
        if model_info:
            click.echo(json.dumps(classifier.card(), indent=2))
            return 0
        if evaluate:
            if len(paths) != 1:
                raise UsageError("--evaluate takes exactly one folder")
            files, labels = frames_with_labels(*labelled(paths[0], classifier.info.classes))
        else:
            files, labels = collect(list(paths), recursive), None
        target = output_target(output, files)
        if heatmaps:
            heatmap_folder(heatmaps, classifier)
        rows = classifier.iter_predict(files, heatmaps=bool(heatmaps)) if ray_address is None else \
            ray_records(files, model, ray_address, threads or 2, batch_size, tumor_threshold, backend)
    except KitError as exc:
        fail(str(exc), exc.exit_code)
    try:
        with contextlib.ExitStack() as stack:
            try:  # the output file is created before any work, so an unwritable target costs nothing
                stream = stack.enter_context(destination(target))
            except OSError as exc:
                fail(f"cannot write {output}: {exc.strerror or exc}")
            counted = Counted(progress(classifier, files, rows, quiet, heatmaps))
            if evaluate:
                code = write_evaluation(classifier, counted, labels, fmt, stream)
            else:
                code = write_records(classifier, counted, fmt, stream)
    except RunStopped as exc:  # the atomic file was discarded: say so, rather than "the rows were written"
        kept = f"nothing was written to {output}" if target is not None else \
            "the rows before it were printed, the rest were not classified"
        fail(f"{exc}: {kept}", exc.exit_code)
    if not quiet:
        say_written(counted, target, heatmaps, evaluate)
    return code


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
        parts.append(f"the evaluation of {counted.count} row(s) to {target}" if evaluate else
                     f"{counted.count} row(s) to {target}")
    if heatmaps:
        parts.append(f"{counted.heatmaps} heat-map(s) to {heatmaps.rstrip('/')}/ (<file name>.<hash>.heatmap.png)")
    if parts:
        click.echo(f"Wrote {' and '.join(parts)}.", err=True)


def frames_with_labels(files: list, labels: list[int]) -> tuple[list, list[int]]:
    """Each DICOM file becomes its frames (or one error item) before scoring, each frame with its file's
    label: one label per row, so a multi-frame file never shifts the labels after it."""
    from tumor_runtime.classifier import expand_dicom

    pairs = [(item, label) for file, label in zip(files, labels) for item in expand_dicom([file])]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def output_target(output: str | None, inputs: list) -> Path | None:
    """The regular file that -o names (symlinks followed), or None for stdout; refuses anything else."""
    from tumor_runtime.inputs import UsageError

    if output is None or output == "-":
        return None
    if output.endswith(("/", os.sep)) or os.path.isdir(output):
        raise UsageError(f"--output {output} names a folder; give a file name, e.g. {output.rstrip('/')}/results.csv")
    target = Path(os.path.realpath(output))
    if target.exists() and not target.is_file():
        raise UsageError(f"--output {output} is not a regular file (a folder, device or pipe); "
                         "use '-' and a redirection for those")
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
            sys.stdout.reconfigure(errors="surrogateescape")
        yield sys.stdout
        sys.stdout.flush()  # a full disk shows up here, inside the error handling
        return
    from tumor_runtime.fileio import atomic_path

    with atomic_path(target) as tmp, open(tmp, "w", encoding="utf-8", errors="surrogateescape", newline="") as stream:
        yield stream


def heatmap_folder(folder: str, classifier) -> None:
    """Refuse before any work: a model without heat-maps, or a folder that cannot be written."""
    from tumor_runtime.classifier import NO_CAM
    from tumor_runtime.inputs import UsageError
    from tumor_runtime.model import ModelError

    if not classifier.has_cam:
        raise ModelError(NO_CAM)
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot write heat-maps to {folder}: {exc.strerror or exc}") from None


def write_heatmap(rec: dict, folder: str) -> None:
    """DIR/<name>.<hash>.png for a classified input; the record gets its path under "heatmap"."""
    from tumor_runtime.fileio import atomic_write_bytes
    from tumor_runtime.heatmap import heatmap_name, overlay_png

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
                from tumor_runtime.output import one_line

                name = one_line(rec["path"].encode("utf-8", "backslashreplace").decode("utf-8"))
                click.echo(f"{chr(10) if show else ''}error: {name}: {rec['error']}", err=True)
            if bar is not None:
                bar.update(1)
            yield rec


def write_records(classifier, records, fmt: str, stream) -> int:
    """Stream rows; on an interrupt the JSON array is still closed, so stdout stays valid JSON."""
    from tumor_runtime.cli_common import DeferredInterrupts
    from tumor_runtime.output import Writer

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
        click.echo(f"warning: {flagged} input(s) do not look like the brain MRI slices the model was trained on "
                   "(in_distribution false): their classes are not to be trusted", err=True)
    # A flag does not change the exit code: it is in every row and counted on stderr, and with 0.5 % of real
    # slices flagged by design, a large folder would otherwise always exit 1 and the code would mean nothing.
    return 1 if failed else 0


def write_evaluation(classifier, records, labels, fmt: str, stream) -> int:
    from tumor_runtime.evaluation import evaluate_records
    from tumor_runtime.output import evaluation_output
    from tumor_runtime.provenance import seen_in_training

    info, paths = classifier.info, []
    records = (paths.append(rec["path"]) or rec for rec in records)
    result = evaluate_records(records, labels, info.classes, info.negative_class, classifier.tumor_threshold)
    if info.training_names is not None:
        result["seen_in_training"] = seen_in_training(paths, labels, info.classes, info.training_names)
    stream.write(evaluation_output(result, fmt))
    if result.get("seen_in_training"):
        click.echo(f"note: {result['seen_in_training']} of the {len(paths)} images scored have the class and file "
                   "name of images this model was trained on: on those the score measures what it remembers, not "
                   "how it does on new slices", err=True)
    return 1 if result["n_errors"] else 0
